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
* optional **GAN term** (``gan_weight`` > 0; off by default, DMD2's addition, not the paper's): a 4-layer MLP head on
  each of the fake score's last-block image tokens of the current latent (logits averaged over tokens: a patch
  discriminator whose tokens have attended to text and history) tells renoised *data* latents ``Down(z, 2^i)``
  from renoised student samples at the fake model's ``tau``, with the same noise (non-saturating logistic loss;
  head and fake trunk learn it, the trunk scaled by ``gan_weight``); the student gets
  ``gan_weight * softplus(-D(z_tau))`` at the DMD ``tau``. The generator gradient is taken with respect to the
  renoised sample only (``torch.autograd.grad``), so it never reaches the fake score or the head. Because the head
  sees real clips of the prompt, it could move the student towards the data where the teacher misses it (DMD2
  §4.3). ``gan_stages`` picks the stages it reads, by default the last: at the coarser stages the renoised samples
  keep >= 33% noise even at ``tau`` = 0 and a head cannot tell data from student there (``docs/distill-table.md``).
  ``gan_features="teacher"`` puts the head on the *frozen teacher's* last-block tokens instead (the features the
  issue's adversarial method reads): the head then sees a fixed feature space rather than one the fake score's
  training moves under it, costs one more teacher call with input gradient per student update, and only the
  head learns the discriminator loss.
* optional **rollout** (``rollout_steps`` set; off by default, DMD2's backward simulation, not the paper's): the
  student's input at each stage is the state of its own sampler run (pure noise, the student's Euler steps, the
  sampler's stage jumps with the batch's ``noise_jump``) instead of the data's noise path, so fake score, DMD and
  GAN terms see what the student generates at inference; the Cauchy loss stays on the data path (one more student
  call per stage where the inputs differ). History clips stay the data's.

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

from neoc.distill.adversarial import mlp_discriminator
from neoc.distill.collapse_guard import CollapseError
from neoc.distill.data import StageBatch
from neoc.distill.pyramid import (LastBlockTokens, clean_from_flow, interpolate, predict, predict_cfg, renoise,
                                  timestep_for)
from neoc.errors import InputError
from neoc.ir import ops
from neoc.models import scheduler as sched


class CurrentTokens:
    """Calls a denoiser and returns (prediction, the last block's image tokens of the current latent [B, N, D]).

    For a denoiser without ``transformer_blocks`` the prediction's positions serve as tokens ([B, F*H*W, C])."""

    def __init__(self, denoiser: nn.Module):
        self._tokens = LastBlockTokens(denoiser)
        self.dim = self._tokens.dim
        self.hooked = self._tokens.hooked

    def __call__(self, clips, x, t, text) -> tuple[torch.Tensor, torch.Tensor]:
        out, tokens = self._tokens(clips, x, t, text)
        if tokens is not None:
            return out, self._tokens.current(tokens, x)
        return out, out.flatten(2).transpose(1, 2)


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


GAN_FEATURES = ("fake", "teacher")


def gan_stage_set(stages: tuple[int, ...] | None, num_stages: int) -> frozenset[int]:
    """The pyramid stages that carry the GAN term (``None``: the last, full-resolution stage only)."""
    if stages is None:
        return frozenset({num_stages - 1})
    if not stages:
        raise InputError("gan_stages: expected at least one stage")
    bad = [s for s in stages if not -num_stages <= int(s) < num_stages]
    if bad:
        raise InputError(f"gan_stages {list(stages)}: stage(s) {bad} outside the {num_stages}-stage pyramid "
                         f"(0 .. {num_stages - 1}, or negative from the end)")
    return frozenset(int(s) % num_stages for s in stages)


