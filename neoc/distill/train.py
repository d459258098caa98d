"""The step-distillation driver: data -> objective -> shared Trainer (DDP under torchrun, resume) -> student.

Used by the ``distill-steps`` pass and by ``bench/distill_table.py``. The teacher is the pipeline's denoiser
(frozen); student and fake score start as copies of it. The collapse guard generates a few videos with the
student schedule every ``guard_every`` steps and once more at the end, and raises
:class:`~neoc.distill.collapse_guard.CollapseError` on a collapse, so no broken student is returned.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import attrs
import torch

from neoc.distill import data as dd
from neoc.distill.collapse_guard import CollapseGuard
from neoc.distill.pyramid import freeze
from neoc.distill.sampling import decode, sample_latents
from neoc.errors import InputError
from neoc.ir.schedule import Schedule

METHODS = ("dmd", "progressive", "adversarial")
SCHEDULES = ("1-1-1", "4-4-4")
DATA_SOURCES = ("auto", "toyworld", "teacher")


def parse_steps(name: str, num_stages: int = 3) -> tuple[int, ...]:
    try:
        steps = tuple(int(x) for x in str(name).split("-"))
    except ValueError:
        raise InputError(f"schedule {name!r}: expected steps per stage like '1-1-1'") from None
    if len(steps) != num_stages or any(s < 1 for s in steps):
        raise InputError(f"schedule {name!r}: expected {num_stages} positive step counts")
    return steps


def student_schedule(schedule: Schedule, name: str) -> Schedule:
    """The student's schedule: ``name`` steps per stage for every latent frame, CFG distilled in (no CFG)."""
    steps = parse_steps(name, schedule.num_stages)
    return attrs.evolve(schedule, first_frame_steps=steps, video_steps=steps, guidance_scale=1.0,
                        video_guidance_scale=1.0, label=f"student {name}")


def teacher_schedule(schedule: Schedule, name: str) -> Schedule:
    """The undistilled teacher at the student's step counts, CFG kept (Table 6's 'Native' rows)."""
    steps = parse_steps(name, schedule.num_stages)
    return attrs.evolve(schedule, first_frame_steps=steps, video_steps=steps, label=f"teacher {name}")


def teacher_guidance(schedule: Schedule) -> tuple[float, float]:
    """The base model's CFG scales (first frame, later frames); 1.0 where it samples without CFG."""
    return (schedule.guidance_scale if schedule.uses_cfg(0) else 1.0,
            schedule.video_guidance_scale if schedule.uses_cfg(1) else 1.0)


@dataclass
class DistillSettings:
    method: str = "dmd"
    schedule: str = "1-1-1"
    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-4
    fake_lr: float = 1e-4
    fake_updates_per_student: int = 2
    teacher_loss_weight: float = 0.5
    gan_weight: float = 0.0               # dmd: DMD2-style GAN on data latents (0: off, the paper's objective)
    disc_lr: float | None = None          # discriminator head lr (dmd GAN term, adversarial); None: fake_lr
    gan_stages: tuple[int, ...] | None = None  # dmd GAN term's pyramid stages; None: the last (full resolution)
    gan_features: str = "fake"            # dmd GAN head reads the fake score's tokens, or the frozen teacher's
    critic_warmup: int = 0                # dmd: first optimiser steps train only fake score (+ GAN head)
    rollout: bool = False                 # dmd: student inputs from its own sampler run, not the data path
    teacher_guidance_scale: float | None = None        # the teacher's CFG, first frame / later frames;
    teacher_video_guidance_scale: float | None = None  # None: the base model's (the paper)
    teacher_steps: int = 16               # progressive: teacher Euler steps per stage
    data: str = "auto"                    # auto | toyworld | teacher
    data_videos: int = 64
    first_frame_prob: float = 0.3
    warmup: int = 10
    grad_clip: float | None = 10.0
    ema_decay: float | None = None
    guard_every: int = 100                # 0: only the final check
    guard_videos: int = 2
    min_variance_ratio: float = 0.1
    max_histogram_l1: float = 1.5
    checkpoint_every: int = 0
    seed: int = 0
    progress: bool | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.data not in DATA_SOURCES:
            raise InputError(f"data {self.data!r}: expected one of {', '.join(DATA_SOURCES)}")
        for name in ("teacher_guidance_scale", "teacher_video_guidance_scale"):
            if getattr(self, name) is not None and getattr(self, name) < 1.0:
                raise InputError(f"{name} {getattr(self, name)}: expected >= 1 (1: no CFG)")
        if self.gan_weight < 0:
            raise InputError(f"gan_weight {self.gan_weight}: expected >= 0")
        if self.critic_warmup < 0:
            raise InputError(f"critic_warmup {self.critic_warmup}: expected >= 0")
        if self.rollout and self.method != "dmd":
            raise InputError(f"rollout applies to method 'dmd', not {self.method!r}")
        if self.critic_warmup and self.method != "dmd":
            raise InputError(f"critic_warmup applies to method 'dmd' (its fake score), not {self.method!r}")
        if self.method == "dmd" and self.critic_warmup >= self.steps:
            raise InputError(f"critic_warmup {self.critic_warmup} leaves no student update in {self.steps} steps")
        from neoc.distill.dmd import GAN_FEATURES

        if self.gan_features not in GAN_FEATURES:
            raise InputError(f"gan_features {self.gan_features!r}: expected one of {', '.join(GAN_FEATURES)}")
        if self.gan_weight > 0 and self.method != "dmd":
            raise InputError(f"gan_weight applies to method 'dmd' (the 'adversarial' method has its own GAN), "
                             f"not {self.method!r}")


