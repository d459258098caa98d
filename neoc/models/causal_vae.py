"""Pyramid-Flow's causal video VAE (``CausalVideoVAE``), weight-compatible with ``causal_video_vae/``.

Reference: reference/pyramid-flow-facts.md §3 (structure, parameter counts, chunking/tiling) and §6
(state-dict keys, e.g. ``encoder.conv_in.conv.weight``; mid-block attention under the diffusers names
``group_norm / to_q / to_k / to_v / to_out.0``).

Compression 8x in time (causally: 1 + 8k frames <-> 1 + k latents) and 8x8 in space, 16 latent
channels. Every 3D convolution is a :class:`CausalConv3d`: two zero frames of front padding, so
latent frame 0 depends on pixel frame 0 only and the first frame is encoded as an image. Norms are
GroupNorms applied frame by frame and the mid-block attention is spatial, per frame: nothing but the
convolutions mixes frames, which is what makes chunked (windowed) decoding exact.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from neoc.errors import InputError

DOWN_BLOCK_TYPE = "DownEncoderBlockCausal3D"
UP_BLOCK_TYPE = "UpDecoderBlockCausal3D"


# ---------------------------------------------------------------------------------------------------
# Building blocks (facts §3.2)
# ---------------------------------------------------------------------------------------------------


class CausalConv3d(nn.Module):
    """3D convolution, causal in time: ``(k_t - 1)`` zero frames in front, symmetric k//2 in space.

    ``temporal_chunk=True`` streams a long clip window by window: the first window
    (``is_init_image=True``) is padded as usual; later windows are prefixed with the last two padded
    input frames of the previous window (one for a stride-2 conv) from ``front_cache``, so the
    concatenated output equals the whole-clip output.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride=1, bias: bool = True):
        super().__init__()
        kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        stride = (stride, 1, 1) if isinstance(stride, int) else tuple(stride)
        self.time_kernel_size = kernel[0]
        self.temporal_stride = stride[0]
        time_pad = kernel[0] - 1
        height_pad, width_pad = kernel[1] // 2, kernel[2] // 2
        self.causal_padding = (width_pad, width_pad, height_pad, height_pad, time_pad, 0)  # F.pad order
        self.spatial_padding = (width_pad, width_pad, height_pad, height_pad, 0, 0)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=0, bias=bias)
        self.front_cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, is_init_image: bool = True, temporal_chunk: bool = False) -> torch.Tensor:
        if not temporal_chunk:
            return self.conv(F.pad(x, self.causal_padding))
        if is_init_image:
            x = F.pad(x, self.causal_padding)
        else:
            if self.front_cache is None:
                raise RuntimeError("chunked CausalConv3d: a non-initial window came before the initial one")
            x = F.pad(x, self.spatial_padding)
            if self.time_kernel_size == 3 and self.temporal_stride == 1:
                x = torch.cat([self.front_cache, x], dim=2)
            elif self.time_kernel_size == 3 and self.temporal_stride == 2:
                x = torch.cat([self.front_cache[:, :, -1:], x], dim=2)
        self.front_cache = x[:, :, -2:].detach().clone()
        return self.conv(x)


class CausalGroupNorm(nn.GroupNorm):
    """GroupNorm applied to every frame on its own: [B, C, T, H, W] -> (B*T) 2D GroupNorms."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        frames_2d = x.transpose(1, 2).reshape(batch * frames, channels, height, width)
        normed = super().forward(frames_2d)
        return normed.reshape(batch, frames, channels, height, width).transpose(1, 2)


class ChannelAffine(nn.Module):
    """What a norm with ``norm_num_groups: 0`` becomes (a neoc extension for from-scratch tiny configs): a
    per-channel scale and shift, no statistics, under the GroupNorm's parameter names (``weight``, ``bias``).

    A per-frame GroupNorm in the output path (``conv_norm_out``) and in every block removes each group's
    spatial mean per frame, so flat colour has to be re-encoded as contrast inside a group. Measured with
    ``bench/vae_learning_speed.py`` (same data, loss and inflated init): the tiny config reaches 15.3 dB after 100
    steps with GroupNorm and 18.2 dB with this affine (16.2 vs 19.5 dB at 150 steps with the norms simply
    removed). The released configs (32 groups) are unaffected.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, ...]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