class PyramidalDMD(nn.Module):
    """Objective for :class:`neoc.train.loop.Trainer`: ``forward(StageBatch) -> (loss, metrics)``.

    ``guidance = (first_frame_scale, video_scale)``: the teacher's CFG (the base model's sampling settings).
    The teacher is held outside the module's parameters (frozen, not checkpointed). ``gan_weight`` > 0 adds the
    GAN term (module docstring) and a ``discriminator`` head trained with the fake score.
    """

    def __init__(self, student: nn.Module, fake: nn.Module, teacher: nn.Module, guidance: tuple[float, float],
                 num_stages: int = 3, gamma: float = 1.0 / 3.0, teacher_loss_weight: float = 0.5,
                 gan_weight: float = 0.0, gan_stages: tuple[int, ...] | None = None,
                 rollout_steps: tuple[int, ...] | None = None, gan_features: str = "fake"):
        super().__init__()
        self.student = student
        self.fake = fake
        self._teacher = (teacher,)  # a tuple keeps it out of parameters(), state_dict() and DDP
        self.guidance = tuple(float(g) for g in guidance)
        self.specs = sched.stage_specs(num_stages, gamma)
        self.teacher_loss_weight = float(teacher_loss_weight)
        self.gan_weight = float(gan_weight)
        self.gan_stages = gan_stage_set(gan_stages, num_stages)
        self.gamma = float(gamma)
        self.rollout_steps = None if rollout_steps is None else tuple(int(n) for n in rollout_steps)
        if self.rollout_steps is not None and len(self.rollout_steps) != num_stages:
            raise InputError(f"rollout_steps {list(self.rollout_steps)}: expected one step count per stage "
                             f"({num_stages})")
        if gan_features not in GAN_FEATURES:
            raise InputError(f"gan_features {gan_features!r}: expected one of {', '.join(GAN_FEATURES)}")
        self.gan_features = gan_features
        if self.gan_weight > 0:
            # last-block tokens of the (trained) fake score, or of the frozen teacher
            tokens = CurrentTokens(fake if gan_features == "fake" else teacher)
            self._tokens = (tokens,)
            self.discriminator = mlp_discriminator(tokens.dim)

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit per sample: token logits averaged."""
        return self.discriminator(tokens).squeeze(-1).mean(dim=1)

    def _with_logits(self, clips, x, t, text) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature model's prediction (fake flow, or the teacher's conditional flow) and the discriminator's
        logit per sample, one call."""
        out, tokens = self._tokens[0](clips, x, t, text)
        return out, self._logits(tokens)

    def _disc_fake_flow(self, clips, x_fake, x_real, t, text) -> tuple[torch.Tensor, torch.Tensor]:
        """(fake flow at ``x_fake``, the discriminator's loss on ``x_real`` vs ``x_fake``)."""
        if self.gan_features == "fake":  # one fake call serves the flow-matching loss and the head
            v_fake, logits_fake = self._with_logits(clips, x_fake, t, text)
            _, logits_real = self._with_logits(clips, x_real, t, text)
        else:  # the teacher is frozen: only the head learns, its tokens need no graph
            v_fake = predict(self.fake, clips, x_fake, t, text)
            with torch.no_grad():
                tokens = [self._tokens[0](clips, x, t, text)[1] for x in (x_fake, x_real)]
            logits_fake, logits_real = (self._logits(k) for k in tokens)
        return v_fake, F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()

    def _generator_grad(self, clips, z_tau: torch.Tensor, t, text) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fake flow, d mean(softplus(-D(z_tau))) / d z_tau, that loss); no gradient reaches fake, teacher or
        head."""
        leaf = z_tau.detach().requires_grad_(True)
        with torch.enable_grad():
            out, logits = self._with_logits(clips, leaf, t, text)
            loss = F.softplus(-logits).mean()
            (grad,) = torch.autograd.grad(loss, leaf)
        if self.gan_features == "fake":
            v_fake = out.detach()
        else:
            with torch.no_grad():
                v_fake = predict(self.fake, clips, z_tau, t, text)
        return v_fake, torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0), loss.detach()

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def to(self, *args, **kwargs):  # the teacher follows the objective's device
        self._teacher[0].to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def student_sample(self, batch: StageBatch, stage: int, x: torch.Tensor | None = None) -> torch.Tensor:
        """The student's clean estimate at its input ``x`` (default: the data path at ``r_student``)."""
        spec = self.specs[stage]
        r = batch.r_student[stage]
        if x is None:
            x = interpolate(batch.start[stage], batch.end[stage], r)
        v = predict(self.student, batch.clips[stage], x, timestep_for(r, spec), batch.text)
        return clean_from_flow(x, v, r, spec)

    @torch.no_grad()
    def rollout_inputs(self, batch: StageBatch) -> list[torch.Tensor]:
        """Student inputs from its own sampler run (DMD2's backward simulation), one per stage: stage 0 starts at
        the batch's pure noise, every later stage at the sampler's jump from the previous stage's last Euler step;
        within a stage, each sample's input is the state at its grid point ``i_student``. History is the data's."""
        if batch.noise_jump is None:
            raise ValueError("rollout needs batches drawn with make_batch(..., jump_noise=True)")
        inputs, x = [], batch.start[0]
        for stage, spec in enumerate(self.specs):
            if stage > 0:
                alpha, beta = sched.jump_coefficients(spec, self.gamma)
                x = ops.stage_jump(x, batch.noise_jump[stage], alpha, beta)
            grid = sched.local_sigmas(self.rollout_steps[stage])
            r, index = batch.r_student[stage], batch.i_student[stage].to(x.device)  # [B] each sample's grid position
            steps = len(grid) - 1 if stage < len(self.specs) - 1 else int(index.max())  # the last stage stops early
            picked = x.clone()
            for k in range(len(grid) - 1):
                picked[index == k] = x[index == k]
                if k >= steps:
                    break
                t = timestep_for(torch.full_like(r, grid[k]), spec)
                x = ops.euler_step(x, predict(self.student, batch.clips[stage], x, t, batch.text), grid[k], grid[k + 1])
            inputs.append(picked)
        return inputs

    def forward(self, batch: StageBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scale = self.guidance[0] if batch.unit == 0 else self.guidance[1]
        zero = torch.zeros((), device=batch.start[0].device)
        fake_losses, dmd_losses, teacher_losses, weights = [], [], [], []
        disc_losses, gen_losses, gen_terms, grad_norms = [], [], [], []
        inputs = self.rollout_inputs(batch) if self.rollout_steps is not None else None
        for stage, spec in enumerate(self.specs):
            stage_gan = self.gan_weight > 0 and stage in self.gan_stages
            clips = batch.clips[stage]
            with torch.set_grad_enabled(batch.student_step and torch.is_grad_enabled()):
                z_hat = self.student_sample(batch, stage, None if inputs is None else inputs[stage])
            if not torch.isfinite(z_hat).all():
                raise CollapseError(f"non-finite student prediction (NaN/inf) at stage {stage}, unit {batch.unit}")
            # fake score: pyramidal flow matching on the (detached) student distribution, tau ~ U(0, 1)
            y_start, y_end = renoise(z_hat.detach(), batch.noise_fake[stage], spec)
            tau = batch.tau_fake[stage]
            t_fake = timestep_for(tau, spec)
            if stage_gan:
                r_start, r_end = renoise(batch.clean[stage], batch.noise_fake[stage], spec)
                v_fake, disc_loss = self._disc_fake_flow(clips, interpolate(y_start, y_end, tau),
                                                         interpolate(r_start, r_end, tau), t_fake, batch.text)
                disc_losses.append(disc_loss)
            else:
                v_fake = predict(self.fake, clips, interpolate(y_start, y_end, tau), t_fake, batch.text)
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
                if not stage_gan:
                    v_fake_now = predict(self.fake, clips, z_tau, t_tau, batch.text)
            if stage_gan:  # the same fake call gives the DMD term's fake flow and the generator's gradient
                v_fake_now, gen_grad, gen_loss = self._generator_grad(clips, z_tau, t_tau, batch.text)
                # z_tau is linear in z_hat: rebuilding it with gradient and pairing it with the detached
                # d loss / d z_tau gives the student exactly the chain-rule gradient
                g_start, g_end = renoise(z_hat, batch.noise_dmd[stage], spec)
                gen_terms.append((interpolate(g_start, g_end, tau) * gen_grad).sum())
                gen_losses.append(gen_loss)
            grad, weight = dmd_gradient(v_teacher, v_fake_now, y_start - y_end)
            if stage_gan:  # d loss / d z_tau of each term (the DMD surrogate's is grad / numel): their balance
                grad_norms.append(torch.stack([(grad / grad.numel()).norm(), self.gan_weight * gen_grad.norm()]))
            dmd_losses.append(dmd_loss(z_hat, grad))
            # the Cauchy loss pairs the student with the data latent on the data's noise path (the paper's), also
            # when the DMD term reads a rollout: one more student call where the two inputs differ
            z_data = z_hat
            if inputs is not None and not torch.equal(inputs[stage], interpolate(batch.start[stage], batch.end[stage],
                                                                                  batch.r_student[stage])):
                z_data = self.student_sample(batch, stage)
            teacher_losses.append(cauchy_loss(z_data, batch.clean[stage]))
            weights.append(weight.mean())
        loss_fake = torch.stack(fake_losses).mean()
        metrics = {"loss_fake": loss_fake.detach()}
        loss = loss_fake
        if self.gan_weight > 0:
            loss_disc = torch.stack(disc_losses).mean()
            loss = loss + self.gan_weight * loss_disc
            metrics["loss_disc"] = loss_disc.detach()
            metrics["loss_gan"] = torch.stack(gen_losses).mean() if batch.student_step else zero
            if batch.student_step:  # the GAN term's gradient norm at the noisy sample over the DMD term's
                dmd_norm, gan_norm = torch.stack(grad_norms).sum(0)
                metrics["gan_dmd_grad_ratio"] = (gan_norm / dmd_norm.clamp_min(1e-12)).detach()
            else:
                metrics["gan_dmd_grad_ratio"] = zero
        if batch.student_step:
            loss_dmd = torch.stack(dmd_losses).mean()
            loss_teacher = torch.stack(teacher_losses).mean()
            loss = loss + loss_dmd + self.teacher_loss_weight * loss_teacher
            if self.gan_weight > 0:
                loss = loss + self.gan_weight * torch.stack(gen_terms).mean()
            metrics.update(loss_dmd=loss_dmd.detach(), loss_teacher=loss_teacher.detach(),
                           dmd_weight=torch.stack(weights).mean())
        else:
            metrics.update(loss_dmd=zero, loss_teacher=zero, dmd_weight=zero)
        return loss, metrics
