"""Pyramidal flow matching, as Pyramid-Flow trains its MMDiT (reference/pyramid-flow-facts.md §4.2-§4.5).

For the latent frame ("unit") ``k`` being generated and pyramid stage ``s`` (0 = lowest resolution):

* ``clean_s``: the bilinear 2x downsample chain of the full-resolution clean latent frame;
* ``noise_s``: full-resolution Gaussian noise bilinearly downsampled, times 2 per level (unit variance);
* end points (global sigmas from :func:`neoc.models.scheduler.stage_specs`)::

      start_s = start_sigma_s * noise_s + (1 - start_sigma_s) * NearestUp2(clean_{s-1})     (s > 0)
      start_0 = noise_0
      end_s   = end_sigma_s * noise_s + (1 - end_sigma_s) * clean_s       (the last stage ends at clean)

* a training point ``x = r * start + (1 - r) * end`` with ``r`` drawn from the stage's 1000-point local grid
  ``1, 0.999, ..., 0.001`` and the *global* timestep at the same grid index (``timestep_max`` ->
  ``timestep_min`` of the stage), exactly the pairs the sampler visits; the target is ``v = start - end``
  (so an Euler step ``x += (r_next - r) v`` moves towards ``end``), loss = MSE.
* optional ``loss_weights`` [B, 1, 1, H, W] at the full latent resolution (e.g. ``1 + w * object mask``) are
  area-pooled to each stage's grid and the stage's loss becomes the weighted mean ``sum(w e^2) / sum(w)``
  (over channels too): the toy world's object covers a few latent cells of the 8x8 grid, a few percent of a
  plain MSE.
* the grid index is uniform by default (Pyramid-Flow); ``timestep_sampling="logit_normal"`` draws the local sigma
  as ``r = sigmoid(m + s * n)``, ``n ~ N(0, 1)`` (SD3's logit-normal sampling, applied inside each stage) and
  takes the nearest grid point, so the middle of every stage gets more of the training budget.

History (units ``0..k-1``) is laid out exactly like inference (:func:`neoc.ir.pipeline.history_clips`): at
stage ``s`` the previous frame at the stage's resolution, older frames at lower pyramid levels. Training
corrupts history with noise ``sigma ~ U[0, 1/3]`` (``corrupt_ratio``) so the model tolerates its own
imperfect generations. 10 % of captions are dropped to ``""`` (the tiny negative prompt) for CFG.

One optimizer step trains all stages of one unit ``k`` together: the denoiser's multi-entry forward takes one
clip list per stage, with text rows laid out ``b * S + s`` (reference layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from neoc.errors import InputError
from neoc.ir import ops
from neoc.ir.pipeline import history_clips
from neoc.models import scheduler as sched

TRAIN_GRID = sched.GLOBAL_STEPS  # 1000 training points per stage
CORRUPT_RATIO = 1.0 / 3.0
CAPTION_DROPOUT = 0.1
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


# ---- end points ---------------------------------------------------------------------------------------------
def clean_pyramid(latent: torch.Tensor, num_stages: int) -> list[torch.Tensor]:
    """Full-res latent [B, C, T, H, W] -> per-stage clean latents, index = stage (0 = lowest resolution)."""
    levels = [latent]
    for _ in range(num_stages - 1):
        levels.append(ops.down2(levels[-1]))
    return levels[::-1]


def noise_pyramid(noise: torch.Tensor, num_stages: int) -> list[torch.Tensor]:
    """Full-res noise -> per-stage noise (bilinear 2x down, x2 per level), index = stage."""
    levels = [noise]
    for _ in range(num_stages - 1):
        levels.append(sched.downsample_noise(levels[-1], 1))
    return levels[::-1]


def stage_end_points(clean: Sequence[torch.Tensor], noise: Sequence[torch.Tensor], stage: int,
                     specs: Sequence[sched.StageSpec]) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) of ``stage`` from per-stage clean latents and noise (lists indexed by stage)."""
    spec = specs[stage]
    if stage == 0:
        start = noise[0]
    else:
        start = spec.start_sigma * noise[stage] + (1.0 - spec.start_sigma) * ops.up2_nearest(clean[stage - 1])
    end = spec.end_sigma * noise[stage] + (1.0 - spec.end_sigma) * clean[stage]
    return start, end