@dataclass
class DistillResult:
    student: torch.nn.Module
    schedule: Schedule
    data_source: str
    train: object                          # neoc.train.loop.TrainResult
    guard: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    guidance: tuple[float, float] = (1.0, 1.0)  # the teacher's CFG during distillation (first frame, later)


def make_data(pipe, settings: DistillSettings, progress: Callable) -> dd.DistillData:
    source = settings.data
    if source == "auto":
        source = "toyworld" if (dd.toyworld_available(pipe) is None and pipe.spec.name == "pyramid-tiny") else "teacher"
    if source == "toyworld":
        reason = dd.toyworld_available(pipe)
        if reason is not None:
            raise InputError(f"distill-steps data: toyworld: {reason}")
        return dd.toyworld_data(pipe, settings.data_videos, settings.seed, progress)
    return dd.teacher_data(pipe, settings.data_videos, settings.seed, None, progress)


def _optimizer(objective, settings: DistillSettings) -> torch.optim.Optimizer:
    groups = [{"params": [p for p in objective.student.parameters() if p.requires_grad], "lr": settings.lr}]
    if hasattr(objective, "fake"):
        groups.append({"params": [p for p in objective.fake.parameters() if p.requires_grad], "lr": settings.fake_lr})
    if hasattr(objective, "discriminator"):
        # the discriminator head keeps Adam's momentum (a classifier, not a critic); docs/distill-table.md
        # has how slowly it learns at batch 4 either way
        groups.append({"params": list(objective.discriminator.parameters()), "betas": (0.9, 0.999),
                       "lr": settings.fake_lr if settings.disc_lr is None else settings.disc_lr})
    # betas (0, 0.999) as the video DMDs use for generator and critic (component-facts §2)
    betas = (0.0, 0.999) if settings.method == "dmd" else (0.9, 0.999)
    return torch.optim.AdamW(groups, betas=betas, weight_decay=0.01)


def guard_videos(pipe, student, schedule: Schedule, data: dd.DistillData, count: int, seed: int) -> torch.Tensor:
    videos = []
    for i in range(count):
        latents = sample_latents(pipe, data.cond.rows([i]), data.uncond, pipe.draw_noise(seed + i), schedule,
                                 denoiser=student)
        videos.append(decode(pipe, latents, upsample=False))
    return torch.cat(videos)


