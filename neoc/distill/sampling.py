"""A Python mirror of the unrolled graph sampler (:func:`neoc.ir.pipeline.emit_graph`), returning latents.

Same noise inputs (:meth:`Pipeline.draw_noise`), same stage jumps, history pyramid, CFG and Euler steps, so
``decode(sample_latents(...))`` equals ``pipeline.run_graph(...)`` (a unit test checks it). It exists for what
the static graph cannot do: hand back latents (teacher data for distillation) and start the video from a given
first latent frame (the first-frame generator of Neodragon §4: unit 0 is taken, not generated).
"""

from __future__ import annotations

from typing import Callable

import torch

from neoc.distill.pyramid import TextRows, encode_prompts, predict, predict_cfg
from neoc.ir import ops
from neoc.ir.pipeline import history_clips
from neoc.ir.schedule import Schedule
from neoc.models import scheduler as sched


@torch.no_grad()
def sample_latents(pipe, cond: TextRows, uncond: TextRows, noise: dict[str, torch.Tensor],
                   schedule: Schedule | None = None, denoiser=None,
                   first_latent: torch.Tensor | None = None, num_units: int | None = None,
                   history: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Normalised latents [1, C, T, H, W] for one prompt (``cond``/``uncond`` one row each); ``num_units`` stops
    after that many latent frames (1: the first frame only). ``history(unit, generated)`` may replace the
    full-resolution history [1, C, unit, H, W] the unit is conditioned on (diagnostics: ground-truth history,
    noised history; ``bench/history_conditioning.py``); the returned latents are always the generated ones."""
    schedule = schedule or pipe.schedule
    den = denoiser if denoiser is not None else pipe.component("denoiser")
    den.eval()
    S, T = schedule.num_stages, pipe.spec.latent_frames
    if num_units is not None:
        T = min(T, int(num_units))
    stages = sched.stage_specs(S, schedule.gamma)
    generated = None
    for unit in range(T):
        if unit == 0 and first_latent is not None:
            generated = first_latent.float()
            continue
        steps = schedule.steps_for_unit(unit)
        scale = schedule.guidance_for_unit(unit) if schedule.uses_cfg(unit) else 1.0
        levels = []
        if generated is not None:
            levels = [generated if history is None else history(unit, generated)]
            for _ in range(S - 1):
                levels.append(ops.down2(levels[-1]))
        x = ops.frame(noise["noise"], unit)
        for stage in range(S):
            if stage > 0:
                alpha, beta = sched.jump_coefficients(stages[stage], schedule.gamma)
                x = ops.stage_jump(x, ops.frame(noise[f"jump_noise_{stage}"], unit), alpha, beta)
            clips = [ops.frames(levels[level], a, b) for level, a, b in history_clips(unit, stage, S)]
            timesteps = sched.stage_timesteps(stages[stage], steps[stage])
            sigmas = sched.local_sigmas(steps[stage])
            for step in range(steps[stage]):
                t = torch.full((1,), float(timesteps[step]), dtype=torch.float32)
                v = predict_cfg(den, clips, x, t, cond, uncond, scale)
                x = ops.euler_step(x, v, float(sigmas[step]), float(sigmas[step + 1]))
        generated = x if generated is None else ops.cat_frames(generated, x)
    return generated


@torch.no_grad()
def generate_latents(pipe, prompt: str, seed: int, schedule: Schedule | None = None, denoiser=None,
                     first_latent: torch.Tensor | None = None) -> torch.Tensor:
    cond, uncond = encode_prompts(pipe, [prompt])
    return sample_latents(pipe, cond, uncond, pipe.draw_noise(seed), schedule, denoiser, first_latent)


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, upsample: bool = True) -> torch.Tensor:
    """Latents -> video [B, 3, F, H, W] in [-1, 1] through the pipeline's decoder (and upsampler if any)."""
    decoder = pipe.component("vae_decoder").eval()
    video = decoder(latents)
    if upsample and pipe.has("upsampler"):
        video = pipe.component("upsampler").eval()(video)
    return video
