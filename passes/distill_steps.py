"""``distill-steps``: Pyramidal DMD step distillation (Neodragon §3.4, Table 6): 480 -> 21 NFE for 49 frames."""

from __future__ import annotations

from typing import Literal

import attrs

from neoc.config import in_range
from neoc.pass_api import Pass
from neoc.registry import register_pass


@attrs.frozen
class DistillStepsConfig:
    method: Literal["dmd", "progressive", "adversarial"] = "dmd"
    schedule: Literal["1-1-1", "4-4-4"] = "1-1-1"
    steps: int = attrs.field(default=1000, validator=in_range(1))
    lr: float = attrs.field(default=1e-5, validator=in_range(0.0))
    fake_lr: float = attrs.field(default=1e-5, validator=in_range(0.0))
    fake_updates_per_student: int = attrs.field(default=2, validator=in_range(1))
    teacher_loss_weight: float = attrs.field(default=0.5, validator=in_range(0.0))


def student_schedule(schedule, name: str):
    """The student's schedule: ``name`` steps per stage for every latent frame, CFG distilled in (no CFG)."""
    import attrs as _attrs

    steps = tuple(int(x) for x in name.split("-"))
    return _attrs.evolve(schedule, first_frame_steps=steps, video_steps=steps, guidance_scale=1.0,
                         video_guidance_scale=1.0, label=f"student {name}")


@register_pass
class DistillSteps(Pass):
    name = "distill-steps"
    summary = "Pyramidal DMD: a few-step student per pyramid stage (1-1-1 = 21 NFE for 49 frames)"
    paper = "Neodragon §3.4"
    Config = DistillStepsConfig
    implemented = False
    runs_after = ("replace-text-encoder", "swap-decoder", "prune-blocks")

    def analyze(self, pipeline) -> None:
        pipeline.with_schedule(student_schedule(pipeline.schedule, self.config.schedule))
