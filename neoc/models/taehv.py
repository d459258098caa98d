"""TAEHV-style video decoder (madebyollin/taehv; component-facts.md §1), adapted to 8x8x8 latents.

All convolutions are 2D: time is handled by MemBlocks (one frame of memory: the block's own input at t-1) and
TGrow (a 1x1 "depth-to-time" conv). Three nearest 2x upsamples give 8x space; the three TGrows are all 2x
(the first one changed from 1x, as Neodragon needs for Pyramid-Flow's 8x temporal compression), so T latents
decode to 8T frames of which the first 7 are trimmed: 1 + 8(T-1) frames, aligned with the causal VAE.

Input: the pipeline's *normalised* latents; output in [-1, 1]. Pyramid-Flow normalises latent frame 0 (the image)
with image statistics and every later frame with video statistics (component-facts.md §0). A decoder whose
weights are shared over time should see one convention, so given ``latent_norm`` = (image_shift, image_scale,
video_shift, video_scale) the decoder first re-expresses frame 0 in the video statistics (denormalise with the
image constants, renormalise with the video ones — an exact per-frame affine map, identity when the two sets are
equal); frames 1.. pass unchanged. Without ``latent_norm`` the latents are read as they come.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class MemBlock(nn.Module):
    """``ReLU(conv(ReLU(conv(ReLU(conv(cat[x_t, x_{t-1}]))))) + skip(x_t))`` on frames ``[N, T, C, H, W]``."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(conv3x3(2 * n_in, n_out), nn.ReLU(), conv3x3(n_out, n_out), nn.ReLU(),
                                  conv3x3(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = x.shape
        past = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)  # memory: the input at t-1
        flat = x.reshape(n * t, c, h, w)
        y = self.conv(torch.cat([flat, past.reshape(n * t, c, h, w)], dim=1)) + self.skip(flat)
        return F.relu(y).reshape(n, t, -1, h, w)


class TGrow(nn.Module):
    """1x1 conv C -> C*stride, then channel chunk k becomes frame k of the group (chunk 0 = earliest)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = x.shape
        y = self.conv(x.reshape(n * t, c, h, w)).reshape(n, t, self.stride, c, h, w)
        return y.reshape(n, t * self.stride, c, h, w)


class PerFrame(nn.Module):
    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = x.shape
        y = self.module(x.reshape(n * t, c, h, w))
        return y.reshape(n, t, *y.shape[1:])


class Upsample2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = x.shape
        y = F.interpolate(x.reshape(n * t, c, h, w), scale_factor=2, mode="nearest")
        return y.reshape(n, t, c, 2 * h, 2 * w)


def first_frame_affine(latent_norm) -> tuple[float, float] | None:
    """(a, b) such that ``a * z_n + b`` maps an image-normalised latent frame to the video normalisation.

    ``z = z_n / image_scale + image_shift`` and ``z_v = (z - video_shift) * video_scale``, so
    ``a = video_scale / image_scale`` and ``b = (image_shift - video_shift) * video_scale``.
    """
    if latent_norm is None:
        return None
    image_shift, image_scale, video_shift, video_scale = (float(v) for v in latent_norm)
    return video_scale / image_scale, (image_shift - video_shift) * video_scale


def to_video_statistics(latents: torch.Tensor, affine: tuple[float, float] | None) -> torch.Tensor:
    """Normalised latents [B, C, T, h, w] with frame 0 re-expressed in the video statistics (see module doc)."""
    if affine is None or affine == (1.0, 0.0):
        return latents
    a, b = affine
    return torch.cat([latents[:, :, :1] * a + b, latents[:, :, 1:]], dim=2)


class TAEHVDecoder(nn.Module):
    """Normalised latents [B, C, T, h, w] -> frames [B, 3, 1 + 8(T-1), 8h, 8w] in [-1, 1]."""

    def __init__(self, latent_channels: int = 16, channels: tuple[int, ...] = (256, 128, 64, 64),
                 blocks_per_stage: int = 3, time_upscale: tuple[bool, ...] = (True, True, True),
                 latent_norm: tuple[float, float, float, float] | None = None):
        super().__init__()
        # plain floats (nothing in the state dict), like LatentNorm: they trace to constants
        self.latent_norm = None if latent_norm is None else tuple(float(v) for v in latent_norm)
        self.first_frame = first_frame_affine(self.latent_norm)
        self.latent_channels, self.channels = latent_channels, tuple(channels)
        self.blocks_per_stage, self.time_upscale = blocks_per_stage, tuple(time_upscale)
        self.t_up = 2 ** sum(time_upscale)
        layers: list[nn.Module] = [PerFrame(conv3x3(latent_channels, channels[0])), PerFrame(nn.ReLU())]
        for stage, up_time in enumerate(time_upscale):
            n = channels[stage]
            layers += [MemBlock(n, n) for _ in range(blocks_per_stage)]
            layers += [Upsample2x(), TGrow(n, 2 if up_time else 1), PerFrame(conv3x3(n, channels[stage + 1], bias=False))]
        layers += [PerFrame(nn.ReLU()), PerFrame(conv3x3(channels[-1], 3))]
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = 3 * torch.tanh(to_video_statistics(latents, self.first_frame) / 3)  # TAEHV's input clamp
        x = x.permute(0, 2, 1, 3, 4)  # [B, T, C, h, w]
        y = self.layers(x)[:, self.t_up - 1:]  # trim the startup frames: 8T - 7 = 1 + 8(T-1)
        return torch.tanh(y).permute(0, 2, 1, 3, 4)  # [B, 3, F, H, W] in [-1, 1]
