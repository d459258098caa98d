"""Wan-style causal 3D video decoder (Wan 2.1 VAE decoder, arXiv 2503.20314), adapted to 8x8x8 latents.

The second decoder family of ``swap-decoder`` (Neodragon §3.2, Table 3 "WAN modified"). Unlike TAEHV, time is
mixed by real causal 3D convolutions:

* ``CausalConv3d``: a 3D conv whose temporal padding is all on the past side (zeros), so output frame t sees
  input frames <= t only;
* ``ChannelRMSNorm``: each voxel's feature vector scaled to unit RMS over channels, times a learned gain
  (Wan's ``RMS_norm``; no batch or group statistics, so it streams frame by frame);
* ``ResidualBlock``: norm, SiLU, CausalConv3d 3x3x3, norm, SiLU, CausalConv3d 3x3x3, plus a 1x1x1 shortcut when
  the width changes;
* ``FrameAttention``: single-head self-attention over the pixels of each frame (the mid block);
* ``Upsample``: the optional temporal 2x — a causal (3,1,1) conv to twice the channels whose two halves become two
  output frames; the first frame (the image latent) is *not* doubled, so T frames become 1 + 2(T-1) — then a
  per-frame nearest 2x spatial upsample and a 3x3 conv that halves the width.

Wan 2.1 compresses time 4x: its decoder upsamples time in only two of its three up-stages. Neodragon's change
(§3.2): make the remaining up-stage spatio-temporal too, so 8x8x8 latents decode to 1 + 8(T-1) frames:
T -> 2T-1 -> 4T-3 -> 8T-7. Widths follow Wan's layout: stage i reads ``channels[i-1] // 2`` (``channels[0]`` for
stage 0) and writes ``channels[i]``; every upsample halves the width. Wan 2.1 itself is
``channels=(384, 384, 192, 96)`` with 3 residual blocks per stage.

Input: the pipeline's *normalised* latents [B, C, T, h, w] (with ``latent_norm``, frame 0 is first re-expressed in
the video statistics, as in :mod:`neoc.models.taehv`); output frames [B, 3, 1 + 8(T-1), 8h, 8w], nominally
in [-1, 1] (not clamped, like the native causal VAE decoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neoc.models.taehv import first_frame_affine, to_video_statistics


class CausalConv3d(nn.Conv3d):
    """Conv3d with causal (past-only, zero) temporal padding and symmetric spatial padding; stride 1."""

    def __init__(self, n_in: int, n_out: int, kernel: int | tuple[int, int, int] = 3, bias: bool = True):
        kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        super().__init__(n_in, n_out, kernel, padding=0, bias=bias)
        kt, kh, kw = kernel
        self.causal_padding = (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0)  # F.pad order: w, h, t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.causal_padding))


class ChannelRMSNorm(nn.Module):
    """``x / rms_over_channels(x) * gain`` on [B, C, ...] tensors (Wan's RMS_norm, bias-free)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.pow(2).mean(dim=1, keepdim=True).add(self.eps).rsqrt()
        return x * rms * self.gain.view(1, -1, *([1] * (x.ndim - 2)))


class ResidualBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.residual = nn.Sequential(ChannelRMSNorm(n_in), nn.SiLU(), CausalConv3d(n_in, n_out, 3),
                                      ChannelRMSNorm(n_out), nn.SiLU(), CausalConv3d(n_out, n_out, 3))
        self.shortcut = CausalConv3d(n_in, n_out, 1) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.residual(x)


class FrameAttention(nn.Module):
    """Single-head self-attention among the h*w pixels of each frame; the output projection starts at zero."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = ChannelRMSNorm(channels)
        self.to_qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = self.norm(x).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        q, k, v = self.to_qkv(frames).reshape(b * t, 3, c, h * w).transpose(-1, -2).unbind(1)  # [BT, hw, C] each
        attended = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # [BT, hw, C]
        attended = self.proj(attended.transpose(-1, -2).reshape(b * t, c, h, w))
        return x + attended.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


class Upsample(nn.Module):
    """[B, C, T, h, w] -> [B, C/2, T' , 2h, 2w]; T' = 1 + 2(T-1) with temporal upsampling, else T."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.time_conv = CausalConv3d(channels, 2 * channels, (3, 1, 1)) if temporal else None
        self.conv = nn.Conv2d(channels, channels // 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_conv is not None and x.shape[2] > 1:
            b, c, t, h, w = x.shape
            pairs = self.time_conv(x)[:, :, 1:].reshape(b, 2, c, t - 1, h, w)  # frames 1.. -> two frames each
            doubled = pairs.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * (t - 1), h, w)  # half 0 = earlier frame
            x = torch.cat([x[:, :, :1], doubled], dim=2)  # the image frame stays single: 1 + 2(T-1)
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        frames = self.conv(F.interpolate(frames, scale_factor=2.0, mode="nearest"))  # [BT, C/2, 2h, 2w]
        return frames.reshape(b, t, c // 2, 2 * h, 2 * w).permute(0, 2, 1, 3, 4)


class WanDecoder(nn.Module):
    """Normalised latents [B, C, T, h, w] -> frames [B, 3, 1 + 8(T-1), 8h, 8w].

    ``channels``: output width of each of the four stages (Wan 2.1: 384, 384, 192, 96);
    ``blocks_per_stage``: residual blocks per stage (Wan 2.1: num_res_blocks + 1 = 3);
    ``time_upscale``: which of the three upsamples also double time (Neodragon: all three, for 8x).
    """

    def __init__(self, latent_channels: int = 16, channels: tuple[int, ...] = (384, 384, 192, 96),
                 blocks_per_stage: int = 3, time_upscale: tuple[bool, ...] = (True, True, True),
                 latent_norm: tuple[float, float, float, float] | None = None):
        super().__init__()
        self.latent_norm = None if latent_norm is None else tuple(float(v) for v in latent_norm)
        self.first_frame = first_frame_affine(self.latent_norm)
        if len(channels) != 4 or len(time_upscale) != 3:
            raise ValueError(f"WanDecoder: 4 stage widths and 3 time_upscale flags expected, got {channels}, "
                             f"{time_upscale}")
        self.latent_channels, self.channels = latent_channels, tuple(channels)
        self.blocks_per_stage, self.time_upscale = blocks_per_stage, tuple(time_upscale)
        self.t_up = 2 ** sum(time_upscale)
        width = channels[0]
        self.post_quant_conv = CausalConv3d(latent_channels, latent_channels, 1)
        self.conv_in = CausalConv3d(latent_channels, width, 3)
        self.mid = nn.Sequential(ResidualBlock(width, width), FrameAttention(width), ResidualBlock(width, width))
        stages = []
        for stage, out_width in enumerate(channels):
            in_width = channels[0] if stage == 0 else channels[stage - 1] // 2
            layers = [ResidualBlock(in_width if i == 0 else out_width, out_width) for i in range(blocks_per_stage)]
            if stage < 3:
                layers.append(Upsample(out_width, time_upscale[stage]))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(ChannelRMSNorm(channels[-1]), nn.SiLU(), CausalConv3d(channels[-1], 3, 3))

    @property
    def out_conv(self) -> nn.Conv3d:
        return self.head[-1]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(self.post_quant_conv(to_video_statistics(latents, self.first_frame)))  # [B, C0, T, h, w]
        x = self.mid(x)
        x = self.stages(x)  # [B, C3, 1 + t_up(T-1), 8h, 8w]
        return self.head(x)


__all__ = ["WanDecoder", "CausalConv3d", "ChannelRMSNorm", "ResidualBlock", "FrameAttention", "Upsample"]
