"""Pyramidal DMD (Neodragon §3.4): distribution-matching step distillation adapted to pyramidal flow matching.

Per stage ``i`` of the latent frame being trained:

* **student** ``D_theta`` (initialised from the teacher) sees ``x = r * start + (1 - r) * end`` at a local sigma ``r``
  of the student schedule's grid and predicts the clean latent with one Euler step in global sigma,
  ``z_hat = x - sigma / (sigma_start - sigma_end) * D_theta(x)``;
* **fake score** ``D_phi`` (initialised from the teacher) learns pyramidal flow matching on the *student's*
  distribution: ``z_hat`` (detached) is renoised stage-wise (eqs. 23-25) at ``tau ~ U(0, 1)`` and ``D_phi`` regresses
  the conditional flow ``y_start - y_end``;
* **DMD term**: at one of four fixed ``tau`` levels, teacher (with CFG at the base model's guidance) and fake score
  predict the flow of the renoised ``z_hat``; the student's gradient is
  ``(D(z_tau) - D_phi(z_tau)) / ||D(z_tau) - (y_start - y_end)||_1`` (mean over the sample's elements),
  implemented as ``0.5 * ||z_hat - sg(z_hat - grad)||^2`` whose gradient w.r.t. ``z_hat`` is exactly ``grad``
  (the flow difference is the x0-space difference up to the factor ``sigma_tau / (sigma_start - sigma_end)``,
  which cancels against the same factor in the normaliser, as in DMD2's x0-space form);
* **teacher (Cauchy) loss** ``log(1 + ||z_hat - Down(z, 2^i)||^2)`` (mean squared error over the sample's elements
  inside the log) with weight 0.5 on the ground-truth latent.

Two-time-scale updates: every optimiser step trains the fake score; every ``fake_updates_per_student``-th step
also trains the student (``StageBatch.student_step``), i.e. one student update per two fake updates by default.
Student and fake live in one objective module with separate parameter groups, so the shared
:class:`neoc.train.loop.Trainer` (DDP, checkpoint/resume, EMA) drives it unchanged; on fake-only steps the student
gets no gradient (AdamW skips parameters whose ``grad`` is None).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neoc.distill.collapse_guard import CollapseError
from neoc.distill.data import StageBatch
from neoc.distill.pyramid import (clean_from_flow, interpolate, predict, predict_cfg, renoise, timestep_for)
from neoc.models import scheduler as sched


def dmd_gradient(v_teacher: torch.Tensor, v_fake: torch.Tensor, cond_flow: torch.Tensor,
                 eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v_teacher - v_fake) * w`` with the per-sample weight ``w = 1 / mean|v_teacher - cond_flow|``.

    Returns (gradient, weight [B]); non-finite entries are zeroed (DMD2's ``nan_to_num``).
    """
    dims = tuple(range(1, v_teacher.dim()))
    weight = 1.0 / (v_teacher - cond_flow).abs().mean(dim=dims).clamp_min(eps)
    grad = (v_teacher - v_fake) * weight.view(-1, *([1] * len(dims)))
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0), weight


def dmd_loss(z_hat: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Surrogate whose gradient w.r.t. ``z_hat`` is ``grad / numel`` (DMD2: 0.5 * MSE(x, sg(x - grad)))."""
    return 0.5 * F.mse_loss(z_hat.float(), (z_hat - grad).detach().float())


def cauchy_loss(z_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``log(1 + ||z_hat - target||^2)`` per sample (squared error averaged over the sample), batch mean."""
    dims = tuple(range(1, z_hat.dim()))
    return torch.log1p(((z_hat.float() - target.float()) ** 2).mean(dim=dims)).mean()


class PyramidalDMD(nn.Module):
    """Objective for :class:`neoc.train.loop.Trainer`: ``forward(StageBatch) -> (loss, metrics)``.

    ``guidance = (first_frame_scale, video_scale)``: the teacher's CFG (the base model's sampling settings).
    The teacher is held outside the module's parameters (frozen, not checkpointed).
    """

    def __init__(self, student: nn.Module, fake: nn.Module, teacher: nn.Module, guidance: tuple[float, float],
                 num_stages: int = 3, gamma: float = 1.0 / 3.0, teacher_loss_weight: float = 0.5):
        super().__init__()
        self.student = student
        self.fake = fake
        self._teacher = (teacher,)  # a tuple keeps it out of parameters(), state_dict() and DDP
        self.guidance = tuple(float(g) for g in guidance)
        self.specs = sched.stage_specs(num_stages, gamma)
        self.teacher_loss_weight = float(teacher_loss_weight)

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def to(self, *args, **kwargs):  # the teacher follows the objective's device
        self._teacher[0].to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def student_sample(self, batch: StageBatch, stage: int) -> torch.Tensor:
        spec = self.specs[stage]
        r = batch.r_student[stage]
        x = interpolate(batch.start[stage], batch.end[stage], r)
        v = predict(self.student, batch.clips[stage], x, timestep_for(r, spec), batch.text)
        return clean_from_flow(x, v, r, spec)

    def forward(self, batch: StageBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scale = self.guidance[0] if batch.unit == 0 else self.guidance[1]
        zero = torch.zeros((), device=batch.start[0].device)
        fake_losses, dmd_losses, teacher_losses, weights = [], [], [], []
        for stage, spec in enumerate(self.specs):
            clips = batch.clips[stage]
            with torch.set_grad_enabled(batch.student_step and torch.is_grad_enabled()):
                z_hat = self.student_sample(batch, stage)
            if not torch.isfinite(z_hat).all():
                raise CollapseError(f"non-finite student prediction (NaN/inf) at stage {stage}, unit {batch.unit}")
            # fake score: pyramidal flow matching on the (detached) student distribution, tau ~ U(0, 1)
            y_start, y_end = renoise(z_hat.detach(), batch.noise_fake[stage], spec)
            tau = batch.tau_fake[stage]
            v_fake = predict(self.fake, clips, interpolate(y_start, y_end, tau), timestep_for(tau, spec), batch.text)
            fake_losses.append(F.mse_loss(v_fake, y_start - y_end))
            if not batch.student_step:
                continue
            # DMD term at a fixed tau level
            y_start, y_end = renoise(z_hat.detach(), batch.noise_dmd[stage], spec)
            tau = batch.tau_dmd[stage]
            z_tau = interpolate(y_start, y_end, tau)
            t_tau = timestep_for(tau, spec)
            with torch.no_grad():
                v_teacher = predict_cfg(self.teacher, clips, z_tau, t_tau, batch.text, batch.uncond, scale)
                v_fake_now = predict(self.fake, clips, z_tau, t_tau, batch.text)
            grad, weight = dmd_gradient(v_teacher, v_fake_now, y_start - y_end)
            dmd_losses.append(dmd_loss(z_hat, grad))
            teacher_losses.append(cauchy_loss(z_hat, batch.clean[stage]))
            weights.append(weight.mean())
        loss_fake = torch.stack(fake_losses).mean()
        metrics = {"loss_fake": loss_fake.detach()}
        loss = loss_fake
        if batch.student_step:
            loss_dmd = torch.stack(dmd_losses).mean()
            loss_teacher = torch.stack(teacher_losses).mean()
            loss = loss + loss_dmd + self.teacher_loss_weight * loss_teacher
            metrics.update(loss_dmd=loss_dmd.detach(), loss_teacher=loss_teacher.detach(),
                           dmd_weight=torch.stack(weights).mean())
        else:
            metrics.update(loss_dmd=zero, loss_teacher=zero, dmd_weight=zero)
        return loss, metrics
