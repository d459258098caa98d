"""Causal-VAE autoencoding objective (used by ``neoc.zoo.build_tiny`` to train the tiny VAE).

Pyramid-Flow's VAE was trained with L1 + LPIPS + KL + GAN losses (facts §3); the toy world needs far less:
``loss = |x - x_hat|_1 + MSE(x, x_hat) + kl_weight * KL(q(z|x) || N(0, I))``, with ``z`` sampled from the
posterior (the noise comes in the batch, so a step is a pure function of its batch).

Two optional terms serve the toy world, whose objects cover a few percent of a frame and so hardly move a
plain pixel loss (a VAE trained with it alone reconstructs the textured background and loses the object's
colour and shape): a per-pixel weight map in the batch (``"pixel_weight"`` [B, 1, F, H, W], e.g.
``1 + w * object mask``; the weighted L1 and MSE are divided by the mean weight) and ``lowres_weight * MSE``
between 4x4-average-pooled frames (colour and position at roughly the latent resolution). A third,
``temporal_weight * MSE`` between the frame-to-frame differences of the reconstruction and of the target, asks
for the target's motion and nothing else between frames: it penalises flicker (frames of one latent group that
differ where the video does not) directly.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from neoc.models.causal_vae import DiagonalGaussianDistribution
from neoc.models.latent_norm import VAELatentDecoder, VAELatentEncoder


def temporal_difference_mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the frame-to-frame differences of two videos [B, C, F, H, W] (F >= 2): zero for a
    reconstruction whose frames change exactly as the target's do, whatever its per-frame error."""
    return F.mse_loss(recon.diff(dim=2), target.diff(dim=2))


def add_temporal_term(loss: torch.Tensor, recon: torch.Tensor, target: torch.Tensor, weight: float,
                      metrics: dict, name: str = "temporal_mse") -> torch.Tensor:
    """``loss + weight * temporal_difference_mse`` (recorded as ``metrics[name]``) when ``weight > 0`` and the
    videos have more than one frame; else ``loss`` unchanged."""
    if weight <= 0 or recon.shape[2] < 2:
        return loss
    temporal = temporal_difference_mse(recon, target)
    metrics[name] = temporal.detach()
    return loss + weight * temporal


class VAEReconstructionObjective(nn.Module):
    """forward({"frames" [B,3,1+8k,H,W] in [-1,1], "latent_noise" [B,16,1+k,H/8,W/8]}) -> (loss, metrics)."""

    def __init__(self, encoder: VAELatentEncoder, decoder: VAELatentDecoder, kl_weight: float = 1e-4,
                 freeze_encoder: bool = False, lowres_weight: float = 0.0, temporal_weight: float = 0.0):
        super().__init__()
        self.lowres_weight = lowres_weight
        self.temporal_weight = temporal_weight
        self.encoder = encoder  # .encoder, .quant_conv
        self.decoder = decoder  # .post_quant_conv, .decoder
        self.kl_weight = kl_weight
        self.freeze_encoder = freeze_encoder  # decoder-only refinement: the latent space stays fixed
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    def reconstruct(self, frames: torch.Tensor, latent_noise: torch.Tensor | None = None):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            moments = self.encoder.quant_conv(self.encoder.encoder(frames))  # [B, 32, T', h, w]
        posterior = DiagonalGaussianDistribution(moments.float())
        z = posterior.mean if latent_noise is None else posterior.mean + posterior.std * latent_noise
        recon = self.decoder.decoder(self.decoder.post_quant_conv(z.to(moments.dtype)))  # [B, 3, F, H, W]
        return recon, posterior

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        frames = batch["frames"]
        recon, posterior = self.reconstruct(frames, batch.get("latent_noise"))
        recon, target = recon.float(), frames.float()
        error = recon - target
        weight = batch.get("pixel_weight")
        if weight is None:
            l1, mse = error.abs().mean(), error.pow(2).mean()
        else:
            weight = weight.float().expand_as(error)  # broadcast over the colour channels
            total = weight.sum()
            l1 = (weight * error.abs()).sum() / total
            mse = (weight * error.pow(2)).sum() / total
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        loss = l1 + mse + (0.0 if self.freeze_encoder else self.kl_weight) * kl
        metrics = {"l1": l1.detach(), "mse": mse.detach(), "kl": kl.detach()}
        if self.lowres_weight > 0:
            pool = (1, 4, 4)
            lowres = F.mse_loss(F.avg_pool3d(recon, pool), F.avg_pool3d(target, pool))
            loss = loss + self.lowres_weight * lowres
            metrics["lowres_mse"] = lowres.detach()
        return add_temporal_term(loss, recon, target, self.temporal_weight, metrics), metrics


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1, 1] (peak-to-peak 2), after clamping ``test`` to that range."""
    mse = F.mse_loss(test.clamp(-1, 1).float(), reference.float()).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


@torch.no_grad()
def reconstruction_psnr(encoder: VAELatentEncoder, decoder: VAELatentDecoder, videos: Iterable[torch.Tensor]) -> float:
    """Mean PSNR (dB) of encode(mode) -> decode round trips of videos [3, F, H, W] through the pipeline wrappers."""
    values = [psnr(video[None], decoder(encoder(video[None]))) for video in videos]
    return sum(values) / max(1, len(values))
