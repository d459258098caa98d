"""Sampler operations that appear as ``call_function`` nodes in the pipeline graph.

Each is a small pure function of tensors and static Python numbers, so the unrolled sampler is a plain dataflow
graph: the same graph runs on real tensors, on the meta device (cost model), and can be cut into per-stage
graphs for a target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def select_rows(x: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows ``start:end`` of the batch (e.g. the positive prompt of a [negative, positive] pair)."""
    return x[start:end]


def frame(x: torch.Tensor, index: int) -> torch.Tensor:
    """Latent frame ``index`` of ``[B, C, T, H, W]`` as a one-frame clip ``[B, C, 1, H, W]``."""
    return x[:, :, index:index + 1]


def frames(x: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Latent frames ``start:end`` of ``[B, C, T, H, W]``."""
    return x[:, :, start:end]


def cat_frames(history: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Append generated latent frames along time."""
    return torch.cat([history, new], dim=2)


def down2(x: torch.Tensor) -> torch.Tensor:
    """Per-frame bilinear 2x downsample of ``[B, C, T, H, W]`` (reference ``get_pyramid_latent``)."""
    b, c, t, h, w = x.shape
    y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    y = F.interpolate(y, size=(h // 2, w // 2), mode="bilinear")
    return y.reshape(b, t, c, h // 2, w // 2).permute(0, 2, 1, 3, 4)


def up2_nearest(x: torch.Tensor) -> torch.Tensor:
    """Per-frame nearest 2x upsample of ``[B, C, T, H, W]``."""
    b, c, t, h, w = x.shape
    y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    y = F.interpolate(y, size=(h * 2, w * 2), mode="nearest")
    return y.reshape(b, t, c, h * 2, w * 2).permute(0, 2, 1, 3, 4)


def stage_jump(x: torch.Tensor, block_noise: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Enter the next pyramid stage: ``alpha * NearestUp2(x) + beta * block_noise``."""
    return alpha * up2_nearest(x) + beta * block_noise.to(x.dtype)


def cfg_batch(x: torch.Tensor) -> torch.Tensor:
    """Duplicate a batch-1 latent for the [unconditional, conditional] CFG pair."""
    return torch.cat([x, x], dim=0)


def timestep(value: float, like: torch.Tensor) -> torch.Tensor:
    """The global timestep (0..1000 scale) as a ``[B]`` tensor on ``like``'s device."""
    return torch.full((like.shape[0],), value, dtype=torch.float32, device=like.device)


def cfg_combine(v: torch.Tensor, scale: float) -> torch.Tensor:
    """``v_uncond + w (v_cond - v_uncond)`` for a batch-2 output ordered [uncond, cond]."""
    v_uncond, v_cond = v.chunk(2, dim=0)
    return v_uncond + scale * (v_cond - v_uncond)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Flow-matching Euler step in fp32 on local sigmas: ``x + (sigma_next - sigma) v``."""
    return (x.float() + (sigma_next - sigma) * v.float()).to(v.dtype)


def first_output(out):
    """The reference MMDiT returns one output per stage entry; the pipeline feeds one entry."""
    if isinstance(out, (list, tuple)):
        return out[0]
    return out
