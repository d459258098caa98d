"""``replace-text-encoder``: DT5 + ContextAdapter distillation (Neodragon §3.1, Table 2).

The frozen teacher is T5 followed by the denoiser's ContextEmbedder (CE); the student is a small T5-class
encoder (DT5) followed by a ContextAdapter (CA, a 4-layer MLP with a skip at every layer). Prompt-only loss on
context tokens: ``w_mse * MSE(t, t_hat) + w_cd * (1 - cos(t, t_hat))``.
"""

from __future__ import annotations

from typing import Literal

import attrs

from neoc.config import in_range
from neoc.pass_api import Pass
from neoc.registry import register_pass

REAL_SCALE_WIDTH = 4096  # a teacher this wide gets the T5 v1.1-base-class DT5 (DistillT5 shape)


@attrs.frozen
class ReplaceTextEncoderConfig:
    mode: Literal["RM", "EM", "LORA", "TDT5"] = "RM"
    steps: int = attrs.field(default=2000, validator=in_range(1))
    batch_size: int = attrs.field(default=32, validator=in_range(1))
    lr: float = attrs.field(default=3e-3, validator=in_range(0.0))
    lr_end: float = attrs.field(default=3e-5, validator=in_range(0.0))
    w_mse: float = attrs.field(default=1.0, validator=in_range(0.0))
    w_cd: float = attrs.field(default=0.1, validator=in_range(0.0))
    adapter_layers: int = attrs.field(default=4, validator=in_range(1))
    lora_rank: int = attrs.field(default=8, validator=in_range(1))
    student: Literal["auto", "dt5-base", "tiny"] = "auto"


def student_t5_config(teacher_width: int, choice: str) -> dict:
    """DT5 encoder config: T5 v1.1-base for real-scale teachers, the tiny DT5 for the embedded default."""
    from neoc.zoo import text_configs as tc

    if choice == "dt5-base" or (choice == "auto" and teacher_width >= REAL_SCALE_WIDTH):
        return dict(tc.DT5_BASE_CONFIG)
    return dict(tc.TINY_DT5_CONFIG)


def build_students(pipeline, config: ReplaceTextEncoderConfig, device: str | None = None) -> dict:
    """The student components for ``config.mode``: ``{role: module or None}`` (None removes the role).

    RM: DT5 -> CA (CA replaces CE). EM: DT5 -> CE -> CA. TDT5 / LORA: DT5 -> CE (DT5 trained, or LoRA on DT5).
    DT5 projects to the teacher's width, so CE keeps its input width.
    """
    from neoc.zoo.components import build_dt5, _build_on
    from neoc.models.context_adapter import ContextAdapter

    teacher_width = pipeline.component("text_encoder").hidden_size
    inner = pipeline.component("denoiser").inner_dim
    dt5 = build_dt5({"t5": student_t5_config(teacher_width, config.student), "out_dim": teacher_width},
                    device=device)
    if config.mode == "RM":
        ca = _build_on(device, lambda: ContextAdapter(teacher_width, inner, config.adapter_layers))
        return {"text_encoder": dt5, "context_embedder": None, "context_adapter": ca}
    if config.mode == "EM":
        ca = _build_on(device, lambda: ContextAdapter(inner, inner, config.adapter_layers))
        return {"text_encoder": dt5, "context_adapter": ca}
    return {"text_encoder": dt5}


@register_pass
class ReplaceTextEncoder(Pass):
    name = "replace-text-encoder"
    summary = "Distil the T5-class encoder + context embedder into a small DT5 + ContextAdapter (prompts only)"
    paper = "Neodragon §3.1"
    Config = ReplaceTextEncoderConfig
    implemented = False

    def analyze(self, pipeline) -> None:
        for role, module in build_students(pipeline, self.config, device="meta").items():
            pipeline.replace_component(role, module)
