"""Rebuild the shipped ``builtin:pyramid-tiny`` weights from scratch, reproducibly (seeded).

    python -m neoc.zoo.build_tiny [--fast] [--out out/build-tiny] [--procs 2] [--set KEY=VALUE ...] [--ship]

Stages (each resumable: a finished stage is skipped, an interrupted training resumes from its checkpoint):

1. ``vae``      train the tiny causal VAE (encoder + decoder) on toy-world clips and real clip windows
               (random 17-frame 64x64 clips and single 64x64 frames; L1 + MSE + small KL on the posterior mode,
               object pixels weighted x21), from the inflated init (``reset_parameters_inflated``: per-frame 2D
               convs, identity residual blocks), bf16 autocast, DDP.
   (``vae2`` refinement on toy clips with a cosine-annealed LR; opt-in ``vae3``, see stage_vae3)
2. ``encode``   encode toy-world training videos (full 49 frames -> raw latents [16, 7, 16, 16]) and, much cheaper,
               first frames of many more scenes (a causal VAE encodes frame 0 on its own -> [16, 1, 16, 16]).
3. ``measure``  latent normalisation constants (first latent frame vs later frames: shift = mean, scale = 1/std)
               from the encoded training set; writes the normalised latent set.
4. ``denoiser`` train denoiser + context_embedder + T5 + CLIP-L/G jointly with pyramidal flow matching
               (neoc.train.flow_matching) on the normalised latents, DDP over ``--procs``; EMA weights ship.
5. ``decoder``  refine the VAE decoder with the encoder frozen (the latent space, hence the denoiser, is unchanged),
               with a temporal term (frame-difference MSE) against flicker between the frames of a latent group.
6. ``psnr``     reconstruction PSNR of held-out toy videos and of the held-out real clip (49 frames, 64x64).
7. ``taehv``    pretrain a TAEHV-family decoder on a sibling latent space (the stage-1 VAE's), by running the
               ``swap-decoder`` pass on that VAE: shipped as ``pyramid-tiny-taehv.safetensors``, the start of the
               recipe's ``swap-decoder`` (``init: builtin``), as the paper starts from the public TAEHV checkpoint.
8. ``cfg``      pick the first-frame / video CFG scales by a small sweep on held-out prompts with the quality
               instrument (neoc.eval.quality), if its probe weights exist (else keep 7 / 5).
9. ``write``    fp16 role-prefixed weights + ``pyramid-tiny.json`` (latent_norm, guidance, training record) into
               ``OUT/weights``, or with ``--ship`` into the package (``neoc/zoo/weights``).

Caches, checkpoints and TensorBoard logs live under ``--out`` (gitignored ``out/`` by default).
``--fast`` runs every stage with a handful of steps (a smoke test of the whole build, a few minutes).

Reproducibility: every random draw comes from seeds fixed here and from per-step generators
(``neoc.train.loop.step_seed``), so the same command with the same ``--procs`` (the data stream is per rank)
gives the same weights on the same software; a run resumed from its checkpoints gives bit-identical weights.
Training settings use constant learning rates with EMA (denoiser, decoder refinement), so raising their step
counts and re-running the command continues the earlier run exactly: ``--set den_steps=7900`` with the
denoiser and cfg stages' ``.done.json`` markers removed continues a 2,400-step denoiser to 7,900 steps
(``docs/tiny-denoiser-notes.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from neoc.errors import InputError
from neoc.zoo.builtin import TINY_SIZE

DEFAULT_OUT = Path("out/build-tiny")
SEED = 0

FULL = {
    "vae_steps": 800, "vae_batch": 2, "vae_frames": 17, "vae_crop": 64, "vae_image_batch": 6, "vae_image_crop": 64,
    "vae_lr": 8e-4, "vae_image_prob": 0.25, "vae_real_prob": 0.25, "vae_kl_weight": 1e-4,
    "vae_init": "inflated", "vae_fg_weight": 20.0, "vae_noise_until": 0, "vae_noise_off_at": 0,
    "vae2_steps": 400, "vae2_schedule_steps": 400, "vae2_lr": 1e-3,
    "vae2_batch": 4, "vae2_real_prob": 0.05, "vae2_image_prob": 0.05,
    "vae3_steps": 400, "vae3_schedule_steps": 400, "vae3_lr": 5e-4, "vae3_batch": 4, "vae3_frames": 17,
    "vae3_real_prob": 0.05, "vae3_image_prob": 0.1, "vae3_fg_weight": 20.0, "vae3_lowres_weight": 4.0,
    "encode_videos": 800, "encode_images": 3200, "encode_dtype": "bf16",
    "norm_videos": 400,
    "psnr_toy_videos": 8, "psnr_real_windows": 2,
    "dec_steps": 250, "dec_lr": 3e-4, "dec_ema": 0.98, "dec_temporal_weight": 10.0, "dec_image_prob": 0.0,
    "dec_frames": 49, "dec_batch": 2,
    "den_steps": 2400, "den_batch": 16, "den_lr": 5e-4, "den_warmup": 40, "den_ema": 0.99, "den_first_frame_prob": 0.35,
    "den_checkpoint_every": 25, "den_prefetch": 0,
    "den_t_sampling": "uniform", "den_logit_mean": 0.0, "den_logit_std": 1.0, "den_init": "dit",
    "den_fg_weight": 0.0, "den_schedule": "constant", "den_min_lr_ratio": 0.1,
    "cfg_grid": [[2.0, 1.5], [3.0, 2.0], [5.0, 3.0], [7.0, 5.0]], "cfg_prompts": 8,
    "taehv_steps": 3000, "taehv_lr": 1e-3, "taehv_batch": 2, "taehv_pool": 512, "taehv_warmup": 100,
}
FAST = {
    **FULL,
    "vae_steps": 3, "vae2_steps": 2, "vae3_steps": 2, "vae3_batch": 1, "vae_batch": 1, "vae_image_batch": 1, "vae_noise_until": 1, "vae_noise_off_at": 2,
    "encode_videos": 6, "encode_images": 16, "norm_videos": 6,
    "psnr_toy_videos": 1, "psnr_real_windows": 1, "dec_steps": 2, "den_steps": 4, "den_batch": 2, "den_warmup": 2,
    "cfg_grid": [[7.0, 5.0]], "cfg_prompts": 1, "taehv_steps": 2, "taehv_pool": 4, "taehv_warmup": 1,
}
STAGES = ("vae", "vae2", "encode", "measure", "denoiser", "decoder", "psnr", "taehv", "cfg", "write")
# opt-in experiments (``--stages vae3,...``), not part of the default rebuild of the shipped weights
OPTIONAL_STAGES = ("vae3",)
DISTRIBUTED_STAGES = ("vae", "vae2", "encode", "denoiser", "decoder", "psnr", "cfg")


def settings(fast: bool, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The build settings (FULL, or FAST for a smoke test) with ``KEY=VALUE`` overrides applied.

    A value is read as JSON (``den_steps=7900``, ``cfg_grid=[[3,2]]``) and must keep the type of the setting it
    replaces (an int may stand for a float); unknown keys and type changes raise ``InputError``.
    """
    cfg = dict(FAST if fast else FULL)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in cfg:
            known = ", ".join(sorted(cfg))
            raise InputError(f"--set {item!r}: expected KEY=VALUE with KEY one of: {known}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        old = cfg[key]
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(old):
            raise InputError(f"--set {key}: expected {type(old).__name__} like {old!r}, got {value!r}")
        cfg[key] = value
    from neoc.train.flow_matching import TIMESTEP_SAMPLINGS, check_timestep_sampling

    for key, choices in (("encode_dtype", ENCODE_DTYPES), ("den_init", DENOISER_INITS),
                         ("den_t_sampling", TIMESTEP_SAMPLINGS), ("den_schedule", DENOISER_SCHEDULES)):
        if cfg[key] not in choices:
            raise InputError(f"--set {key}={cfg[key]!r}: expected one of {', '.join(choices)}")
    try:
        check_timestep_sampling(cfg["den_t_sampling"], cfg["den_logit_std"])
    except InputError as exc:
        raise InputError(f"--set den_logit_std: {exc}") from None
    if not 0.0 <= cfg["den_fg_weight"] < float("inf"):
        raise InputError(f"--set den_fg_weight={cfg['den_fg_weight']!r}: expected a finite weight >= 0")
    if not 0.0 <= cfg["den_min_lr_ratio"] <= 1.0:
        raise InputError(f"--set den_min_lr_ratio={cfg['den_min_lr_ratio']!r}: expected a ratio in [0, 1]")
    return cfg


# ---- small helpers ---------------------------------------------------------------------------------------
def fresh_pipeline(seed: int = SEED):
    """The tiny pipeline with a seeded random init (norm constants (0, 1, 0, 1))."""
    from neoc.zoo.builtin import build

    torch.manual_seed(seed)
    return build("builtin:pyramid-tiny", random_init=True)


def role_tensors(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{role}.{k}": v.detach().cpu().contiguous().clone() for role, m in modules.items()
            for k, v in m.state_dict().items()}


def load_roles(modules: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    for role, module in modules.items():
        prefix = f"{role}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)


def load_trained_vae(out: Path, pipe=None):
    from safetensors.torch import load_file

    pipe = pipe or fresh_pipeline()
    # the last refinement that ran: vae3 (object-weighted), vae2 (deterministic), else stage vae
    candidates = [out / name / "vae.safetensors" for name in ("vae3", "vae2")]
    path = next((c for c in candidates if c.is_file()), out / "vae" / "vae.safetensors")
    load_roles({r: pipe.components[r] for r in ("vae_encoder", "vae_decoder")}, load_file(str(path)))
    return pipe


# ---- stage 1: VAE -----------------------------------------------------------------------------------------
class VAEBatches:
    """Random VAE training crops: toy-world clips (rendered on the fly) and windows of real training clips."""

    def __init__(self, cfg: dict, seed: int = SEED):
        from neoc.data.videos import default_data_root, list_clips, read_clip, split_clips

        self.cfg = cfg
        self.seed = seed
        self.real: list[torch.Tensor] = []
        try:
            clips = split_clips(list_clips(default_data_root() / "videos"), "train")
            self.real = [read_clip(c, size=TINY_SIZE) for c in clips]  # [3, F, 64, 64] each
        except Exception as err:  # no real clips: toy world only
            print(f"[vae] real clips unavailable ({err}); training on the toy world only", file=sys.stderr)

    def toy_video(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A random training clip [3, 49, 64, 64] and, when ``vae_fg_weight`` is set, its object mask
        [1, 49, 64, 64] (anti-aliased coverage dilated by 2 pixels, so the outline counts as object)."""
        from neoc.data.toyworld import ToyWorldDataset, coverage

        index = int(torch.randint(0, 10_000_000, (1,), generator=gen))
        video, _, scene = ToyWorldDataset("train", size=10_000_000, seed=self.seed + 1, frame_size=TINY_SIZE)[index]
        if not self.cfg.get("vae_fg_weight"):
            return video, None
        mask = coverage(scene, video.shape[1], TINY_SIZE)[:, None]  # [F, 1, H, W]
        mask = torch.nn.functional.max_pool2d(mask, 5, stride=1, padding=2)
        return video, mask.transpose(0, 1)

    def __call__(self, ctx) -> dict:
        cfg, gen = self.cfg, ctx.generator
        image = float(torch.rand((), generator=gen)) < cfg["vae_image_prob"]
        frames, crop = (1, cfg["vae_image_crop"]) if image else (cfg["vae_frames"], cfg["vae_crop"])
        clips, masks = [], []
        for _ in range(cfg["vae_image_batch"] if image else cfg["vae_batch"]):
            use_real = self.real and float(torch.rand((), generator=gen)) < cfg["vae_real_prob"]
            if use_real:
                video, mask = self.real[int(torch.randint(0, len(self.real), (1,), generator=gen))], None
            else:
                video, mask = self.toy_video(gen)
            if mask is None:
                mask = torch.zeros_like(video[:1])
            t0 = int(torch.randint(0, video.shape[1] - frames + 1, (1,), generator=gen))
            y0 = int(torch.randint(0, TINY_SIZE - crop + 1, (1,), generator=gen))
            x0 = int(torch.randint(0, TINY_SIZE - crop + 1, (1,), generator=gen))
            clip = video[:, t0:t0 + frames, y0:y0 + crop, x0:x0 + crop]
            mask = mask[:, t0:t0 + frames, y0:y0 + crop, x0:x0 + crop]
            if float(torch.rand((), generator=gen)) < 0.5:
                clip, mask = clip.flip(-1), mask.flip(-1)
            clips.append(clip)
            masks.append(mask)
        batch = {"frames": torch.stack(clips).contiguous(memory_format=torch.channels_last_3d)}  # [B, 3, F, crop, crop]
        if cfg.get("vae_fg_weight"):
            batch["pixel_weight"] = 1.0 + cfg["vae_fg_weight"] * torch.stack(masks)  # [B, 1, F, crop, crop]
        latent_shape = (len(clips), 16, 1 + (frames - 1) // 8, crop // 8, crop // 8)
        scale = self.noise_scale(ctx.step)
        if scale == 0.0:  # deterministic autoencoding (z = posterior mode) for the last steps
            return batch
        return {**batch, "latent_noise": scale * torch.randn(latent_shape, generator=gen)}

    def noise_scale(self, step: int) -> float:
        """Posterior-sampling noise: 1 until ``vae_noise_until``, then annealed to 0 at ``vae_noise_off_at``
        (both 0, the shipped settings: always the posterior mode). The noise was the old way out of the
        default-init VAE's 'predict the mean' start; the inflated init does not need it."""
        full, off = self.cfg["vae_noise_until"], self.cfg["vae_noise_off_at"]
        if step < full:
            return 1.0
        if off <= full:
            return 0.0
        return max(0.0, 1.0 - (step - full) / (off - full))


def stage_vae(out: Path, cfg: dict) -> dict:
    from neoc.train.loop import Trainer, TrainConfig, warmup_cosine
    from neoc.train.vae_objective import VAEReconstructionObjective

    pipe = fresh_pipeline()
    if cfg["vae_init"] == "inflated":  # reset_parameters_inflated: 16.2 vs 10.0 dB at step 150 of the bench
        from neoc.models.causal_vae import reset_parameters_inflated

        generator = torch.Generator().manual_seed(SEED + 7)
        for role in ("vae_encoder", "vae_decoder"):
            reset_parameters_inflated(pipe.components[role], generator)
    objective = VAEReconstructionObjective(pipe.components["vae_encoder"], pipe.components["vae_decoder"],
                                           kl_weight=cfg["vae_kl_weight"])
    objective = objective.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=cfg["vae_lr"], weight_decay=0.0)
    steps = cfg["vae_steps"]
    trainer = Trainer(objective, optimizer, warmup_cosine(max(1, steps // 12), steps, 0.05),
                      TrainConfig(steps=steps, out_dir=out / "vae", seed=SEED, checkpoint_every=20, log_every=5,
                                  autocast="bf16", grad_clip=1.0, name="vae"))
    result = trainer.fit(VAEBatches(cfg))
    _save_vae(out / "vae", objective, trainer, result)
    return {}


def _save_vae(folder: Path, objective, trainer, result) -> None:
    """Main rank: the VAE's role-prefixed weights (``vae.safetensors``) and the run's ``summary.json``."""
    from safetensors.torch import save_file

    if not trainer.info.is_main:
        return
    modules = {"vae_encoder": objective.encoder, "vae_decoder": objective.decoder}
    tensors = role_tensors({r: m.to(memory_format=torch.contiguous_format) for r, m in modules.items()})
    save_file(tensors, str(folder / "vae.safetensors"))
    summary = {"steps": result.steps, "final_loss": result.final_loss, "losses": result.losses,
               "wall_seconds": result.wall_seconds_total, "world_size": trainer.info.world_size}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))


def _refine_vae(out: Path, cfg: dict, source: str, name: str, seed: int, batch_cfg: dict, lr: float,
                steps: int, schedule_steps: int, lowres_weight: float = 0.0) -> None:
    """Deterministic autoencoding (z = posterior mode) of the whole VAE from ``out/source`` into ``out/name``."""
    from safetensors.torch import load_file

    from neoc.train.loop import Trainer, TrainConfig, warmup_cosine
    from neoc.train.vae_objective import VAEReconstructionObjective

    pipe = fresh_pipeline()
    load_roles({r: pipe.components[r] for r in ("vae_encoder", "vae_decoder")},
               load_file(str(out / source / "vae.safetensors")))
    objective = VAEReconstructionObjective(pipe.components["vae_encoder"], pipe.components["vae_decoder"],
                                           kl_weight=cfg["vae_kl_weight"], lowres_weight=lowres_weight)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=lr, weight_decay=0.0)
    batches = VAEBatches(cfg, seed=seed)
    batches.cfg = {**cfg, "vae_noise_until": 0, "vae_noise_off_at": 0, **batch_cfg}
    # the cosine runs over schedule_steps; the run stops at steps (time budget on 2 CPU cores)
    trainer = Trainer(objective, optimizer, warmup_cosine(20, schedule_steps, 0.1),
                      TrainConfig(steps=steps, out_dir=out / name, seed=seed, checkpoint_every=20, log_every=5,
                                  autocast="bf16", grad_clip=1.0, name=name))
    result = trainer.fit(batches)
    _save_vae(out / name, objective, trainer, result)


def stage_vae2(out: Path, cfg: dict) -> dict:
    """Refinement of the whole VAE from the stage-1 weights on mostly toy-world clips (object-weighted like stage
    1, z = posterior mode), the LR cosine-annealed to 0.1x over the stage. History: with the old default init this
    stage was what got object colour above chance at all; with the inflated init stage 1 already reaches a
    round-trip semantic of 0.675 (12 held-out toy videos) and this stage adds toy-world detail."""
    _refine_vae(out, cfg, "vae", "vae2", SEED + 3,
                {"vae_batch": cfg["vae2_batch"], "vae_real_prob": cfg["vae2_real_prob"],
                 "vae_image_prob": cfg["vae2_image_prob"]},
                cfg["vae2_lr"], cfg["vae2_steps"], cfg["vae2_schedule_steps"])
    return {}


def stage_vae3(out: Path, cfg: dict) -> dict:
    """Object-weighted refinement from the vae2 weights: after vae2 the held-out toy PSNR was 18.0 dB but the
    probe read the round-tripped videos' object colour, shape and motion at chance (semantic 0.23 vs 0.93 on
    the originals): the small object is a few percent of the pixel loss. Here object pixels weigh
    ``1 + vae3_fg_weight`` and a 4x4-pooled colour term is added (see neoc.train.vae_objective).

    Opt-in (``--stages vae3``), not part of the default rebuild: measured 2026-11-22, 400 steps (725 s on the
    shared 2-core CPU) moved the round-trip semantic of 12 held-out toy videos only from 0.227 to 0.274 and the
    object colour stayed at chance (nearest-palette accuracy 0.14), so the shipped weights do not use it.
    ``bench/vae_learning_speed.py`` shows why: with the same data and loss this VAE config learns several
    times slower per step than a plain conv autoencoder."""
    _refine_vae(out, cfg, "vae2", "vae3", SEED + 5,
                {"vae_batch": cfg["vae3_batch"], "vae_frames": cfg["vae3_frames"], "vae_real_prob": cfg["vae3_real_prob"],
                 "vae_image_prob": cfg["vae3_image_prob"], "vae_fg_weight": cfg["vae3_fg_weight"]},
                cfg["vae3_lr"], cfg["vae3_steps"], cfg["vae3_schedule_steps"], lowres_weight=cfg["vae3_lowres_weight"])
    return {}


# ---- stage 2: encode the latent training set --------------------------------------------------------------
def _scene_dict(scene) -> dict:
    import attrs

    return attrs.asdict(scene)


def _scene(d: dict):
    from neoc.data.toyworld import ToyScene

    return ToyScene(**d)


ENCODE_DTYPES = ("bf16", "fp32")


@torch.no_grad()
def encode_raw(encoder, frames: torch.Tensor, dtype: str = "bf16") -> torch.Tensor:
    """Un-normalised posterior mode [B, 16, T', h, w] of frames [B, 3, F, H, W].

    ``bf16``: CPU bf16 autocast, how the shipped latent sets were encoded (the default, so a rebuild reproduces
    them); ``fp32``: no autocast. The two differ by ~0.5 % (relative L2 on a toy clip; latent std equal to 3e-4), but
    on a CPU without native bf16 (AVX2 only) bf16 convolutions are ~29x slower (a 49-frame 64x64 clip: 16.9 s vs
    0.59 s, 1 thread, AMD EPYC AVX2)."""
    if dtype not in ENCODE_DTYPES:
        raise InputError(f"encode dtype {dtype!r}: expected one of {', '.join(ENCODE_DTYPES)}")
    frames = frames.contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        moments = encoder.quant_conv(encoder.encoder(frames))
    return moments.float().chunk(2, dim=1)[0].contiguous()


def slow_bf16_warning(dtype: str) -> str | None:
    """A hint when bf16 encoding runs on a CPU that torch reports as AVX2 or less (no bf16 vector unit; AVX512
    parts without the bf16 extension may be slow too, and get no hint)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if dtype == "bf16" and capability in ("DEFAULT", "NO AVX", "AVX2"):
        return (f"[build_tiny] encode: bf16 autocast on a {capability} CPU (measured ~29x slower than fp32 on an "
                f"AVX2 EPYC); "
                f"--set encode_dtype=fp32 encodes fast (latents differ by ~0.5 %, not bit-identical to the shipped "
                f"build's)")
    return None


def stage_encode(out: Path, cfg: dict) -> dict:
    """Each rank encodes its share of the training videos and first frames (raw posterior modes)."""
    from safetensors.torch import save_file

    from neoc.data.toyworld import ToyWorldDataset, render_float
    from neoc.train.distributed import init_distributed

    info = init_distributed("cpu")
    rank, world = info.rank, info.world_size
    warning = slow_bf16_warning(cfg["encode_dtype"])
    if warning and rank == 0:
        print(warning, flush=True)
    pipe = load_trained_vae(out)
    encoder = pipe.components["vae_encoder"].eval()
    encoder.to(memory_format=torch.channels_last_3d)
    (out / "encode").mkdir(parents=True, exist_ok=True)
    start = time.time()
    videos = ToyWorldDataset("train", size=cfg["encode_videos"], seed=SEED + 10, frame_size=TINY_SIZE)
    video_ids = list(range(rank, len(videos), world))
    video_latents, video_meta = [], []
    for i in video_ids:
        frames, text, scene = videos[i]
        video_latents.append(encode_raw(encoder, frames[None], cfg["encode_dtype"])[0])
        video_meta.append({"caption": text, "scene": _scene_dict(scene)})
    images = ToyWorldDataset("train", size=cfg["encode_images"], seed=SEED + 20)
    image_ids = list(range(rank, len(images), world))
    image_latents, image_meta = [], []
    for chunk in range(0, len(image_ids), 16):
        ids = image_ids[chunk:chunk + 16]
        scenes = [images.scene_and_caption(i) for i in ids]
        frames = torch.stack([render_float(scene, 1, TINY_SIZE) for scene, _ in scenes])  # [b, 3, 1, 64, 64]
        image_latents.append(encode_raw(encoder, frames, cfg["encode_dtype"]))
        image_meta += [{"caption": text, "scene": _scene_dict(scene)} for scene, text in scenes]
    encode_seconds = time.time() - start
    tensors = {"video_latents": torch.stack(video_latents) if video_latents else torch.zeros(0, 16, 7, TINY_SIZE // 8, TINY_SIZE // 8),
               "image_latents": torch.cat(image_latents) if image_latents else torch.zeros(0, 16, 1, TINY_SIZE // 8, TINY_SIZE // 8)}
    save_file(tensors, str(out / "encode" / f"shard-{rank}.safetensors"))
    (out / "encode" / f"shard-{rank}.json").write_text(json.dumps(
        {"videos": video_meta, "images": image_meta, "encode_seconds": encode_seconds}))
    return {}


# ---- stage 3: normalisation constants and the normalised dataset ----------------------------------------------
def latent_norm_constants(video_latents: torch.Tensor, image_latents: torch.Tensor) -> list[float]:
    """[image_shift, image_scale, video_shift, video_scale]: first latent frames (of videos and lone first
    frames) give the image statistics, later frames the video statistics; shift = mean, scale = 1/std."""
    first = torch.cat([video_latents[:, :, :1].reshape(-1), image_latents.reshape(-1)]).double()
    rest = video_latents[:, :, 1:].reshape(-1).double()
    return [float(first.mean()), float(1.0 / first.std()), float(rest.mean()), float(1.0 / rest.std())]


def shipped_latent_norm() -> list[float]:
    """The package's latent normalisation (``pyramid-tiny.json``), which the shipped denoiser learned."""
    from neoc.zoo.builtin import tiny_metadata

    shipped = tiny_metadata().get("latent_norm")
    if shipped is None:
        raise InputError("den_init=shipped: the package has no shipped latent normalisation (pyramid-tiny.json)")
    return list(shipped)


def shipped_norm_for_warm_start(measured: list[float], tolerance: float = 0.05) -> list[float]:
    """The shipped latent normalisation, which a warm-started denoiser (``den_init=shipped``) learned, after
    checking the build's own measurement agrees with it (scales within ``tolerance``: another VAE would not)."""
    shipped = shipped_latent_norm()
    for name, index in (("image", 1), ("video", 3)):
        if abs(measured[index] / shipped[index] - 1.0) > tolerance:
            raise InputError(f"den_init=shipped: the encoded set's {name} scale {measured[index]:.4f} is not the "
                             f"shipped {shipped[index]:.4f} (within {tolerance:.0%}); was it encoded with the "
                             f"package's VAE?")
    return shipped


def stage_measure(out: Path, cfg: dict) -> dict:
    from safetensors.torch import load_file, save_file

    from neoc.models.latent_norm import LatentNorm

    shards = sorted((out / "encode").glob("shard-*.safetensors"), key=lambda f: int(f.stem.split("-")[1]))
    world = len(shards)
    if [int(f.stem.split("-")[1]) for f in shards] != list(range(world)):
        raise InputError(f"{out / 'encode'}: shards {[f.stem for f in shards]} are not one encode run's "
                         f"shard-0 .. shard-{world - 1}; delete the folder and its .encode.done.json and re-encode")
    videos, images, video_meta, image_meta, encode_seconds = [], [], [], [], []
    video_ids, image_ids = [], []
    for rank, shard in enumerate(shards):
        tensors = load_file(str(shard))
        meta = json.loads(shard.with_suffix(".json").read_text())
        videos.append(tensors["video_latents"])
        images.append(tensors["image_latents"])
        video_meta += meta["videos"]
        image_meta += meta["images"]
        encode_seconds.append(meta["encode_seconds"])
        video_ids += range(rank, rank + world * len(meta["videos"]), world)  # rank r encoded items r, r + world, ..
        image_ids += range(rank, rank + world * len(meta["images"]), world)
    # dataset order, whatever the number of encode processes: the norm's first norm_videos and the training set
    # are then the same for --procs 2 and 14
    video_order = sorted(range(len(video_ids)), key=video_ids.__getitem__)
    image_order = sorted(range(len(image_ids)), key=image_ids.__getitem__)
    video_latents, image_latents = torch.cat(videos)[video_order], torch.cat(images)[image_order]
    video_meta, image_meta = [video_meta[i] for i in video_order], [image_meta[i] for i in image_order]
    measured = latent_norm_constants(video_latents[:cfg["norm_videos"]], image_latents)
    norm_values = shipped_norm_for_warm_start(measured) if cfg["den_init"] == "shipped" else measured
    norm = LatentNorm(*norm_values)
    save_file({"video_latents": norm.normalize(video_latents).contiguous(),
               "image_latents": ((image_latents - norm.image_shift) * norm.image_scale).contiguous()},
              str(out / "latents.safetensors"))
    (out / "latents.json").write_text(json.dumps({"videos": video_meta, "images": image_meta}))
    summary = {"latent_norm": norm_values, "latent_norm_measured": measured, "videos": len(video_meta),
               "images": len(image_meta),
               "encode_seconds_per_rank": encode_seconds}
    (out / "measure.json").write_text(json.dumps(summary, indent=1))
    print(f"[measure] {json.dumps(summary)}", flush=True)
    return summary


# ---- stage 4: denoiser + text encoders --------------------------------------------------------------------
DENOISER_ROLES = ("denoiser", "context_embedder", "text_encoder", "clip_encoders")


class FlowBatches:
    """Pyramidal flow-matching batches from the normalised toy latent set; captions are re-worded per draw.
    With ``den_fg_weight`` w > 0 each position's loss weighs ``1 + w * object share``
    (:func:`neoc.data.toyworld.latent_object_mask`)."""

    def __init__(self, out: Path, cfg: dict, prompt_encoder):
        from safetensors.torch import load_file

        tensors = load_file(str(out / "latents.safetensors"))
        meta = json.loads((out / "latents.json").read_text())
        self.videos = tensors["video_latents"]                     # [N, 16, 7, 16, 16]
        self.first_frames = torch.cat([tensors["video_latents"][:, :, :1], tensors["image_latents"]])  # [N+M, ...]
        self.video_scenes = [_scene(m["scene"]) for m in meta["videos"]]
        self.first_scenes = self.video_scenes + [_scene(m["scene"]) for m in meta["images"]]
        self.cfg = cfg
        self.prompt_encoder = prompt_encoder
        self.video_masks = self.first_masks = None
        if cfg["den_fg_weight"] > 0:  # once, off the training step: ~0.04 s a video, ~1 ms a first frame
            from neoc.data.toyworld import latent_object_mask

            _, _, frames, size, _ = self.videos.shape
            self.video_masks = torch.stack([latent_object_mask(s, frames, size)
                                            for s in self.video_scenes])               # [N, T, h, w]
            images = [latent_object_mask(s, 1, size)[0] for s in self.first_scenes[len(self.video_scenes):]]
            self.first_masks = torch.cat([self.video_masks[:, 0], *([torch.stack(images)] if images else [])])

    def loss_weights(self, unit: int, index: list[int]) -> torch.Tensor | None:
        """[B, 1, 1, h, w] weights of the drawn items' frame ``unit`` (None when ``den_fg_weight`` is 0)."""
        if self.video_masks is None:
            return None
        masks = self.video_masks[index, unit] if unit > 0 else self.first_masks[index]
        return (1.0 + self.cfg["den_fg_weight"] * masks)[:, None, None]

    def captions(self, scenes, gen: torch.Generator) -> list[str]:
        from neoc.data.toyworld import caption

        seeds = torch.randint(0, 2**31 - 1, (len(scenes),), generator=gen).tolist()
        return [caption(scene, np.random.default_rng(seed)) for scene, seed in zip(scenes, seeds)]

    def __call__(self, ctx):
        from neoc.train.flow_matching import drop_captions, make_flow_batch

        gen, size = ctx.generator, self.cfg["den_batch"]
        if float(torch.rand((), generator=gen)) < self.cfg["den_first_frame_prob"]:
            unit = 0
            index = torch.randint(0, self.first_frames.shape[0], (size,), generator=gen)
            latents, scenes = self.first_frames[index], [self.first_scenes[i] for i in index.tolist()]
        else:
            unit = int(torch.randint(1, self.videos.shape[2], (1,), generator=gen))
            index = torch.randint(0, self.videos.shape[0], (size,), generator=gen)
            latents, scenes = self.videos[index, :, :unit + 1], [self.video_scenes[i] for i in index.tolist()]
        texts = drop_captions(self.captions(scenes, gen), gen)
        return make_flow_batch(latents, unit, self.prompt_encoder.encode(texts), gen,
                               timestep_sampling=self.cfg["den_t_sampling"], logit_mean=self.cfg["den_logit_mean"],
                               logit_std=self.cfg["den_logit_std"], loss_weights=self.loss_weights(unit, index.tolist()))


def dit_init(denoiser: torch.nn.Module) -> None:
    """DiT-style initialisation (Peebles & Xie 2023, as SD3 trains): Xavier-uniform linears in the joint blocks,
    zero-initialised adaLN modulations (every block starts as the identity) and a zero output projection."""
    from neoc.models.mmdit import AdaLayerNormContinuous, AdaLayerNormZero

    for module in denoiser.transformer_blocks.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            torch.nn.init.zeros_(module.bias)
    for module in denoiser.modules():
        if isinstance(module, (AdaLayerNormZero, AdaLayerNormContinuous)):
            torch.nn.init.zeros_(module.linear.weight)
            torch.nn.init.zeros_(module.linear.bias)
    torch.nn.init.zeros_(denoiser.proj_out.weight)
    torch.nn.init.zeros_(denoiser.proj_out.bias)


DENOISER_INITS = ("dit", "shipped")


def init_denoiser_roles(components: dict[str, torch.nn.Module], how: str, out: Path | None = None) -> None:
    """``dit``: train from scratch (:func:`dit_init`); ``shipped``: warm-start every denoiser-side role from the
    package's weights (so device sessions with a wall budget add up). A warm start needs the build's latent
    normalisation (``measure.json``) to be the shipped one, which the measure stage then writes
    (:func:`shipped_norm_for_warm_start`): the denoiser learned that latent space."""
    if how == "dit":
        dit_init(components["denoiser"])
        return
    if how != "shipped":
        raise InputError(f"den_init {how!r}: expected one of {', '.join(DENOISER_INITS)}")
    from neoc.zoo.builtin import build

    shipped = build("builtin:pyramid-tiny")  # a clear error when the package's weights are missing
    shipped_norm = shipped_latent_norm()
    if out is not None and (out / "measure.json").is_file():
        norm = json.loads((out / "measure.json").read_text())["latent_norm"]
        if any(abs(a - b) > 1e-3 * max(1.0, abs(b)) for a, b in zip(norm, shipped_norm)):
            raise InputError(f"den_init=shipped: {out / 'measure.json'} latent_norm {norm} differs from the shipped "
                             f"{shipped_norm}; re-run the measure stage with --set den_init=shipped")
    for role in DENOISER_ROLES:
        components[role].load_state_dict(shipped.components[role].state_dict(), strict=True)


DENOISER_SCHEDULES = ("constant", "cosine")


def denoiser_schedule(cfg: dict):
    """``constant`` (warm-up, then the base LR: raising ``den_steps`` continues a run exactly) or ``cosine``
    (warm-up, then a cosine decay to ``den_min_lr_ratio`` of the base LR at ``den_steps``: a cool-down, e.g. of a
    warm-started continuation; extending it is a new schedule, not a resume)."""
    from neoc.train.loop import warmup_constant, warmup_cosine

    if cfg["den_schedule"] == "cosine":
        return warmup_cosine(cfg["den_warmup"], cfg["den_steps"], cfg["den_min_lr_ratio"])
    return warmup_constant(cfg["den_warmup"])


def stage_denoiser(out: Path, cfg: dict) -> dict:
    from safetensors.torch import save_file

    from neoc.train.flow_matching import PyramidFlowObjective
    from neoc.train.loop import Trainer, TrainConfig

    pipe = fresh_pipeline(SEED + 1)
    components = {r: pipe.components[r] for r in DENOISER_ROLES}
    init_denoiser_roles(components, cfg["den_init"], out)  # a resumed run then loads its checkpoint over this
    objective = PyramidFlowObjective(**components)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=cfg["den_lr"], weight_decay=0.01)
    trainer = Trainer(objective, optimizer, denoiser_schedule(cfg),
                      TrainConfig(steps=cfg["den_steps"], out_dir=out / "denoiser", seed=SEED,
                                  checkpoint_every=cfg["den_checkpoint_every"], prefetch=cfg["den_prefetch"],
                                  log_every=10, grad_clip=1.0, ema_decay=cfg["den_ema"], name="denoiser"))
    result = trainer.fit(FlowBatches(out, cfg, pipe.prompt_encoder))
    if trainer.info.is_main:
        ema = trainer.ema_state_dict()
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ema.items()}
        save_file(tensors, str(out / "denoiser" / "denoiser.safetensors"))
        device = trainer.info.device
        summary = {"steps": result.steps, "final_loss": result.final_loss, "losses": result.losses,
                   "wall_seconds": result.wall_seconds_total, "world_size": trainer.info.world_size,
                   "ema_decay": cfg["den_ema"],
                   "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)}
        (out / "denoiser" / "summary.json").write_text(json.dumps(summary, indent=1))
    return {}


# ---- stage 5: decoder refinement (frozen encoder: the latent space the denoiser learned stays fixed) ----------
def stage_decoder(out: Path, cfg: dict) -> dict:
    from safetensors.torch import save_file

    from neoc.train.loop import Trainer, TrainConfig, warmup_constant
    from neoc.train.vae_objective import VAEReconstructionObjective

    if cfg["dec_steps"] == 0:  # skipped: the VAE's own decoder ships (see stage vae2)
        return {}
    pipe = load_trained_vae(out)
    objective = VAEReconstructionObjective(pipe.components["vae_encoder"], pipe.components["vae_decoder"],
                                           freeze_encoder=True, temporal_weight=cfg["dec_temporal_weight"])
    objective = objective.to(memory_format=torch.channels_last_3d)
    decoder_params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(decoder_params, lr=cfg["dec_lr"], weight_decay=0.0)
    steps = cfg["dec_steps"]
    batches = VAEBatches(cfg, seed=SEED + 5)
    # whole 49-frame clips: trained on 17-frame windows only (latents 0-2), the vae2 weights decode latents 3-6
    # of a 49-frame video at 12-17 dB against 26 dB for latents 1-2; after this stage 25-26 dB throughout
    # (6 held-out toy videos, measured 2026-11-22)
    batches.cfg = {**cfg, "vae_noise_until": 0, "vae_noise_off_at": 0,  # decode the posterior mode
                   "vae_image_prob": cfg["dec_image_prob"], "vae_frames": cfg["dec_frames"],
                   "vae_batch": cfg["dec_batch"]}
    # constant LR + EMA: a longer refinement is exactly a resumed shorter one
    trainer = Trainer(objective, optimizer, warmup_constant(10),
                      TrainConfig(steps=steps, out_dir=out / "decoder", seed=SEED + 5, checkpoint_every=20,
                                  log_every=5, autocast="bf16", grad_clip=1.0, ema_decay=cfg["dec_ema"],
                                  name="decoder"))
    result = trainer.fit(batches)
    if trainer.info.is_main:
        ema = trainer.ema_state_dict()
        prefix = "decoder."
        tensors = {f"vae_decoder.{k[len(prefix):]}": v.detach().cpu().contiguous().clone() for k, v in ema.items()
                   if k.startswith(prefix)}
        save_file(tensors, str(out / "decoder" / "decoder.safetensors"))
        summary = {"steps": result.steps, "final_loss": result.final_loss, "losses": result.losses,
                   "wall_seconds": result.wall_seconds_total, "world_size": trainer.info.world_size}
        (out / "decoder" / "summary.json").write_text(json.dumps(summary, indent=1))
    return {}


def load_trained_decoder(out: Path, pipe) -> None:
    """Replace the VAE decoder by the refined one, when the decoder stage ran."""
    from safetensors.torch import load_file

    path = out / "decoder" / "decoder.safetensors"
    if path.is_file():
        load_roles({"vae_decoder": pipe.components["vae_decoder"]}, load_file(str(path)))


# ---- stage 6: reconstruction PSNR on held-out clips ------------------------------------------------------------
def stage_psnr(out: Path, cfg: dict) -> dict:
    """Encode (mode) -> decode round trips of held-out toy videos and real eval-clip windows, fp32, through the
    pipeline wrappers; clips split over ranks, rank 0 writes ``psnr.json``."""
    from neoc.data.toyworld import ToyWorldDataset
    from neoc.data.videos import default_data_root, load_clip_windows
    from neoc.train.distributed import barrier, init_distributed
    from neoc.train.vae_objective import psnr

    info = init_distributed("cpu")
    pipe = load_trained_vae(out)
    load_trained_decoder(out, pipe)
    encoder, decoder = pipe.components["vae_encoder"].eval(), pipe.components["vae_decoder"].eval()
    clips = [("toy", video) for video, _, _ in
             (ToyWorldDataset("eval", size=cfg["psnr_toy_videos"], seed=SEED, frame_size=TINY_SIZE)[i] for i in range(cfg["psnr_toy_videos"]))]
    try:
        clips += [("real", w) for w in load_clip_windows(default_data_root() / "videos", "eval", num_frames=49, size=TINY_SIZE,
                                                           max_windows_per_clip=cfg["psnr_real_windows"])]
    except Exception as err:
        print(f"[psnr] real eval clips unavailable: {err}", file=sys.stderr)
    mine = {}
    with torch.no_grad():
        for index in range(info.rank, len(clips), info.world_size):
            kind, video = clips[index]
            mine[index] = (kind, psnr(video[None], decoder(encoder(video[None]))))
    (out / f".psnr-{info.rank}.json").write_text(json.dumps(mine))
    barrier()
    if info.is_main:
        values = {}
        for rank in range(info.world_size):
            values.update(json.loads((out / f".psnr-{rank}.json").read_text()))
        toy = [v for k, v in values.values() if k == "toy"]
        real = [v for k, v in values.values() if k == "real"]
        summary = {"psnr_toy_db": sum(toy) / max(1, len(toy)), "toy_videos": len(toy),
                   "psnr_real_db": sum(real) / len(real) if real else None, "real_windows": len(real),
                   "frames": 49, "size": TINY_SIZE}
        (out / "psnr.json").write_text(json.dumps(summary, indent=1))
        print(f"[psnr] {json.dumps(summary)}", flush=True)
    return {}


# ---- stage taehv: a TAEHV decoder pretrained on a sibling latent space ----------------------------------------
TAEHV_SUMMARY_KEYS = ("psnr_native_db", "psnr_new_db", "lpips_native", "lpips_new", "params_after")


def stage_taehv(out: Path, cfg: dict) -> dict:
    """The tiny analogue of the public TAEHV checkpoint that Neodragon §3.2 fine-tunes: the ``swap-decoder`` pass
    itself (same code, same loss as the tiny recipe profile, longer) run on a *sibling* pipeline whose VAE is the
    stage-1 ``vae`` weights, before the ``vae2`` refinement moved the latent space (4 held-out toy videos: latent
    cosine 0.83-0.89 with the shipped encoder's; its own round trip 12-19 dB against the shipped VAE's 20-25 dB). So
    the decoder is pretrained for a latent space that is related to, not the same as, the one it will serve, and
    the recipe's ``swap-decoder`` (``init: builtin``) still has to adapt it. Writes ``taehv/taehv.safetensors``
    (fp16, ``vae_decoder.``-prefixed) and ``taehv/summary.json``."""
    from safetensors.torch import load_file, save_file

    from neoc.pass_api import EvalData, PassContext
    from neoc.passes.swap_decoder import SwapDecoder, SwapDecoderConfig
    from neoc.zoo.builtin import VAE_ROLES

    pipe = candidate_pipeline(out)
    load_roles({r: pipe.components[r] for r in VAE_ROLES}, load_file(str(out / "vae" / "vae.safetensors")))
    pipe.source = "build_tiny:stage-1-vae"  # not builtin: the pass starts this decoder from random weights
    config = SwapDecoderConfig(family="taehv", steps=cfg["taehv_steps"], lr=cfg["taehv_lr"],
                               batch_size=cfg["taehv_batch"], warmup=cfg["taehv_warmup"], patch_frames=17,
                               patch_size=64, pool_size=cfg["taehv_pool"], toy_fraction=0.75, w_temporal=50.0,
                               checkpoint_every=100, latency_repeats=1)
    ctx = PassContext(seed=SEED + 11, work_dir=out / "taehv", eval=EvalData())
    result, seconds = SwapDecoder(config).apply(pipe, ctx)
    decoder = result.pipeline.component("vae_decoder")
    tensors = {f"vae_decoder.{k}": v.detach().to(torch.float16).contiguous() for k, v in decoder.state_dict().items()}
    save_file(tensors, str(out / "taehv" / "taehv.safetensors"), metadata={"family": "taehv",
                                                                          "latent_space": "stage-1 vae"})
    summary = {"steps": result.metrics["train"]["steps"], "final_loss": result.metrics["train"]["final_loss"],
               "wall_seconds": round(seconds, 1), "latent_space": "stage-1 vae (before vae2)",
               **{k: result.metrics[k] for k in TAEHV_SUMMARY_KEYS}}
    (out / "taehv" / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"[taehv] {json.dumps(summary)}", flush=True)
    return summary


# ---- stage 7: CFG sweep -------------------------------------------------------------------------------------
def chosen_guidance(out: Path) -> tuple[float, float]:
    """(first-frame, video) CFG the build's sweep chose (``cfg.json``), or 7 / 5 before the cfg stage has run."""
    path = out / "cfg.json"
    return tuple(json.loads(path.read_text())["chosen"]) if path.is_file() else (7.0, 5.0)


def candidate_pipeline(out: Path, guidance: tuple[float, float] = (7.0, 5.0),
                       denoiser_tensors: dict[str, torch.Tensor] | None = None, source: str = "builtin:pyramid-tiny"):
    """The trained tiny pipeline assembled in memory from the build folder (VAE + refined decoder + norms + the
    denoiser-side roles: ``denoiser_tensors`` when given, e.g. a checkpoint's EMA, else ``denoiser.safetensors``)."""
    from safetensors.torch import load_file

    from neoc.models.text_encoders import PromptEncoderBundle
    from neoc.zoo import model_configs as mc
    from neoc.zoo import text_configs as tc
    from neoc.zoo.builtin import assemble, native_schedule, tiny_spec

    norm = tuple(json.loads((out / "measure.json").read_text())["latent_norm"])
    pipe = assemble(tiny_spec(norm), native_schedule(*guidance), mc.TINY_MMDIT_CONFIG, mc.TINY_VAE_CONFIG,
                    tc.TINY_T5_CONFIG, tc.TINY_CLIP_L_CONFIG, tc.TINY_CLIP_G_CONFIG,
                    prompt_encoder=PromptEncoderBundle.tiny(), source=source)
    load_trained_vae(out, pipe)  # the refined (vae2) VAE when that stage ran: the one the latents came from
    load_trained_decoder(out, pipe)
    if denoiser_tensors is None:
        denoiser_tensors = load_file(str(out / "denoiser" / "denoiser.safetensors"))
    load_roles({r: pipe.components[r] for r in DENOISER_ROLES}, denoiser_tensors)
    for module in pipe.components.values():
        module.eval()
    return pipe


@torch.no_grad()
def generate(pipe, prompt: str, seed: int) -> torch.Tensor:
    """One video [3, F, H, W] in [-1, 1]: [negative; positive] tokens + seeded noise through the pipeline graph."""
    shapes = pipe.input_shapes()
    inputs = {k: v for k, v in pipe.prompt_encoder.encode_for_guidance([prompt]).items() if k in shapes}
    inputs.update(pipe.draw_noise(seed))
    return pipe.run_graph(inputs)[0].clamp(-1, 1)


def cfg_prompts(count: int) -> list[tuple[str, dict]]:
    """Held-out prompts (toy-world eval split): (caption, scene dict)."""
    from neoc.data.toyworld import ToyWorldDataset

    dataset = ToyWorldDataset("eval", size=count, seed=SEED + 30)
    return [(text, _scene_dict(scene)) for scene, text in (dataset.scene_and_caption(i) for i in range(count))]


def stage_cfg(out: Path, cfg: dict) -> dict:
    """Generate the held-out prompts at every grid point (prompts split over ranks); rank 0 scores and picks."""
    from safetensors.torch import load_file, save_file

    from neoc.train.distributed import barrier, init_distributed
    from neoc.zoo.builtin import native_schedule

    info = init_distributed("cpu")
    folder = out / "cfg"
    folder.mkdir(parents=True, exist_ok=True)
    prompts = cfg_prompts(cfg["cfg_prompts"])
    pipe = candidate_pipeline(out)
    videos, timings = {}, []
    for g_index, (first, video) in enumerate(cfg["cfg_grid"]):
        pipe.with_schedule(native_schedule(first, video))
        for p_index in range(info.rank, len(prompts), info.world_size):
            start = time.time()
            videos[f"{g_index}:{p_index}"] = generate(pipe, prompts[p_index][0], seed=p_index).half()
            timings.append(time.time() - start)
    save_file(videos, str(folder / f"videos-{info.rank}.safetensors"))
    (folder / f"timings-{info.rank}.json").write_text(json.dumps(timings))
    barrier()
    if not info.is_main:
        return {}
    for shard in folder.glob("videos-*.safetensors"):
        videos.update(load_file(str(shard)))
    result = {"prompts": [p for p, _ in prompts], "grid": cfg["cfg_grid"], "scores": [], "chosen": [7.0, 5.0],
              "seconds_per_video": sum(timings) / max(1, len(timings))}
    try:
        from neoc.eval.quality import score_videos
        from neoc.eval.probe import load_probe

        probe = load_probe()
    except Exception as err:  # the instrument is not available: keep the reference scales
        result["note"] = f"quality instrument unavailable ({err}); kept CFG 7 / 5"
        (out / "cfg.json").write_text(json.dumps(result, indent=1))
        return result
    best = None
    for g_index, scales in enumerate(cfg["cfg_grid"]):
        batch = torch.stack([videos[f"{g_index}:{p}"].float() for p in range(len(prompts))])
        scores = score_videos(batch, [_scene(s) for _, s in prompts], probe=probe)
        balanced = (scores["quality"] + scores["semantic"]) / 2
        result["scores"].append({"guidance": scales, "balanced": balanced, **scores})
        if best is None or balanced > best[0]:
            best = (balanced, scales)
    result["chosen"] = list(best[1])
    result["rule"] = "max of (quality + semantic) / 2 over the grid"
    (out / "cfg.json").write_text(json.dumps(result, indent=1))
    print(f"[cfg] {json.dumps(result['scores'])}", flush=True)
    return result


# ---- stage 8: write the shipped files -------------------------------------------------------------------------
def package_vae_record(previous: dict | None, psnr_summary: dict) -> dict:
    """The VAE part of the training record when the build reused the package's VAE (bench/gpu_denoiser.sh,
    ``den_init=shipped`` continuations): it says so and keeps the record of the run that trained those weights
    (``package_record``, not nested again when the package's own record was already such a reuse)."""
    previous = previous or {}
    trained = previous.get("package_record") if "source" in previous else previous
    return {"source": "the package's VAE weights", "package_record": trained or None, **psnr_summary}


def stage_write(out: Path, cfg: dict, weights_dir: Path | None = None,
                command: str = "python -m neoc.zoo.build_tiny --ship") -> dict:
    from neoc.zoo.builtin import (TINY_META, TINY_TAEHV_WEIGHTS, TINY_VAE_WEIGHTS, TINY_WEIGHTS, VAE_ROLES,
                                  save_role_weights, tiny_metadata)

    cfg_result = json.loads((out / "cfg.json").read_text()) if (out / "cfg.json").is_file() else {}
    guidance = chosen_guidance(out)
    pipe = candidate_pipeline(out, guidance)
    measure = json.loads((out / "measure.json").read_text())
    stages = {}
    for stage in STAGES:
        marker = _done_marker(out, stage)
        if marker.is_file():
            stages[stage] = json.loads(marker.read_text()).get("wall_seconds")
    previous = tiny_metadata().get("training", {})  # the record being replaced (read before overwriting it)
    vae_path = out / "vae" / "summary.json"  # absent when the VAE came from the package (bench/gpu_denoiser.sh)
    vae = json.loads(vae_path.read_text()) if vae_path.is_file() else None
    den = json.loads((out / "denoiser" / "summary.json").read_text())
    vae2_path = out / "vae2" / "summary.json"
    vae2 = None
    if vae2_path.is_file():
        vae2_summary = json.loads(vae2_path.read_text())
        vae2 = {k: vae2_summary[k] for k in ("steps", "final_loss", "wall_seconds", "world_size")}
    dec_path = out / "decoder" / "summary.json"
    dec = None
    if dec_path.is_file():
        dec_summary = json.loads(dec_path.read_text())
        dec = {k: dec_summary[k] for k in ("steps", "final_loss", "wall_seconds")}
    psnr_summary = json.loads((out / "psnr.json").read_text()) if (out / "psnr.json").is_file() else {}
    training = {
        "command": command,
        "settings": cfg,
        "stage_wall_seconds": stages,
        "vae": ({"steps": vae["steps"], "final_loss": vae["final_loss"], "wall_seconds": vae["wall_seconds"],
                 "processes": vae["world_size"], "refinement": vae2, "decoder_refinement": dec, **psnr_summary}
                if vae else package_vae_record(previous.get("vae"), psnr_summary)),
        "latents": {"videos": measure["videos"], "first_frames": measure["images"]},
        "denoiser": {"steps": den["steps"], "final_loss": den["final_loss"], "wall_seconds": den["wall_seconds"],
                     "processes": den["world_size"], "ema_decay": den["ema_decay"],
                     "batch_per_process": cfg["den_batch"], "losses": den["losses"][-5:],
                     "device": den.get("device")},
        "cfg_sweep": {k: cfg_result.get(k) for k in ("grid", "scores", "rule", "note", "seconds_per_video")
                      if k in cfg_result},
    }
    if cfg["den_init"] == "shipped":  # a continuation: keep the record of the run it continued
        training["denoiser"]["warm_start"] = {"denoiser": previous.get("denoiser"), "command": previous.get("command")}
    taehv_path = out / "taehv" / "summary.json"
    if taehv_path.is_file():
        training["taehv_pretrained"] = json.loads(taehv_path.read_text())
    elif previous.get("taehv_pretrained"):  # the package's TAEHV file stays: so does its record
        training["taehv_pretrained"] = previous["taehv_pretrained"]
    meta = {"latent_norm": measure["latent_norm"], "guidance": list(guidance), "training": training}
    target = weights_dir or (out / "weights")
    weights_path = target / TINY_WEIGHTS.name
    header = {"latent_norm": meta["latent_norm"], "guidance": meta["guidance"]}
    # two files, each well under 20 MB: text side + denoiser, and the VAE
    save_role_weights(pipe, weights_path, header, roles=tuple(r for r in pipe.components if r not in VAE_ROLES))
    save_role_weights(pipe, target / TINY_VAE_WEIGHTS.name, header, roles=VAE_ROLES)
    if (out / "taehv" / "taehv.safetensors").is_file():
        shutil.copyfile(out / "taehv" / "taehv.safetensors", target / TINY_TAEHV_WEIGHTS.name)
    (target / TINY_META.name).write_text(json.dumps(meta, indent=1))
    print(f"[write] {weights_path} ({weights_path.stat().st_size / 1e6:.1f} MB), {target / TINY_META.name}", flush=True)
    return meta


# ---- orchestration -----------------------------------------------------------------------------------------
def _done_marker(out: Path, stage: str) -> Path:
    return out / f".{stage}.done.json"


def run_worker(stage: str, out: Path, cfg: dict) -> None:
    # the cores are shared by the stage's processes (torchrun sets WORLD_SIZE; a single process gets them all)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", "1"))))
    fn = {"vae": stage_vae, "vae2": stage_vae2, "vae3": stage_vae3, "encode": stage_encode, "measure": stage_measure, "denoiser": stage_denoiser,
          "decoder": stage_decoder, "psnr": stage_psnr, "taehv": stage_taehv, "cfg": stage_cfg}[stage]
    try:
        fn(out, cfg)
    finally:
        from neoc.train.distributed import cleanup

        cleanup()


def launch(stage: str, out: Path, fast: bool, procs: int, overrides: list[str] | tuple[str, ...] = ()) -> float:
    """Run one stage in ``procs`` processes (torchrun) or in-process; returns its wall seconds."""
    start = time.time()
    args = ["--worker", stage, "--out", str(out)] + (["--fast"] if fast else [])
    for item in overrides:
        args += ["--set", item]
    if procs > 1 and stage in DISTRIBUTED_STAGES:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               "-m", "neoc.zoo.build_tiny", *args]
    else:
        cmd = [sys.executable, "-m", "neoc.zoo.build_tiny", *args]
    print(f"[build_tiny] stage {stage}: {' '.join(cmd)}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1" if procs > 1 and stage in DISTRIBUTED_STAGES else str(os.cpu_count() or 1))
    subprocess.run(cmd, check=True, env=env)
    return time.time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neoc.zoo.build_tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="a few steps per stage (smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="caches, checkpoints, logs")
    parser.add_argument("--procs", type=int, default=max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 2,
                        help="processes for the distributed stages (default: one per GPU, else 2 CPU processes)")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of stages")
    parser.add_argument("--ship", action="store_true",
                        help="write the weights into the package (neoc/zoo/weights) instead of OUT/weights")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one build setting (JSON value, same type), e.g. --set den_steps=7900; "
                             "repeatable; the write stage records the overrides in the weights' metadata")
    parser.add_argument("--worker", choices=STAGES[:-1] + OPTIONAL_STAGES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        cfg = settings(args.fast, args.overrides)
    except InputError as err:
        parser.error(str(err))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        run_worker(args.worker, out, cfg)
        return 0
    for stage in args.stages.split(","):
        if stage not in STAGES + OPTIONAL_STAGES:
            parser.error(f"unknown stage {stage!r} (stages: {', '.join(STAGES + OPTIONAL_STAGES)})")
        if stage == "write":
            from neoc.zoo.builtin import WEIGHTS_DIR

            command = ("python -m neoc.zoo.build_tiny" + (" --fast" if args.fast else "")
                       + "".join(f" --set {item}" for item in args.overrides) + (" --ship" if args.ship else ""))
            stage_write(out, cfg, WEIGHTS_DIR if args.ship else None, command)
            continue
        marker = _done_marker(out, stage)
        if marker.is_file():
            print(f"[build_tiny] stage {stage}: done before, skipped", flush=True)
            continue
        seconds = launch(stage, out, args.fast, args.procs, args.overrides)
        marker.write_text(json.dumps({"stage": stage, "wall_seconds": seconds, "procs": args.procs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