def norm_or_affine(groups: int, channels: int, eps: float = 1e-6, norm_cls: type = CausalGroupNorm) -> nn.Module:
    """The reference's GroupNorm (``norm_cls``: per frame, or ``nn.GroupNorm`` for the attention's [BT, C, N]
    tokens), or :class:`ChannelAffine` when ``groups`` is 0."""
    if groups == 0:
        return ChannelAffine(channels)
    return norm_cls(num_groups=groups, num_channels=channels, eps=eps, affine=True)


class CausalResnetBlock3D(nn.Module):
    """GN -> SiLU -> conv3 -> GN -> SiLU -> dropout -> conv3, plus a 1x1x1 ``conv_shortcut`` if C changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float = 1e-6, dropout: float = 0.0):
        super().__init__()
        self.norm1 = norm_or_affine(groups, in_channels, eps)
        self.conv1 = CausalConv3d(in_channels, out_channels, kernel_size=3)
        self.norm2 = norm_or_affine(groups, out_channels, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, kernel_size=3)
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = CausalConv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, is_init_image: bool = True, temporal_chunk: bool = False) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), is_init_image, temporal_chunk)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))), is_init_image, temporal_chunk)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x, is_init_image, temporal_chunk)
        return x + h


class SpatialDownsample2x(nn.Module):
    """``CausalDownsample2x``: causal conv k3, stride (1, 2, 2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, kernel_size=3, stride=(1, 2, 2))

    def forward(self, x: torch.Tensor, is_init_image: bool = True, temporal_chunk: bool = False) -> torch.Tensor:
        return self.conv(x, is_init_image, temporal_chunk)


