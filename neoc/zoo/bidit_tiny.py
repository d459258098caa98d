"""``builtin:bidit-tiny``: a non-pyramidal, bidirectional video DiT pipeline (Wan / LTX-style) at a tiny size.

Built from neoc components: the trained text side (tiny T5) and causal VAE of ``builtin:pyramid-tiny``, a fresh
``context_embedder`` (Linear, random init) and a randomly initialised :class:`BidirectionalVideoDiT` that denoises
all 7 latent frames together in one stage (schedule ``temporal: joint``, 20 steps, CFG 5 -> NFE 40). No trained
denoiser weights exist, so its videos are noise-like and no quality is claimed for it; it serves the example
``examples/bidirectional-dit/`` (which passes apply to a non-pyramidal family, and why the others refuse).
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from neoc.ir.pipeline import Pipeline
from neoc.ir.schedule import Schedule
from neoc.models.bidirectional_dit import BidirectionalVideoDiT

SOURCE = "builtin:bidit-tiny"
DIT_CONFIG = {"in_channels": 16, "dim": 128, "heads": 4, "num_layers": 4, "context_dim": 128, "patch_size": 2}


def joint_schedule(steps: int = 20, guidance: float = 5.0) -> Schedule:
    return Schedule(num_stages=1, first_frame_steps=(steps,), video_steps=(steps,), guidance_scale=guidance,
                    video_guidance_scale=guidance, label="joint", temporal="joint")


def build_bidit_tiny(device: str = "cpu", random_init: bool = False, seed: int = 0) -> Pipeline:
    from neoc.zoo.builtin import build_tiny

    base = build_tiny(device=device, random_init=random_init)
    torch.manual_seed(seed)
    with torch.device("meta" if device == "meta" else "cpu"):
        denoiser = BidirectionalVideoDiT(**DIT_CONFIG)
        context_embedder = nn.Linear(base.component("text_encoder").hidden_size, DIT_CONFIG["context_dim"])
    components = {"text_encoder": base.component("text_encoder"), "context_embedder": context_embedder,
                  "vae_encoder": base.component("vae_encoder"), "denoiser": denoiser,
                  "vae_decoder": base.component("vae_decoder")}
    spec = attrs.evolve(base.spec, name="bidit-tiny")
    pipe = Pipeline(spec, joint_schedule(), components, prompt_encoder=base.prompt_encoder,
                    source=f"{SOURCE} (random-init denoiser)")
    pipe.info["note"] = ("text encoder and VAE: builtin:pyramid-tiny's trained weights; context embedder and "
                         "denoiser: random init (no quality is claimed)")
    return pipe
