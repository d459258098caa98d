"""Pyramidal flow-matching schedule (Pyramid-Flow ``PyramidFlowMatchEulerDiscreteScheduler``, shift 1).

Numbers follow reference/pyramid-flow-facts.md §4.2-4.3:

* a global grid ``sigmas = linspace(1, 1000, 1000)[::-1] / 1000``;
* stage ``s`` covers ``stage_range[s] .. stage_range[s+1]`` of that grid; every stage after the first
  starts at a *corrected* sigma ``1 - a/(sqrt(1+1/gamma)(1-a)+a)`` with ``a = 1 - ori_start_sigma``;
* the timestep fed to the DiT is global (0..1000 scale), proportional to the sigma distance covered;
* the Euler step runs on *local* sigmas ``linspace(1, 0.001, n) + [0]``, the same for every stage;
* at a stage jump the latent is nearest-upsampled 2x and renoised: ``x = alpha*x + beta*block_noise``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GLOBAL_STEPS = 1000


@dataclass(frozen=True)
class StageSpec:
    """Where one pyramid stage starts and ends, in global sigma and global timestep."""

    index: int
    ori_start_sigma: float
    start_sigma: float
    end_sigma: float
    timestep_max: float
    timestep_min: float


def global_sigmas() -> list[float]:
    """The 1000-point global grid, from 1.0 down to 0.001."""
    return [(GLOBAL_STEPS - i) / GLOBAL_STEPS for i in range(GLOBAL_STEPS)]


def stage_specs(num_stages: int = 3, gamma: float = 1.0 / 3.0) -> list[StageSpec]:
    """Per-stage sigma and timestep ranges (equal thirds of the global grid by default)."""
    sigmas = global_sigmas()
    stage_range = [i / num_stages for i in range(num_stages + 1)]
    ori_start, start, end = [], [], []
    for s in range(num_stages):
        start_idx = int(stage_range[s] * GLOBAL_STEPS)
        end_idx = int(stage_range[s + 1] * GLOBAL_STEPS)
        ori = sigmas[start_idx]
        end_sigma = sigmas[end_idx] if end_idx < GLOBAL_STEPS else 0.0
        if s > 0:
            a = 1.0 - ori
            corrected = a / (math.sqrt(1.0 + 1.0 / gamma) * (1.0 - a) + a)
            start_sigma = 1.0 - corrected
        else:
            start_sigma = ori
        ori_start.append(ori)
        start.append(start_sigma)
        end.append(end_sigma)
    # Timestep ranges proportional to the sigma distance each stage covers.
    lengths = [start[s] - end[s] for s in range(num_stages)]
    total = sum(lengths)
    specs, acc = [], 0.0
    for s in range(num_stages):
        ratio_start = acc / total
        acc += lengths[s]
        ratio_end = acc / total
        ts_max = sigmas[int(ratio_start * GLOBAL_STEPS)] * GLOBAL_STEPS
        grid_end = sigmas[min(int(ratio_end * GLOBAL_STEPS), GLOBAL_STEPS - 1)] * GLOBAL_STEPS
        # The stage's own 1000-point grid runs from ts_max towards grid_end, excluding grid_end.
        ts_min = ts_max - (ts_max - grid_end) * GLOBAL_STEPS / (GLOBAL_STEPS + 1)
        specs.append(StageSpec(s, ori_start[s], start[s], end[s], ts_max, ts_min))
    return specs


def stage_timesteps(spec: StageSpec, num_steps: int) -> list[float]:
    """Global timesteps (0..1000 scale) of one stage's ``num_steps`` denoising steps."""
    return torch.linspace(spec.timestep_max, spec.timestep_min, num_steps, dtype=torch.float64).tolist()


def local_sigmas(num_steps: int) -> list[float]:
    """Local sigmas ``linspace(1, 0.001, n)`` plus a trailing 0: the Euler grid inside every stage."""
    return torch.linspace(1.0, 0.001, num_steps, dtype=torch.float64).tolist() + [0.0]


def jump_coefficients(next_stage: StageSpec, gamma: float = 1.0 / 3.0) -> tuple[float, float]:
    """Renoising coefficients (alpha, beta) when entering ``next_stage``.

    ``x <- alpha * NearestUp2(x) + beta * block_noise``, with ``a = 1 - ori_start_sigma``:
    ``alpha = 1/(sqrt(1+1/gamma)(1-a)+a)`` and ``beta = alpha (1-a)/sqrt(gamma)``
    (= the paper's ``(1+s_k)/2`` and ``sqrt(3)(1-s_k)/2`` for gamma = 1/3).
    """
    a = 1.0 - next_stage.ori_start_sigma
    alpha = 1.0 / (math.sqrt(1.0 + 1.0 / gamma) * (1.0 - a) + a)
    beta = alpha * (1.0 - a) / math.sqrt(gamma)
    return alpha, beta


def block_noise(shape: tuple[int, ...], generator: torch.Generator | None, gamma: float = 1.0 / 3.0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Correlated 2x2 block noise ``[B, C, T, H, W]``: each 2x2 block ~ N(0, (1+gamma)I - gamma 11^T).

    Unit variance, pairwise correlation -gamma (-1/3), so every 2x2 block sums to exactly 0.
    Drawn from ``generator`` (the run's seed), unlike the reference which uses the global RNG.
    """
    b, c, t, h, w = shape
    if h % 2 or w % 2:
        raise ValueError(f"block noise needs even spatial size, got {h}x{w}")
    cov = (1.0 + gamma) * torch.eye(4, dtype=torch.float64) - gamma * torch.ones(4, 4, dtype=torch.float64)
    # The covariance is singular (blocks sum to zero), so use an eigen square root instead of Cholesky.
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T  # [4, 4]
    z = torch.randn((b * c * t * (h // 2) * (w // 2), 4), generator=generator, dtype=torch.float64)
    blocks = (z @ root.T).to(dtype)  # [N, 4] with (p q) order
    blocks = blocks.view(b, c, t, h // 2, w // 2, 2, 2)
    return blocks.permute(0, 1, 2, 3, 5, 4, 6).reshape(b, c, t, h, w)


def downsample_noise(noise: torch.Tensor, levels: int) -> torch.Tensor:
    """Bilinear 2x downsample ``levels`` times, times 2 each time (keeps unit variance)."""
    for _ in range(levels):
        b, c, t, h, w = noise.shape
        x = noise.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x = F.interpolate(x, size=(h // 2, w // 2), mode="bilinear") * 2
        noise = x.reshape(b, t, c, h // 2, w // 2).permute(0, 2, 1, 3, 4)
    return noise