class TemporalDownsample2x(nn.Module):
    """``CausalTemporalDownsample2x``: causal conv k3, stride (2, 1, 1); T -> (T-1)//2 + 1."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, kernel_size=3, stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, is_init_image: bool = True, temporal_chunk: bool = False) -> torch.Tensor:
        return self.conv(x, is_init_image, temporal_chunk)


class SpatialUpsample2x(nn.Module):
    """``CausalUpsample2x``: causal conv C -> 4C, then depth-to-space ``b (c p1 p2) t h w -> b c t (h p1) (w p2)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels * 4, kernel_size=3)

    def forward(self, x: torch.Tensor, is_init_image: bool = True, temporal_chunk: bool = False) -> torch.Tensor:
        x = self.conv(x, is_init_image, temporal_chunk)  # [B, 4C, T, H, W]
        batch, channels4, frames, height, width = x.shape
        x = x.reshape(batch, channels4 // 4, 2, 2, frames, height, width)
        x = x.permute(0, 1, 4, 5, 2, 6, 3)  # [B, C, T, H, p1, W, p2]
        return x.reshape(batch, channels4 // 4, frames, height * 2, width * 2)


class TemporalUpsample2x(nn.Module):
    """``CausalTemporalUpsample2x``: causal conv C -> 2C, ``b (c p) t h w -> b c (t p) h w``; the
    initial window drops its first output frame, so T -> 2T - 1 (7 -> 13 -> 25 -> 49)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels * 2, kernel_size=3)

    def forward(self, x: torch.Tensor, is_init_image: bool = True, temporal_chunk: bool = False) -> torch.Tensor:
        x = self.conv(x, is_init_image, temporal_chunk)  # [B, 2C, T, H, W]
        batch, channels2, frames, height, width = x.shape
        x = x.reshape(batch, channels2 // 2, 2, frames, height, width).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(batch, channels2 // 2, frames * 2, height, width)
        return x[:, :, 1:] if is_init_image else x


class SpatialSelfAttention(nn.Module):
    """Mid-block attention: diffusers ``Attention`` (1 head of dim C, own GroupNorm, residual), per frame.

    Keys: ``group_norm``, ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (facts §3.2, §6).
    """

    def __init__(self, channels: int, groups: int, eps: float = 1e-6, head_dim: int | None = None):
        super().__init__()
        self.num_heads = channels // (head_dim or channels)
        self.group_norm = norm_or_affine(groups, channels, eps, nn.GroupNorm)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        frames_2d = x.transpose(1, 2).reshape(batch * frames, channels, height * width)  # [BT, C, N]
        tokens = self.group_norm(frames_2d).transpose(1, 2)  # [BT, N, C]

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], -1, self.num_heads, channels // self.num_heads).transpose(1, 2)

        query, key, value = heads(self.to_q(tokens)), heads(self.to_k(tokens)), heads(self.to_v(tokens))
        attended = F.scaled_dot_product_attention(query, key, value)  # [BT, heads, N, C/heads]
        attended = attended.transpose(1, 2).reshape(batch * frames, height * width, channels)
        out = self.to_out[1](self.to_out[0](attended))  # [BT, N, C]
        out = out.transpose(1, 2).reshape(batch, frames, channels, height, width).transpose(1, 2)
        return x + out


class CausalMidBlock(nn.Module):
    """resnet -> spatial attention -> resnet at the deepest width (``CausalUNetMidBlock2D``)."""

    def __init__(self, channels: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.resnets = nn.ModuleList(
            [CausalResnetBlock3D(channels, channels, groups, dropout=dropout) for _ in range(2)]
        )
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, groups)])

    def forward(self, x: torch.Tensor, is_init_image: bool = True, temporal_chunk: bool = False) -> torch.Tensor:
        x = self.resnets[0](x, is_init_image, temporal_chunk)
        x = self.attentions[0](x)
        return self.resnets[1](x, is_init_image, temporal_chunk)


class DownEncoderBlockCausal3D(nn.Module):
    """resnets -> optional spatial down -> optional temporal down."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int,
                 spatial_down: bool, temporal_down: bool, dropout: float = 0.0):
        super().__init__()
        self.resnets = nn.ModuleList(
            [CausalResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups, dropout=dropout)
             for i in range(num_layers)]
        )
        self.downsamplers = nn.ModuleList([SpatialDownsample2x(out_channels)]) if spatial_down else None
        self.temporal_downsamplers = nn.ModuleList([TemporalDownsample2x(out_channels)]) if temporal_down else None

    def forward(self, x: torch.Tensor, is_init_image: bool = True, temporal_chunk: bool = False) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, is_init_image, temporal_chunk)
        for sampler in (self.downsamplers or []):
            x = sampler(x, is_init_image, temporal_chunk)
        for sampler in (self.temporal_downsamplers or []):
            x = sampler(x, is_init_image, temporal_chunk)
        return x


