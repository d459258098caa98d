"""Training data of the step-distillation methods: text conditions, clean latents and per-step batches.

Two latent sources (``DistillData.source``):

* ``toyworld``: toy-world *train* clips rendered at the pipeline's resolution and encoded with the pipeline's own
  VAE encoder (needs a ``vae_encoder`` component and a toy-world-sized spec: ``builtin:pyramid-tiny`` and what the
  recipe derives from it). These are ground-truth videos, as in the paper's Cauchy teacher loss on real latents.
* ``teacher``: the teacher's own samples (the paper generates synthetic videos with the base model so the student
  never leaves the teacher's support); works for any pipeline, including the toy test pipelines.

A batch trains all pyramid stages of one latent frame ("unit"), like :func:`neoc.train.flow_matching.make_flow_batch`:
per stage the history clips (clean history corrupted with ``sigma ~ U[0, 1/3]``), the stage's start and end points
(paper eqs. 17-18), the clean target ``Down(z, 2^i)``, the student's local sigma (from the student schedule's grid),
and the noises / local levels of the renoised student sample for the fake score and for the DMD term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from neoc.distill.pyramid import TextRows, encode_prompts, student_local_sigmas
from neoc.ir import ops
from neoc.ir.pipeline import history_clips
from neoc.models import scheduler as sched
from neoc.train import flow_matching as fm

#: the four fixed local noise levels tau of the student (DMD) updates: "four evenly selected values"
DMD_TAU_LEVELS = (0.2, 0.4, 0.6, 0.8)


@dataclass
class DistillData:
    latents: torch.Tensor          # [N, C, T, H, W] normalised clean latents
    cond: TextRows                 # [N] conditional text rows (caption of each latent)
    uncond: TextRows               # [1] the negative prompt
    prompts: list[str]
    source: str


def toy_prompts(count: int, seed: int, split: str = "train") -> list[tuple[str, object]]:
    from neoc.data.toyworld import ToyWorldDataset

    data = ToyWorldDataset(split, count, seed)
    return [tuple(reversed(data.scene_and_caption(i))) for i in range(count)]


def toyworld_available(pipe) -> str | None:
    """None when toy-world latents can be made for ``pipe``, else why not."""
    if not pipe.has("vae_encoder"):
        return "the pipeline has no vae_encoder"
    if pipe.spec.height != pipe.spec.width:
        return "the toy world renders square frames"
    return None


@torch.no_grad()
def toyworld_data(pipe, count: int, seed: int, progress: Callable = lambda it, desc: it) -> DistillData:
    """Encode ``count`` toy-world train clips with the pipeline's VAE encoder."""
    from neoc.data.toyworld import ToyWorldDataset

    encoder = pipe.component("vae_encoder").eval()
    data = ToyWorldDataset("train", count, seed, num_frames=pipe.spec.frames, frame_size=pipe.spec.height)
    latents, prompts = [], []
    for i in progress(range(count), "distill data (toy world)"):
        video, caption, _ = data[i]
        latents.append(encoder(video[None]).float())
        prompts.append(caption)
    cond, uncond = encode_prompts(pipe, prompts)
    return DistillData(torch.cat(latents), cond, uncond, prompts, "toyworld")


@torch.no_grad()
def teacher_data(pipe, count: int, seed: int, schedule=None,
                 progress: Callable = lambda it, desc: it, split: str = "train") -> DistillData:
    """``count`` teacher samples (latents) for toy-world ``split`` captions, with the pipeline's schedule."""
    from neoc.distill.sampling import sample_latents

    prompts = [p for p, _ in toy_prompts(count, seed, split)]
    cond, uncond = encode_prompts(pipe, prompts)
    latents = []
    for i in progress(range(count), "distill data (teacher samples)"):
        latents.append(sample_latents(pipe, cond.rows([i]), uncond, pipe.draw_noise(seed * 100_003 + i), schedule))
    return DistillData(torch.cat(latents), cond, uncond, prompts, "teacher")


