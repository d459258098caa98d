"""Latent normalisation between the causal VAE and the denoiser, and the pipeline's VAE wrappers.

Reference: reference/pyramid-flow-facts.md §3.4. The first latent frame (the image) uses image
statistics, every later frame video statistics:

    z' = (z - shift) * scale            (normalise, after encoding)
    z  = z' / scale + shift             (denormalise, before decoding)

SD3 variant: image shift 0.1490, scale 1/1.8415; video shift -0.2343, scale 1/3.0986 (miniFLUX uses
image shift -0.04, scale 1/1.8726). A one-frame latent uses the image constants only.

:class:`VAELatentDecoder` / :class:`VAELatentEncoder` are what the pipeline IR calls as its
``vae_decoder`` / ``vae_encoder`` components: they work on *normalised* latents.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from neoc.models.causal_vae import DiagonalGaussianDistribution, split_temporal_windows

SD3_IMAGE_SHIFT = 0.1490
SD3_IMAGE_SCALE = 1 / 1.8415
MINIFLUX_IMAGE_SHIFT = -0.04
MINIFLUX_IMAGE_SCALE = 1 / 1.8726
VIDEO_SHIFT = -0.2343
VIDEO_SCALE = 1 / 3.0986


class LatentNorm(nn.Module):
    """Per-frame affine map between VAE latents and the denoiser's unit-variance latents.

    Holds plain floats (no buffers, nothing in a state dict), so it traces to constants.
    """

    def __init__(
        self,
        image_shift: float = SD3_IMAGE_SHIFT,
        image_scale: float = SD3_IMAGE_SCALE,
        video_shift: float = VIDEO_SHIFT,
        video_scale: float = VIDEO_SCALE,
    ):
        super().__init__()
        self.image_shift = float(image_shift)
        self.image_scale = float(image_scale)
        self.video_shift = float(video_shift)
        self.video_scale = float(video_scale)

    @classmethod
    def sd3(cls) -> "LatentNorm":
        return cls(SD3_IMAGE_SHIFT, SD3_IMAGE_SCALE, VIDEO_SHIFT, VIDEO_SCALE)

    @classmethod
    def miniflux(cls) -> "LatentNorm":
        return cls(MINIFLUX_IMAGE_SHIFT, MINIFLUX_IMAGE_SCALE, VIDEO_SHIFT, VIDEO_SCALE)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents [B, C, T, h, w] -> normalised latents (frame 0 image stats, frames 1.. video stats)."""
        first = (z[:, :, :1] - self.image_shift) * self.image_scale
        rest = (z[:, :, 1:] - self.video_shift) * self.video_scale
        return torch.cat([first, rest], dim=2)

    def denormalize(self, z_n: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, T, h, w] -> VAE latents (inverse of :meth:`normalize`)."""
        first = z_n[:, :, :1] / self.image_scale + self.image_shift
        rest = z_n[:, :, 1:] / self.video_scale + self.video_shift
        return torch.cat([first, rest], dim=2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.normalize(z)


def _vae_parts(vae_or_parts: Any, names: tuple[str, str]) -> tuple[nn.Module, nn.Module]:
    """Accept a :class:`CausalVideoVAE`, a mapping or an object with both attributes, or a 2-tuple."""
    if isinstance(vae_or_parts, (tuple, list)):
        if len(vae_or_parts) != 2:
            raise ValueError(f"expected ({names[0]}, {names[1]}), got {len(vae_or_parts)} parts")
        return vae_or_parts[0], vae_or_parts[1]
    if isinstance(vae_or_parts, dict):
        return vae_or_parts[names[0]], vae_or_parts[names[1]]
    return getattr(vae_or_parts, names[0]), getattr(vae_or_parts, names[1])


class VAELatentDecoder(nn.Module):
    """Normalised latents [B, 16, T, h, w] -> frames [B, 3, 1+8(T-1), 8h, 8w], nominally in [-1, 1].

    denormalise -> ``post_quant_conv`` -> causal decoder. The output is *not* clamped (the reference
    clamps only when converting to uint8). ``vae_or_parts``: a :class:`CausalVideoVAE` or
    ``(post_quant_conv, decoder)``. Submodules are shared with the VAE, not copied; the state dict
    keys are ``post_quant_conv.*`` and ``decoder.*`` (released names minus nothing).
    ``temporal_chunk``/``window_size`` select the reference's windowed decode (same result).
    """

    def __init__(self, vae_or_parts: Any, norm: LatentNorm | None = None,
                 temporal_chunk: bool = False, window_size: int = 2):
        super().__init__()
        self.post_quant_conv, self.decoder = _vae_parts(vae_or_parts, ("post_quant_conv", "decoder"))
        self.norm = norm if norm is not None else LatentNorm.sd3()
        self.temporal_chunk = temporal_chunk
        self.window_size = window_size

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        z = self.norm.denormalize(latents)
        if not self.temporal_chunk:
            return self.decoder(self.post_quant_conv(z))
        frames = []
        for index, chunk in enumerate(split_temporal_windows(z, self.window_size)):
            first = index == 0
            h = self.post_quant_conv(chunk, is_init_image=first, temporal_chunk=True)
            frames.append(self.decoder(h, is_init_image=first, temporal_chunk=True))
        return torch.cat(frames, dim=2)


class VAELatentEncoder(nn.Module):
    """Frames [B, 3, 1+8k, H, W] in [-1, 1] -> normalised latents [B, 16, 1+k, H/8, W/8].

    encoder -> ``quant_conv`` -> diagonal Gaussian -> ``mode()`` (default) or ``sample(generator)``
    (what i2v uses, facts §3.4) -> normalise. ``vae_or_parts``: a :class:`CausalVideoVAE` or
    ``(encoder, quant_conv)``.
    """

    def __init__(self, vae_or_parts: Any, norm: LatentNorm | None = None, sample_mode: str = "mode"):
        super().__init__()
        if sample_mode not in ("mode", "sample"):
            raise ValueError(f"sample_mode must be 'mode' or 'sample', got {sample_mode!r}")
        self.encoder, self.quant_conv = _vae_parts(vae_or_parts, ("encoder", "quant_conv"))
        self.norm = norm if norm is not None else LatentNorm.sd3()
        self.sample_mode = sample_mode

    def posterior(self, frames: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(frames)))

    def forward(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        posterior = self.posterior(frames)
        z = posterior.sample(generator) if self.sample_mode == "sample" else posterior.mode()
        return self.norm.normalize(z)


__all__ = [
    "LatentNorm",
    "VAELatentDecoder",
    "VAELatentEncoder",
    "SD3_IMAGE_SHIFT",
    "SD3_IMAGE_SCALE",
    "VIDEO_SHIFT",
    "VIDEO_SCALE",
]