class UpDecoderBlockCausal3D(nn.Module):
    """resnets -> optional spatial up -> optional temporal up."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int,
                 spatial_up: bool, temporal_up: bool, dropout: float = 0.0):
        super().__init__()
        self.resnets = nn.ModuleList(
            [CausalResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups, dropout=dropout)
             for i in range(num_layers)]
        )
        self.upsamplers = nn.ModuleList([SpatialUpsample2x(out_channels)]) if spatial_up else None
        self.temporal_upsamplers = nn.ModuleList([TemporalUpsample2x(out_channels)]) if temporal_up else None

    def forward(self, x: torch.Tensor, is_init_image: bool = True, temporal_chunk: bool = False) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, is_init_image, temporal_chunk)
        for sampler in (self.upsamplers or []):
            x = sampler(x, is_init_image, temporal_chunk)
        for sampler in (self.temporal_upsamplers or []):
            x = sampler(x, is_init_image, temporal_chunk)
        return x


# ---------------------------------------------------------------------------------------------------
# Encoder / decoder (facts §3.3)
# ---------------------------------------------------------------------------------------------------


class CausalVaeEncoder(nn.Module):
    """pixels [B, 3, F, H, W] -> moments [B, 2*latent, 1+(F-1)/8, H/8, W/8] (before ``quant_conv``)."""

    def __init__(self, in_channels: int, latent_channels: int, block_out_channels: Sequence[int],
                 layers_per_block: Sequence[int], spatial_down: Sequence[bool], temporal_down: Sequence[bool],
                 groups: int, dropouts: Sequence[float]):
        super().__init__()
        self.conv_in = CausalConv3d(in_channels, block_out_channels[0], kernel_size=3)
        blocks = []
        previous = block_out_channels[0]
        for index, channels in enumerate(block_out_channels):
            blocks.append(DownEncoderBlockCausal3D(previous, channels, layers_per_block[index], groups,
                                                   spatial_down[index], temporal_down[index], dropouts[index]))
            previous = channels
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = CausalMidBlock(block_out_channels[-1], groups, dropouts[-1])
        self.conv_norm_out = norm_or_affine(groups, block_out_channels[-1])
        self.conv_out = CausalConv3d(block_out_channels[-1], 2 * latent_channels, kernel_size=3)

    def forward(self, x: torch.Tensor, is_init_image: bool = True, temporal_chunk: bool = False) -> torch.Tensor:
        x = self.conv_in(x, is_init_image, temporal_chunk)
        for block in self.down_blocks:
            x = block(x, is_init_image, temporal_chunk)
        x = self.mid_block(x, is_init_image, temporal_chunk)
        return self.conv_out(F.silu(self.conv_norm_out(x)), is_init_image, temporal_chunk)


class CausalVaeDecoder(nn.Module):
    """latents [B, latent, T, h, w] (after ``post_quant_conv``) -> pixels [B, 3, 1+8(T-1), 8h, 8w]."""

    def __init__(self, latent_channels: int, out_channels: int, block_out_channels: Sequence[int],
                 layers_per_block: Sequence[int], spatial_up: Sequence[bool], temporal_up: Sequence[bool],
                 groups: int, dropouts: Sequence[float]):
        super().__init__()
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = CausalConv3d(latent_channels, reversed_channels[0], kernel_size=3)
        self.mid_block = CausalMidBlock(reversed_channels[0], groups, dropouts[-1])
        blocks = []
        previous = reversed_channels[0]
        for index, channels in enumerate(reversed_channels):
            blocks.append(UpDecoderBlockCausal3D(previous, channels, layers_per_block[index], groups,
                                                 spatial_up[index], temporal_up[index], dropouts[index]))
            previous = channels
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = norm_or_affine(groups, block_out_channels[0])
        self.conv_out = CausalConv3d(block_out_channels[0], out_channels, kernel_size=3)

    def forward(self, z: torch.Tensor, is_init_image: bool = True, temporal_chunk: bool = False) -> torch.Tensor:
        x = self.conv_in(z, is_init_image, temporal_chunk)
        x = self.mid_block(x, is_init_image, temporal_chunk)
        x = x.to(self.up_blocks[0].resnets[0].conv1.conv.weight.dtype)
        for block in self.up_blocks:
            x = block(x, is_init_image, temporal_chunk)
        return self.conv_out(F.silu(self.conv_norm_out(x)), is_init_image, temporal_chunk)


class DiagonalGaussianDistribution:
    """``mean, logvar = moments.chunk(2, dim=1)``, logvar clamped to [-30, 20]."""

    def __init__(self, moments: torch.Tensor):
        self.moments = moments
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise_device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=noise_device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean


# ---------------------------------------------------------------------------------------------------
# The VAE
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def reset_parameters_inflated(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Re-initialise a causal VAE (or its encoder / decoder part) to train from scratch: an inflated image AE.

    Every causal conv starts as a per-frame 2D conv: only its last temporal tap (the current frame) is
    non-zero, drawn N(0, 1 / fan_in) with fan_in = C_in x k_h x k_w, bias 0; earlier taps start at 0 and
    learn the temporal mixing. Every residual branch (each resnet's second conv, the attention's output
    projection) starts at 0, so each block starts as the identity. PyTorch's default init counts the two
    taps that only ever see the causal zero padding of a first frame in its fan-in and stacks 18 random
    residual branches (tiny config: 16 resnets, 2 attentions): measured with bench/vae_learning_speed.py, the
    tiny VAE then stays at ~10 dB (predicting the mean frame) for 150 steps, against 16.2 dB with this init.
    Loading released weights overwrites all of this.
    """
    for sub in module.modules():
        if isinstance(sub, CausalConv3d):
            weight = sub.conv.weight  # [O, I, k_t, k_h, k_w]
            fan_in = weight.shape[1] * weight.shape[3] * weight.shape[4]
            weight.zero_()
            weight[:, :, -1].copy_(torch.randn(weight[:, :, -1].shape, generator=generator) / math.sqrt(fan_in))
            if sub.conv.bias is not None:
                sub.conv.bias.zero_()
    for sub in module.modules():
        if isinstance(sub, CausalResnetBlock3D):
            sub.conv2.conv.weight.zero_()
        elif isinstance(sub, SpatialSelfAttention):
            sub.to_out[0].weight.zero_()
            sub.to_out[0].bias.zero_()


