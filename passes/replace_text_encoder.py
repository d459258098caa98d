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


@register_pass
class ReplaceTextEncoder(Pass):
    name = "replace-text-encoder"
    summary = "Distil the T5-class encoder + context embedder into a small DT5 + ContextAdapter (prompts only)"
    paper = "Neodragon §3.1"
    Config = ReplaceTextEncoderConfig
    implemented = False
    forbids_after = ()
