"""End-to-end generation as in Neodragon §4: first-frame generator -> (distilled) pyramidal denoiser for the
remaining latent frames -> VAE decoder -> QuickSRNet 2x.

The unrolled graph (:mod:`neoc.ir.pipeline`) always generates latent frame 0 itself; this driver runs the same
sampler (:func:`neoc.distill.sampling.sample_latents`, equal to the graph by test) with frame 0 taken from the
pipeline's ``first_frame`` component when it has one.
"""

from __future__ import annotations

import time

import torch

from neoc.distill.pyramid import encode_prompts
from neoc.distill.sampling import decode, sample_latents


@torch.no_grad()
def generate(pipe, prompt: str, seed: int = 0, use_first_frame: bool = True, upsample: bool = True,
             timings: dict | None = None) -> torch.Tensor:
    """One video [1, 3, F, H', W'] in [-1, 1] (H' = 2H with a 2x upsampler)."""
    for m in pipe.components.values():
        m.eval()
    t0 = time.perf_counter()
    cond, uncond = encode_prompts(pipe, [prompt])
    noise = pipe.draw_noise(seed)
    first = None
    t1 = time.perf_counter()
    if use_first_frame and pipe.has("first_frame"):
        first = pipe.component("first_frame").first_latent(pipe, prompt, cond, uncond, noise, seed)
    t2 = time.perf_counter()
    latents = sample_latents(pipe, cond, uncond, noise, first_latent=first)
    t3 = time.perf_counter()
    video = decode(pipe, latents, upsample=False)
    t4 = time.perf_counter()
    if upsample and pipe.has("upsampler"):
        video = pipe.component("upsampler")(video)
    t5 = time.perf_counter()
    if timings is not None:
        for key, value in (("text", t1 - t0), ("first_frame", t2 - t1), ("denoise", t3 - t2), ("decode", t4 - t3),
                           ("upsample", t5 - t4)):
            timings[key] = timings.get(key, 0.0) + value
    return video.clamp(-1, 1)