def split_temporal_windows(x: torch.Tensor, window_size: int) -> list[torch.Tensor]:
    """Reference windowing along time: first ``window_size + 1`` frames, then ``window_size`` each."""
    first = window_size + 1
    chunks = [x[:, :, :first]]
    for start in range(first, x.shape[2], window_size):
        chunks.append(x[:, :, start : start + window_size])
    return chunks


def _blend_rows(above: torch.Tensor, below: torch.Tensor, extent: int) -> torch.Tensor:
    """Linear cross-fade of ``above``'s last ``extent`` rows into ``below``'s first rows."""
    extent = min(above.shape[3], below.shape[3], extent)
    if extent == 0:
        return below
    weight = torch.arange(extent, dtype=below.dtype, device=below.device).div(extent)[:, None]  # [e, 1]
    blended = above[:, :, :, -extent:, :] * (1 - weight) + below[:, :, :, :extent, :] * weight
    return torch.cat([blended, below[:, :, :, extent:, :]], dim=3)


def _blend_columns(left: torch.Tensor, right: torch.Tensor, extent: int) -> torch.Tensor:
    """Linear cross-fade of ``left``'s last ``extent`` columns into ``right``'s first columns."""
    extent = min(left.shape[4], right.shape[4], extent)
    if extent == 0:
        return right
    weight = torch.arange(extent, dtype=right.dtype, device=right.device).div(extent)  # [e]
    blended = left[..., -extent:] * (1 - weight) + right[..., :extent] * weight
    return torch.cat([blended, right[..., extent:]], dim=4)