def grid_point(index: torch.Tensor, spec: sched.StageSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-grid index ``i`` in [0, 1000) -> (local sigma ``r = 1 - i/1000``, global timestep).

    The timestep runs linearly from ``timestep_max`` (i = 0) to ``timestep_min`` (i = 999), the same end points
    the sampler's ``stage_timesteps`` uses; ``r`` spans the sampler's local sigmas ``1 .. 0.001``.
    """
    index = index.to(torch.float64)
    r = 1.0 - index / TRAIN_GRID
    timestep = spec.timestep_max + (spec.timestep_min - spec.timestep_max) * index / (TRAIN_GRID - 1)
    return r.float(), timestep.float()


def check_timestep_sampling(sampling: str, logit_std: float = 1.0) -> None:
    """Raise :class:`InputError` for a sampling name or logit-normal spread :func:`sample_grid_index` refuses."""
    if not logit_std > 0:
        raise InputError(f"logit_std: expected > 0, got {logit_std}")
    if sampling not in TIMESTEP_SAMPLINGS:
        raise InputError(f"timestep sampling {sampling!r}: expected one of {', '.join(TIMESTEP_SAMPLINGS)}")


def sample_grid_index(batch: int, generator: torch.Generator, sampling: str = "uniform",
                      logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """``batch`` training-grid indices in [0, 1000): uniform, or the grid point nearest to a logit-normal local
    sigma ``r = sigmoid(logit_mean + logit_std * n)`` (``r = 1 - i/1000``)."""
    check_timestep_sampling(sampling, logit_std)
    if sampling == "uniform":
        return torch.randint(0, TRAIN_GRID, (batch,), generator=generator)
    r = torch.sigmoid(logit_mean + logit_std * torch.randn((batch,), generator=generator, dtype=torch.float64))
    return ((1.0 - r) * TRAIN_GRID).round().clamp(0, TRAIN_GRID - 1).long()


def interpolate(start: torch.Tensor, end: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``x = r * start + (1 - r) * end`` with a per-sample ``r`` [B]."""
    r = r.view(-1, *([1] * (start.dim() - 1))).to(start.dtype)
    return r * start + (1.0 - r) * end


def corrupt_history(history: torch.Tensor, generator: torch.Generator,
                    max_sigma: float = CORRUPT_RATIO) -> torch.Tensor:
    """Clean history frames [B, C, k, h, w] -> ``sigma n + (1 - sigma) x`` with ``sigma ~ U[0, max_sigma]``
    drawn per sample and frame."""
    b, _, t = history.shape[:3]
    sigma = torch.rand((b, 1, t, 1, 1), generator=generator) * max_sigma
    noise = torch.randn(history.shape, generator=generator)
    return sigma * noise + (1.0 - sigma) * history


# ---- one training batch ---------------------------------------------------------------------------------------
@dataclass
class FlowBatch:
    """Inputs and targets of one pyramidal flow-matching step (all stages of one unit)."""

    unit: int
    sample: list[list[torch.Tensor]]   # per stage: [history clips..., x_t [B, C, 1, h_s, w_s]]
    timesteps: torch.Tensor            # [S*B] global timesteps, row b*S + s
    targets: list[torch.Tensor]        # per stage: v = start - end [B, C, 1, h_s, w_s]
    tokens: dict[str, torch.Tensor]    # t5_ids, t5_mask, clip_l_ids, clip_g_ids [B, L]
    loss_weights: list[torch.Tensor] | None = None  # per stage: [B, 1, 1, h_s, w_s] (None: plain MSE)


def make_flow_batch(latents: torch.Tensor, unit: int, tokens: dict[str, torch.Tensor], generator: torch.Generator,
                    num_stages: int = 3, gamma: float = 1.0 / 3.0,
                    corrupt_ratio: float = CORRUPT_RATIO, timestep_sampling: str = "uniform",
                    logit_mean: float = 0.0, logit_std: float = 1.0,
                    loss_weights: torch.Tensor | None = None) -> FlowBatch:
    """Build a :class:`FlowBatch` for ``unit`` from normalised clean latents [B, C, T >= unit+1, H, W].

    ``timestep_sampling`` / ``logit_mean`` / ``logit_std``: how each stage's grid index is drawn
    (:func:`sample_grid_index`). ``loss_weights``: per-position weights of the unit's frame [B, 1, 1, H, W]
    (positive; see :func:`stage_loss_weights`)."""
    specs = sched.stage_specs(num_stages, gamma)
    batch = latents.shape[0]
    current = latents[:, :, unit:unit + 1].float()  # [B, C, 1, H, W]
    noise = torch.randn(current.shape, generator=generator)
    clean = clean_pyramid(current, num_stages)
    noisy = noise_pyramid(noise, num_stages)

    history_levels: list[torch.Tensor] = []
    if unit > 0:  # levels 0 (full) .. S-1 (lowest), each corrupted on its own
        level_clean = latents[:, :, :unit].float()
        for level in range(num_stages):
            if level > 0:
                level_clean = ops.down2(level_clean)
            history_levels.append(corrupt_history(level_clean, generator, corrupt_ratio))

    sample, targets, timesteps = [], [], []
    for stage in range(num_stages):
        start, end = stage_end_points(clean, noisy, stage, specs)
        index = sample_grid_index(batch, generator, timestep_sampling, logit_mean, logit_std)
        r, t = grid_point(index, specs[stage])
        clips = [history_levels[level][:, :, a:b] for level, a, b in history_clips(unit, stage, num_stages)]
        sample.append(clips + [interpolate(start, end, r)])
        targets.append(start - end)
        timesteps.append(t)
    stage_major = torch.stack(timesteps, dim=1).reshape(-1)  # [B, S] -> [B*S], row b*S + s
    weights = None if loss_weights is None else stage_loss_weights(loss_weights, current.shape, num_stages)
    return FlowBatch(unit, sample, stage_major, targets, tokens, weights)


def stage_loss_weights(weights: torch.Tensor, frame_shape: Sequence[int], num_stages: int) -> list[torch.Tensor]:
    """Full-resolution weights [B, 1, 1, H, W] -> one map per stage (stage 0 lowest), halved as the latent is
    (:func:`clean_pyramid`: an exact 2x bilinear downsample, i.e. the mean of each 2x2 block)."""
    b, _, _, h, w = frame_shape
    if tuple(weights.shape) != (b, 1, 1, h, w):
        raise InputError(f"loss_weights: expected [{b}, 1, 1, {h}, {w}] for the unit's frame, got {tuple(weights.shape)}")
    if not bool(torch.isfinite(weights).all()) or bool((weights <= 0).any()):
        raise InputError("loss_weights must be finite and positive")
    return clean_pyramid(weights.float(), num_stages)


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """MSE, or ``sum(w (p - t)^2) / sum(w)`` with ``w`` [B, 1, 1, h, w] broadcast over channels."""
    if weights is None:
        return F.mse_loss(prediction.float(), target)
    squared = (prediction.float() - target).pow(2)
    full = weights.expand_as(squared)
    return (full * squared).sum() / full.sum()


def drop_captions(captions: Sequence[str], generator: torch.Generator, rate: float = CAPTION_DROPOUT,
                  empty: str = "") -> list[str]:
    """Replace each caption by ``empty`` with probability ``rate`` (classifier-free guidance training)."""
    keep = torch.rand(len(captions), generator=generator) >= rate
    return [c if k else empty for c, k in zip(captions, keep.tolist())]


# ---- the objective -----------------------------------------------------------------------------------------------
class PyramidFlowObjective(nn.Module):
    """Text encoders + context embedder + denoiser trained jointly: ``forward(FlowBatch) -> (loss, metrics)``.

    ``clip_encoders`` may be None (a pipeline without pooled CLIP features then needs zeros of the denoiser's
    ``pooled_projection_dim``). Loss = mean over stages of the per-stage (optionally weighted) MSE to
    ``v = start - end``.
    """

    def __init__(self, denoiser: nn.Module, context_embedder: nn.Module, text_encoder: nn.Module,
                 clip_encoders: nn.Module | None):
        super().__init__()
        self.denoiser = denoiser
        self.context_embedder = context_embedder
        self.text_encoder = text_encoder
        self.clip_encoders = clip_encoders

    def predict(self, batch: FlowBatch) -> list[torch.Tensor]:
        tokens = batch.tokens
        stages = len(batch.sample)
        context = self.context_embedder(self.text_encoder(tokens["t5_ids"], tokens["t5_mask"]))  # [B, L, D]
        pooled = self.clip_encoders(tokens["clip_l_ids"], tokens["clip_g_ids"])  # [B, P]
        rows = lambda x: x.repeat_interleave(stages, dim=0)  # noqa: E731  [B, ...] -> [B*S, ...], row b*S + s
        return self.denoiser(batch.sample, rows(context), rows(tokens["t5_mask"]), rows(pooled), batch.timesteps)

    def forward(self, batch: FlowBatch) -> tuple[torch.Tensor, dict[str, float]]:
        predictions = self.predict(batch)
        weights = batch.loss_weights or [None] * len(predictions)
        per_stage = [weighted_mse(p, t, w) for p, t, w in zip(predictions, batch.targets, weights)]
        loss = torch.stack(per_stage).mean()
        metrics = {f"loss_stage{s}": v.detach() for s, v in enumerate(per_stage)}
        return loss, metrics
