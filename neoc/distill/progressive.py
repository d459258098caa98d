"""Pyramidal progressive distillation (Neodragon §3.4): the student matches several teacher Euler steps in one.

Per stage, the teacher's steps are quantised to ``teacher_steps`` uniform local-sigma intervals over the stage
(paper: 16). The student's schedule (1 or 4 steps per stage) evaluates at the sampler's grid
``linspace(1, 0.001, n) + [0]``; for a student step from ``r_a`` to ``r_b`` the teacher runs, without gradients,
``round(teacher_steps * (r_a - r_b))`` (at least 1) CFG-guided Euler steps from the same point ``x_a``, and the
student's single Euler step ``x_a + (r_b - r_a) D_theta(x_a)`` regresses that end point (squared L2). Velocities
stay on each stage's local sigma, so the per-resolution scaling is the sampler's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neoc.distill.collapse_guard import CollapseError
from neoc.distill.data import StageBatch
from neoc.distill.pyramid import _col, interpolate, predict, predict_cfg, timestep_for
from neoc.models import scheduler as sched


@torch.no_grad()
def teacher_rollout(teacher: nn.Module, clips, x: torch.Tensor, r_a: torch.Tensor, r_b: torch.Tensor,
                    spec: sched.StageSpec, text, uncond, scale: float, teacher_steps: int) -> torch.Tensor:
    """Euler-integrate the CFG teacher from local sigma ``r_a`` to ``r_b`` (per sample) in equal sub-steps."""
    span = float((r_a - r_b).max())
    substeps = max(1, int(round(teacher_steps * span)))
    r = r_a.clone()
    dr = (r_b - r_a) / substeps
    for _ in range(substeps):
        v = predict_cfg(teacher, clips, x, timestep_for(r, spec), text, uncond, scale)
        x = x + _col(dr, x) * v
        r = r + dr
    return x


def student_step(objective, batch: StageBatch, stage: int, scale: float):
    """One stage's student Euler step and its target: ``(x_b, teacher end point, r_b)`` for a student that jumps
    from ``r_a`` to ``r_b`` in one step where the CFG teacher takes ``objective.teacher_steps`` over the stage
    (shared by the progressive and adversarial objectives). Raises :class:`CollapseError` on a non-finite step."""
    spec, clips = objective.specs[stage], batch.clips[stage]
    r_a, r_b = batch.r_student[stage], batch.r_next[stage]
    x_a = interpolate(batch.start[stage], batch.end[stage], r_a)
    target = teacher_rollout(objective.teacher, clips, x_a, r_a, r_b, spec, batch.text, batch.uncond, scale,
                             objective.teacher_steps)
    v = predict(objective.student, clips, x_a, timestep_for(r_a, spec), batch.text)
    x_b = x_a + _col(r_b - r_a, x_a) * v
    if not torch.isfinite(x_b).all():
        raise CollapseError(f"non-finite student prediction (NaN/inf) at stage {stage}, unit {batch.unit}")
    return x_b, target, r_b


class PyramidalProgressive(nn.Module):
    """Objective for :class:`neoc.train.loop.Trainer`: ``forward(StageBatch) -> (loss, metrics)``."""

    def __init__(self, student: nn.Module, teacher: nn.Module, guidance: tuple[float, float],
                 num_stages: int = 3, gamma: float = 1.0 / 3.0, teacher_steps: int = 16):
        super().__init__()
        self.student = student
        self._teacher = (teacher,)
        self.guidance = tuple(float(g) for g in guidance)
        self.specs = sched.stage_specs(num_stages, gamma)
        self.teacher_steps = int(teacher_steps)

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def to(self, *args, **kwargs):
        self._teacher[0].to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def forward(self, batch: StageBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scale = self.guidance[0] if batch.unit == 0 else self.guidance[1]
        losses = []
        for stage in range(len(self.specs)):
            x_b, target, _ = student_step(self, batch, stage, scale)
            losses.append(F.mse_loss(x_b, target))
        loss = torch.stack(losses).mean()
        return loss, {f"loss_stage{s}": v.detach() for s, v in enumerate(losses)}