# ---- batches ---------------------------------------------------------------------------------------------------
@dataclass
class StageBatch:
    """All stages of one unit for a batch of B latents (lists are indexed by stage)."""

    unit: int
    student_step: bool
    text: TextRows                  # [B] conditional rows
    uncond: TextRows                # [1]
    clips: list[list[torch.Tensor]]
    start: list[torch.Tensor]
    end: list[torch.Tensor]
    clean: list[torch.Tensor]       # Down(z, 2^i): the stage's clean latent
    r_student: list[torch.Tensor]   # [B] local sigma of the student input
    r_next: list[torch.Tensor]      # [B] the next local sigma of the student grid (progressive target)
    i_student: list[torch.Tensor]   # [B] position of r_student on the student grid (student rollouts)
    tau_fake: list[torch.Tensor]    # [B] ~ U(0, 1) (the 1000-point training grid)
    noise_fake: list[torch.Tensor]
    tau_dmd: list[torch.Tensor]     # [B] one of DMD_TAU_LEVELS
    noise_dmd: list[torch.Tensor]
    noise_jump: list[torch.Tensor | None] | None = None  # block noise entering stage i > 0 (student rollouts)


def pick_unit(latent_frames: int, generator: torch.Generator, first_frame_prob: float) -> int:
    if latent_frames == 1 or float(torch.rand((), generator=generator)) < first_frame_prob:
        return 0
    return int(torch.randint(1, latent_frames, (1,), generator=generator))


def make_batch(data: DistillData, generator: torch.Generator, batch_size: int, student_steps: Sequence[int],
               student_step: bool, num_stages: int = 3, gamma: float = 1.0 / 3.0,
               first_frame_prob: float = 0.3, corrupt_ratio: float = fm.CORRUPT_RATIO,
               tau_levels: Sequence[float] = DMD_TAU_LEVELS, jump_noise: bool = False) -> StageBatch:
    """One unit's stages for a batch; ``jump_noise`` adds the sampler's stage-jump noise (drawn last, so the rest
    of the batch is the same with or without it) for objectives that roll the student out."""
    specs = sched.stage_specs(num_stages, gamma)
    index = torch.randint(0, data.latents.shape[0], (batch_size,), generator=generator)
    latents = data.latents[index]
    unit = pick_unit(latents.shape[2], generator, first_frame_prob)
    current = latents[:, :, unit:unit + 1].float()
    clean = fm.clean_pyramid(current, num_stages)
    noisy = fm.noise_pyramid(torch.randn(current.shape, generator=generator), num_stages)
    fake_noise = fm.noise_pyramid(torch.randn(current.shape, generator=generator), num_stages)
    dmd_noise = fm.noise_pyramid(torch.randn(current.shape, generator=generator), num_stages)
    history = []
    if unit > 0:
        level_clean = latents[:, :, :unit].float()
        for level in range(num_stages):
            if level > 0:
                level_clean = ops.down2(level_clean)
            history.append(fm.corrupt_history(level_clean, generator, corrupt_ratio))
    out = dict(clips=[], start=[], end=[], clean=[], r_student=[], r_next=[], i_student=[], tau_fake=[], noise_fake=[],
               tau_dmd=[], noise_dmd=[])
    levels = torch.tensor(list(tau_levels), dtype=torch.float32)
    for stage in range(num_stages):
        start, end = fm.stage_end_points(clean, noisy, stage, specs)
        grid = sched.local_sigmas(int(student_steps[stage]))  # n points + trailing 0
        pick = torch.randint(0, int(student_steps[stage]), (batch_size,), generator=generator)
        out["clips"].append([history[level][:, :, a:b] for level, a, b in history_clips(unit, stage, num_stages)])
        out["start"].append(start)
        out["end"].append(end)
        out["clean"].append(clean[stage])
        out["r_student"].append(torch.tensor(grid, dtype=torch.float32)[pick])
        out["r_next"].append(torch.tensor(grid, dtype=torch.float32)[pick + 1])
        out["i_student"].append(pick)
        grid_index = torch.randint(0, fm.TRAIN_GRID, (batch_size,), generator=generator)
        out["tau_fake"].append((1.0 - grid_index.float() / fm.TRAIN_GRID))
        out["noise_fake"].append(fake_noise[stage])
        out["tau_dmd"].append(levels[torch.randint(0, len(levels), (batch_size,), generator=generator)])
        out["noise_dmd"].append(dmd_noise[stage])
    if jump_noise:
        out["noise_jump"] = [None] + [sched.block_noise(tuple(out["start"][stage].shape), generator, gamma)
                                      for stage in range(1, num_stages)]
    return StageBatch(unit=unit, student_step=student_step, text=data.cond.rows(index), uncond=data.uncond, **out)


__all__ = ["DMD_TAU_LEVELS", "DistillData", "StageBatch", "make_batch", "teacher_data", "toyworld_data",
           "toy_prompts", "toyworld_available", "student_local_sigmas"]