class CausalVideoVAE(nn.Module):
    """``CausalVideoVAE``: ``encoder``, ``decoder``, ``quant_conv`` (32->32), ``post_quant_conv`` (16->16).

    Constructor keywords are the released ``causal_video_vae/config.json`` keys. As in the reference,
    ``encoder_double_z`` and ``add_post_quant_conv`` do not change the structure (always doubled, the
    post-quant conv always exists) and ``scaling_factor`` is unused (see :mod:`neoc.models.latent_norm`).
    """

    def __init__(
        self,
        *,
        encoder_in_channels: int = 3,
        encoder_out_channels: int = 16,
        encoder_layers_per_block: Sequence[int] = (2, 2, 2, 2),
        encoder_down_block_types: Sequence[str] = (DOWN_BLOCK_TYPE,) * 4,
        encoder_block_out_channels: Sequence[int] = (128, 256, 512, 512),
        encoder_spatial_down_sample: Sequence[bool] = (True, True, True, False),
        encoder_temporal_down_sample: Sequence[bool] = (True, True, True, False),
        encoder_block_dropout: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        encoder_act_fn: str = "silu",
        encoder_norm_num_groups: int = 32,
        encoder_double_z: bool = True,
        encoder_type: str = "causal_vae_conv",
        decoder_in_channels: int = 16,
        decoder_out_channels: int = 3,
        decoder_layers_per_block: Sequence[int] = (3, 3, 3, 3),
        decoder_up_block_types: Sequence[str] = (UP_BLOCK_TYPE,) * 4,
        decoder_block_out_channels: Sequence[int] = (128, 256, 512, 512),
        decoder_spatial_up_sample: Sequence[bool] = (True, True, True, False),
        decoder_temporal_up_sample: Sequence[bool] = (True, True, True, False),
        decoder_block_dropout: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        decoder_act_fn: str = "silu",
        decoder_norm_num_groups: int = 32,
        decoder_type: str = "causal_vae_conv",
        sample_size: int = 256,
        scaling_factor: float = 0.13025,
        add_post_quant_conv: bool = True,
        interpolate: bool = False,
        downsample_scale: int = 8,
        _class_name: str | None = None,
        _diffusers_version: str | None = None,
    ):
        super().__init__()
        for key, value in (("encoder_act_fn", encoder_act_fn), ("decoder_act_fn", decoder_act_fn)):
            if value != "silu":
                raise InputError(f"VAE config key {key}: only 'silu' is supported, got {value!r}")
        for key, value in (("encoder_type", encoder_type), ("decoder_type", decoder_type)):
            if value != "causal_vae_conv":
                raise InputError(f"VAE config key {key}: only 'causal_vae_conv' is supported, got {value!r}")
        if any(t != DOWN_BLOCK_TYPE for t in encoder_down_block_types):
            raise InputError(f"VAE config key encoder_down_block_types: only {DOWN_BLOCK_TYPE} is supported")
        if any(t != UP_BLOCK_TYPE for t in decoder_up_block_types):
            raise InputError(f"VAE config key decoder_up_block_types: only {UP_BLOCK_TYPE} is supported")
        if interpolate:
            raise InputError("VAE config key interpolate: true is not implemented (the reference raises too)")
        self.latent_channels = encoder_out_channels
        self.downsample_scale = downsample_scale
        self.temporal_downsample = 2 ** sum(bool(t) for t in encoder_temporal_down_sample)
        self.sample_size = sample_size
        self.encoder = CausalVaeEncoder(
            encoder_in_channels, encoder_out_channels, encoder_block_out_channels, encoder_layers_per_block,
            encoder_spatial_down_sample, encoder_temporal_down_sample, encoder_norm_num_groups, encoder_block_dropout,
        )
        self.decoder = CausalVaeDecoder(
            decoder_in_channels, decoder_out_channels, decoder_block_out_channels, decoder_layers_per_block,
            decoder_spatial_up_sample, decoder_temporal_up_sample, decoder_norm_num_groups, decoder_block_dropout,
        )
        self.quant_conv = CausalConv3d(2 * encoder_out_channels, 2 * encoder_out_channels, kernel_size=1)
        self.post_quant_conv = CausalConv3d(encoder_out_channels, encoder_out_channels, kernel_size=1)
        self.use_tiling = False
        self.tile_overlap_factor = 0.25  # facts §3.5 (1/8 before the "visible tiles" fix)

    @classmethod
    def from_config(cls, config: dict, source_name: str = "config.json") -> "CausalVideoVAE":
        """Build from a released config.json dict; unknown keys are an InputError naming the key."""
        import inspect

        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        for key in config:
            if key not in accepted:
                raise InputError(f"{source_name}: unknown VAE config key {key!r}")
        return cls(**config)

    def enable_tiling(self, use_tiling: bool = True) -> None:
        self.use_tiling = use_tiling

    # -- encode --------------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, temporal_chunk: bool = False, window_size: int = 16,
               tile_sample_min_size: int = 256) -> DiagonalGaussianDistribution:
        """pixels [B, 3, 1+8k, H, W] in [-1, 1] -> posterior over latents [B, 16, 1+k, H/8, W/8]."""
        if self.use_tiling and max(x.shape[-2:]) > tile_sample_min_size:
            moments = self._tiled_encode_moments(x, temporal_chunk, window_size, tile_sample_min_size)
            return DiagonalGaussianDistribution(moments)
        return DiagonalGaussianDistribution(self._encode_moments(x, temporal_chunk, window_size))

    def _encode_moments(self, x: torch.Tensor, temporal_chunk: bool, window_size: int) -> torch.Tensor:
        if not temporal_chunk:
            return self.quant_conv(self.encoder(x))
        if (x.shape[2] - 1) % self.temporal_downsample != 0:
            raise ValueError(f"chunked encode needs 1 + {self.temporal_downsample}k frames, got {x.shape[2]}")
        moments = []
        for index, frames in enumerate(split_temporal_windows(x, window_size)):
            first = index == 0
            h = self.encoder(frames, is_init_image=first, temporal_chunk=True)
            moments.append(self.quant_conv(h, is_init_image=first, temporal_chunk=True))
        return torch.cat(moments, dim=2)

    def _tiled_encode_moments(self, x, temporal_chunk, window_size, tile_sample):
        tile_latent = tile_sample // self.downsample_scale
        stride = int(tile_sample * (1 - self.tile_overlap_factor))
        blend = int(tile_latent * self.tile_overlap_factor)
        keep = tile_latent - blend
        tiles = [
            [self._encode_moments(x[:, :, :, i : i + tile_sample, j : j + tile_sample], temporal_chunk, window_size)
             for j in range(0, x.shape[4], stride)]
            for i in range(0, x.shape[3], stride)
        ]
        return self._stitch(tiles, blend, keep)

    # -- decode --------------------------------------------------------------------------------------

    def decode(self, z: torch.Tensor, temporal_chunk: bool = False, window_size: int = 2,
               tile_sample_min_size: int = 256) -> torch.Tensor:
        """latents [B, 16, T, h, w] (VAE scale, not normalised) -> pixels [B, 3, 1+8(T-1), 8h, 8w].

        ``temporal_chunk`` decodes ``window_size`` latents at a time (first window ``window_size+1``)
        with cached front features: equal to the whole-clip decode up to float error. With
        ``enable_tiling()`` inputs larger than ``tile_sample_min_size/8`` latents are decoded in tiles
        overlapping by 1/4 and blended linearly (an approximation, as in the reference).
        """
        tile_latent = tile_sample_min_size // self.downsample_scale
        if self.use_tiling and max(z.shape[-2:]) > tile_latent:
            return self._tiled_decode(z, temporal_chunk, window_size, tile_sample_min_size)
        return self._decode_full(z, temporal_chunk, window_size)

    def _decode_full(self, z: torch.Tensor, temporal_chunk: bool, window_size: int) -> torch.Tensor:
        if not temporal_chunk:
            return self.decoder(self.post_quant_conv(z))
        frames = []
        for index, latents in enumerate(split_temporal_windows(z, window_size)):
            first = index == 0
            h = self.post_quant_conv(latents, is_init_image=first, temporal_chunk=True)
            frames.append(self.decoder(h, is_init_image=first, temporal_chunk=True))
        return torch.cat(frames, dim=2)

    def _tiled_decode(self, z, temporal_chunk, window_size, tile_sample):
        tile_latent = tile_sample // self.downsample_scale
        stride = int(tile_latent * (1 - self.tile_overlap_factor))
        blend = int(tile_sample * self.tile_overlap_factor)
        keep = tile_sample - blend
        tiles = [
            [self._decode_full(z[:, :, :, i : i + tile_latent, j : j + tile_latent], temporal_chunk, window_size)
             for j in range(0, z.shape[4], stride)]
            for i in range(0, z.shape[3], stride)
        ]
        return self._stitch(tiles, blend, keep)

    @staticmethod
    def _stitch(tiles: list[list[torch.Tensor]], blend: int, keep: int) -> torch.Tensor:
        """Blend each tile with the one above and to its left, crop to ``keep`` and concatenate."""
        rows = []
        for i, row in enumerate(tiles):
            blended_row = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = _blend_rows(tiles[i - 1][j], tile, blend)
                if j > 0:
                    tile = _blend_columns(row[j - 1], tile, blend)
                row[j] = tile  # the reference blends in place: neighbours see blended tiles
                blended_row.append(tile[:, :, :, :keep, :keep])
            rows.append(torch.cat(blended_row, dim=4))
        return torch.cat(rows, dim=3)

    def forward(self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None):
        """Autoencode: returns ``(posterior, reconstruction)`` like the reference's non-parallel path."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return posterior, self.decode(z)
