"""Pyramidal adversarial step distillation (Neodragon §3.4): progressive distillation plus a hinge GAN.

``L = w_recon * L_pyr-prog + w_adv * L_GAN`` with ``w_recon = 10``, ``w_adv = 1`` (paper). The discriminator is a
4-layer MLP on features of the *frozen teacher*: the image tokens after the teacher's last transformer block
(mean-pooled over tokens; for a denoiser without ``transformer_blocks``, its prediction pooled per channel),
evaluated on the student's and the teacher's end points ``x_b`` at their local noise level. Hinge losses:
discriminator ``relu(1 - D(teacher)) + relu(1 + D(student))``, generator ``-D(student)``; the generator term runs
the MLP on detached parameters so it only moves the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from neoc.distill.data import StageBatch
from neoc.distill.progressive import student_step
from neoc.distill.pyramid import LastBlockTokens, timestep_for
from neoc.models import scheduler as sched


class TeacherFeatures:
    """Pooled features of the frozen teacher for a batch of noisy latents (gradients flow to the input)."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher
        self._tokens = LastBlockTokens(teacher)
        self.dim = self._tokens.dim  # fallback: the prediction pooled per channel

    def __call__(self, clips, x, t, text) -> torch.Tensor:
        out, tokens = self._tokens(clips, x, t, text)
        if tokens is not None:
            return tokens.mean(dim=1)  # [B, D] mean over image tokens
        return out.flatten(2).mean(dim=2)  # [B, C]


def mlp_discriminator(dim: int, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))


class PyramidalAdversarial(nn.Module):
    def __init__(self, student: nn.Module, teacher: nn.Module, guidance: tuple[float, float],
                 num_stages: int = 3, gamma: float = 1.0 / 3.0, teacher_steps: int = 16,
                 recon_weight: float = 10.0, adv_weight: float = 1.0):
        super().__init__()
        self.student = student
        extractor = TeacherFeatures(teacher)
        self.discriminator = mlp_discriminator(extractor.dim)
        self._teacher = (teacher, extractor)
        self.guidance = tuple(float(g) for g in guidance)
        self.specs = sched.stage_specs(num_stages, gamma)
        self.teacher_steps = int(teacher_steps)
        self.recon_weight, self.adv_weight = float(recon_weight), float(adv_weight)

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def to(self, *args, **kwargs):
        self._teacher[0].to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def _d(self, features: torch.Tensor, detached: bool) -> torch.Tensor:
        if not detached:
            return self.discriminator(features).squeeze(-1)
        params = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, params, (features,)).squeeze(-1)

    def forward(self, batch: StageBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scale = self.guidance[0] if batch.unit == 0 else self.guidance[1]
        features = self._teacher[1]
        recon, gen, disc = [], [], []
        for stage, spec in enumerate(self.specs):
            clips = batch.clips[stage]
            x_b, target, r_b = student_step(self, batch, stage, scale)
            recon.append(F.mse_loss(x_b, target))
            t_b = timestep_for(r_b, spec)
            f_student = features(clips, x_b, t_b, batch.text)
            gen.append(-self._d(f_student, detached=True).mean())
            with torch.no_grad():
                f_teacher = features(clips, target, t_b, batch.text)
            disc.append(F.relu(1.0 - self._d(f_teacher, False)).mean()
                        + F.relu(1.0 + self._d(f_student.detach(), False)).mean())
        loss_recon, loss_gen, loss_disc = (torch.stack(x).mean() for x in (recon, gen, disc))
        loss = self.recon_weight * loss_recon + self.adv_weight * loss_gen + loss_disc
        return loss, {"loss_recon": loss_recon.detach(), "loss_gan": loss_gen.detach(),
                      "loss_disc": loss_disc.detach()}