def distill(pipe, settings: DistillSettings, out_dir: str | Path | None, resume: bool = True,
            progress: Callable = lambda it, desc: it, log: Callable[[str], None] = lambda msg: None,
            data: dd.DistillData | None = None) -> DistillResult:
    """Distil ``pipe``'s denoiser; ``data`` overrides ``settings.data`` (e.g. latents a build already encoded)."""
    from neoc.distill.adversarial import PyramidalAdversarial
    from neoc.distill.dmd import PyramidalDMD
    from neoc.distill.progressive import PyramidalProgressive
    from neoc.train.loop import TrainConfig, Trainer, warmup_constant

    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    schedule = student_schedule(pipe.schedule, settings.schedule)
    steps = schedule.video_steps
    base = teacher_guidance(pipe.schedule)
    guidance = tuple(b if o is None else float(o) for b, o in
                     zip(base, (settings.teacher_guidance_scale, settings.teacher_video_guidance_scale)))
    data = data if data is not None else make_data(pipe, settings, progress)
    log(f"distill-steps: {settings.method} {settings.schedule}, {data.latents.shape[0]} {data.source} latents, "
        f"teacher CFG {guidance}")
    count = min(settings.guard_videos, data.latents.shape[0])
    guard = CollapseGuard(decode(pipe, data.latents[:count], upsample=False), settings.min_variance_ratio,
                          settings.max_histogram_l1)

    denoiser = pipe.component("denoiser")
    teacher = freeze(copy.deepcopy(denoiser))
    student = copy.deepcopy(denoiser).train()
    for p in student.parameters():
        p.requires_grad_(True)
    if settings.method == "dmd":
        fake = copy.deepcopy(denoiser).train()
        for p in fake.parameters():
            p.requires_grad_(True)
        objective = PyramidalDMD(student, fake, teacher, guidance, schedule.num_stages, schedule.gamma,
                                 settings.teacher_loss_weight, settings.gan_weight, settings.gan_stages,
                                 tuple(steps) if settings.rollout else None, settings.gan_features)
        ratio = settings.fake_updates_per_student
    elif settings.method == "adversarial":
        objective = PyramidalAdversarial(student, teacher, guidance, schedule.num_stages, schedule.gamma,
                                         settings.teacher_steps)
        ratio = 1
    else:
        objective = PyramidalProgressive(student, teacher, guidance, schedule.num_stages, schedule.gamma,
                                         settings.teacher_steps)
        ratio = 1
    config = TrainConfig(steps=settings.steps, out_dir=out_dir, seed=settings.seed, grad_clip=settings.grad_clip,
                         checkpoint_every=settings.checkpoint_every, resume=resume, ema_decay=settings.ema_decay,
                         find_unused_parameters=True, progress=settings.progress, autocast="off",
                         name=f"distill-{settings.method}", log_every=10)
    trainer = Trainer(objective, _optimizer(objective, settings), warmup_constant(settings.warmup), config)

    def run_guard(step: int) -> None:
        was_training = student.training
        report = guard.check(guard_videos(pipe, student, schedule, data, count, settings.seed + 50_000), step)
        log(f"distill-steps guard @ {step}: frame variance {report.frame_variance:.4f} "
            f"(data {report.reference_variance:.4f}), colour histogram L1 {report.histogram_l1:.3f}")
        student.train(was_training)

    def batch_fn(ctx):
        if settings.guard_every and ctx.micro == 0 and ctx.step > 0 and ctx.step % settings.guard_every == 0:
            run_guard(ctx.step)
        student_step = ctx.step >= settings.critic_warmup and (ctx.step % ratio) == ratio - 1
        return dd.make_batch(data, ctx.generator, settings.batch_size, steps, student_step, schedule.num_stages,
                             schedule.gamma, settings.first_frame_prob, jump_noise=settings.rollout)

    result = trainer.fit(batch_fn)
    final = copy.deepcopy(trainer.module.student)
    if trainer.ema is not None:
        state = trainer.ema_state_dict()
        final.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    final.eval()
    student = final
    run_guard(result.steps)
    return DistillResult(final, schedule, data.source, result, [r.as_dict() for r in guard.reports],
                         time.perf_counter() - start, guidance)


def main(argv=None) -> int:
    """``[torchrun --nproc_per_node N] python -m neoc.distill.train --model SRC --out DIR [--method dmd] ...``:
    distil a pipeline's denoiser outside a recipe (DDP when launched by torchrun; rerun to resume) and write the
    student as ``DIR/student.safetensors`` (rank 0)."""
    import argparse
    import json

    from safetensors.torch import save_file

    from neoc import sources
    from neoc.train import distributed as dist_utils

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:pyramid-tiny")
    parser.add_argument("--out", required=True)
    for f in DistillSettings.__dataclass_fields__.values():
        if f.name in ("progress",):
            continue
        kind = type(f.default) if f.default is not None else float
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    args = parser.parse_args(argv)
    settings = DistillSettings(**{k: getattr(args, k) for k in DistillSettings.__dataclass_fields__
                                  if k != "progress"})
    pipe = sources.load_source(args.model)
    out = Path(args.out)
    result = distill(pipe, settings, out / "train", resume=True, log=print)
    if dist_utils.init_distributed(None).is_main:
        save_file({k: v.detach().contiguous() for k, v in result.student.state_dict().items()},
                  str(out / "student.safetensors"))
        (out / "student.json").write_text(json.dumps({"settings": settings.__dict__, "steps": result.train.steps,
                                                      "final_loss": result.train.final_loss,
                                                      "guard": result.guard}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
