"""``distill-steps``: Pyramidal DMD step distillation (Neodragon §3.4, Table 6): 480 -> 21 NFE for 49 frames.

The pipeline's denoiser is the teacher (frozen, CFG at the base model's guidance). A student copy is distilled to a
few-step schedule — ``1-1-1`` (21 NFE for 49 frames) or ``4-4-4`` (84) steps per pyramid stage for every latent
frame, CFG distilled in — by

* ``method: dmd`` — Pyramidal DMD (:mod:`neoc.distill.dmd`): one-Euler-step clean-latent student scaled by
  ``sigma / (sigma_start - sigma_end)``, a fake score trained with pyramidal flow matching on student samples
  (``tau ~ U(0, 1)``), the DMD gradient at four fixed ``tau`` levels weighted per sample by
  ``1 / ||teacher - conditional flow||_1``, the Cauchy teacher loss (weight ``teacher_loss_weight`` = 0.5), one
  student update per ``fake_updates_per_student`` (2) fake-score updates; ``gan_weight`` > 0 adds a DMD2-style
  GAN term whose head on the fake score (or, ``gan_features: teacher``, the frozen teacher) tells the training
  latents from student samples (off by default; on the last pyramid stage unless ``gan_stages`` says otherwise),
  ``critic_warmup`` trains fake score and head alone first;
* ``method: progressive`` — Pyramidal progressive distillation (:mod:`neoc.distill.progressive`): each student step
  regresses ``teacher_steps``-per-stage CFG teacher Euler steps;
* ``method: adversarial`` — progressive x10 plus a hinge GAN whose discriminator is a 4-layer MLP on frozen-teacher
  features (:mod:`neoc.distill.adversarial`).

Training runs on :class:`neoc.train.loop.Trainer` (checkpoints in the pass's artifact folder, so ``neoc run
--resume`` continues an interrupted distillation; DDP under torchrun). A collapse guard (NaN, frame variance, colour
histogram against the data) checks student videos every ``guard_every`` steps and at the end and fails the pass with
a clear message instead of writing a broken student. Afterwards the denoiser is replaced, the graph is re-emitted
with the student schedule and NFE is counted from it.

Metrics (CONTRACT): ``method``, ``schedule``, ``nfe_before``, ``nfe_after``, ``quality_teacher_same_steps`` (the
undistilled teacher at the student's step counts, CFG kept) and ``quality_student`` (eval dicts; ``None`` with a
``quality_note`` where the toy-world instrument does not apply), plus training and guard figures.

``lr`` / ``fake_lr`` / ``batch_size`` left unset follow the profile: ``tiny`` 1e-4 / 1e-4 / 4 (a tiny model, a few
hundred CPU steps), ``real`` 5e-6 / 5e-6 / 1 per process (video-DMD practice, component-facts §2).
"""

from __future__ import annotations

from typing import Literal

import attrs

from neoc.config import ConfigValueError, in_range
from neoc.errors import CheckFailed, InputError
from neoc.pass_api import Pass, PassResult
from neoc.registry import register_pass
from neoc.eval.pipeline_quality import quality_skip_reason

PROFILE_DEFAULTS = {"tiny": {"lr": 1e-4, "fake_lr": 1e-4, "batch_size": 4},
                    "real": {"lr": 5e-6, "fake_lr": 5e-6, "batch_size": 1}}


def _help(text: str) -> dict:
    return {"help": text}


def _dmd_only(inst, attribute, value) -> None:
    """attrs validator: a DMD-only option set with another method is a recipe error, not a silent no-op."""
    if value and inst.method != "dmd":
        raise ConfigValueError(attribute.name, f"{attribute.name} applies to method 'dmd', not {inst.method!r}")


def _needs_gan(inst, attribute, value) -> None:
    """attrs validator: a GAN-term option without ``gan_weight`` would do nothing."""
    if value is not None and inst.gan_weight == 0:
        raise ConfigValueError(attribute.name, f"{attribute.name} shapes the GAN term: set gan_weight > 0 too")


@attrs.frozen
class DistillStepsConfig:
    method: Literal["dmd", "progressive", "adversarial"] = attrs.field(default="dmd", metadata=_help(
        "dmd | progressive | adversarial (progressive + hinge GAN, 4-layer MLP on teacher features)"))
    schedule: Literal["1-1-1", "4-4-4"] = attrs.field(default="1-1-1", metadata=_help(
        "student steps per pyramid stage, every latent frame (1-1-1 = 21 NFE for 49 frames)"))
    steps: int = attrs.field(default=1000, validator=in_range(1), metadata=_help("optimizer steps"))
    lr: float | None = attrs.field(default=None, validator=in_range(0.0), metadata=_help(
        "student learning rate (unset: profile default)"))
    fake_lr: float | None = attrs.field(default=None, validator=in_range(0.0), metadata=_help(
        "fake-score (dmd) / discriminator (adversarial) learning rate (unset: profile default)"))
    batch_size: int | None = attrs.field(default=None, validator=in_range(1), metadata=_help(
        "latents per step and process (unset: profile default)"))
    fake_updates_per_student: int = attrs.field(default=2, validator=in_range(1), metadata=_help(
        "fake-score updates per student update (dmd; paper 2)"))
    teacher_loss_weight: float = attrs.field(default=0.5, validator=in_range(0.0), metadata=_help(
        "weight of the Cauchy teacher loss (dmd; paper 0.5)"))
    gan_weight: float = attrs.field(default=0.0, validator=[in_range(0.0), _dmd_only], metadata=_help(
        "dmd: weight of a DMD2-style GAN term (head on the fake score, data latents as real; 0: off, the paper's "
        "objective)"))
    disc_lr: float | None = attrs.field(default=None, validator=in_range(0.0), metadata=_help(
        "discriminator head learning rate (dmd GAN term, adversarial; unset: fake_lr)"))
    gan_stages: tuple[int, ...] | None = attrs.field(default=None, validator=[_dmd_only, _needs_gan], metadata=_help(
        "dmd GAN term: pyramid stages it reads (unset: the last, full-resolution stage; the coarse stages' "
        "samples are too noisy to tell data from student)"))
    gan_features: Literal["fake", "teacher"] | None = attrs.field(default=None, validator=[_dmd_only, _needs_gan],
                                                                   metadata=_help(
        "dmd GAN term: the head reads the fake score's last-block tokens (unset: fake, DMD2) or the frozen "
        "teacher's (a feature space the fake score's training does not move)"))
    critic_warmup: int = attrs.field(default=0, validator=[in_range(0), _dmd_only], metadata=_help(
        "dmd: first optimizer steps that train only the fake score (and GAN head) before any student update"))
    rollout: bool = attrs.field(default=False, validator=_dmd_only, metadata=_help(
        "dmd: the DMD term (and GAN) read student samples from its own sampler run (DMD2's backward simulation) "
        "instead of the data's noise path (the paper); the Cauchy loss stays on the data path"))
    teacher_guidance_scale: float | None = attrs.field(default=None, validator=in_range(1.0), metadata=_help(
        "the teacher's CFG on the first frame during distillation (unset: the base model's, as in the paper)"))
    teacher_video_guidance_scale: float | None = attrs.field(default=None, validator=in_range(1.0), metadata=_help(
        "the teacher's CFG on later frames during distillation (unset: the base model's)"))
    teacher_steps: int = attrs.field(default=16, validator=in_range(1), metadata=_help(
        "teacher Euler steps per stage (progressive, adversarial; paper 16)"))
    data: Literal["auto", "toyworld", "teacher"] = attrs.field(default="auto", metadata=_help(
        "training latents: toy-world clips through the VAE encoder, or teacher samples (auto: toyworld for "
        "pyramid-tiny pipelines)"))
    data_videos: int = attrs.field(default=64, validator=in_range(1), metadata=_help("training videos / prompts"))
    first_frame_prob: float = attrs.field(default=0.3, validator=in_range(0.0, 1.0), metadata=_help(
        "probability a step trains the first latent frame"))
    ema_decay: float | None = attrs.field(default=None, validator=in_range(0.0, 1.0), metadata=_help(
        "EMA of the student weights (unset: none)"))
    guard_every: int = attrs.field(default=100, validator=in_range(0), metadata=_help(
        "collapse-guard check every N steps (0: only at the end)"))
    guard_videos: int = attrs.field(default=2, validator=in_range(1), metadata=_help("videos per guard check"))
    min_variance_ratio: float = attrs.field(default=0.1, validator=in_range(0.0), metadata=_help(
        "guard: minimum frame variance relative to the data"))
    max_histogram_l1: float = attrs.field(default=1.5, validator=in_range(0.0, 2.0), metadata=_help(
        "guard: maximum colour-histogram L1 distance to the data"))
    checkpoint_every: int = attrs.field(default=100, validator=in_range(0), metadata=_help(
        "training checkpoint interval (resume)"))
    quality_videos: int = attrs.field(default=8, validator=in_range(0), metadata=_help(
        "toy-quality videos for teacher-same-steps vs student (trained pyramid-tiny only; 0 skips)"))


def student_schedule(schedule, name: str):
    """The student's schedule: ``name`` steps per stage for every latent frame, CFG distilled in (no CFG)."""
    from neoc.distill.train import student_schedule as make

    return make(schedule, name)


@register_pass
class DistillSteps(Pass):
    name = "distill-steps"
    summary = "Pyramidal DMD: a few-step student per pyramid stage (1-1-1 = 21 NFE for 49 frames)"
    paper = "Neodragon §3.4"
    Config = DistillStepsConfig
    runs_after = ("replace-text-encoder", "swap-decoder", "prune-blocks")

    def analyze(self, pipeline) -> None:
        pipeline.with_schedule(student_schedule(pipeline.schedule, self.config.schedule))

    def check_preconditions(self, pipeline, ctx) -> None:
        if pipeline.schedule.temporal != "autoregressive" or pipeline.schedule.num_stages < 2:
            raise CheckFailed(
                f"distill-steps: Pyramidal DMD distils a pyramidal, frame-autoregressive sampler (one student step "
                f"per pyramid stage and latent frame); this pipeline samples with {pipeline.schedule.num_stages} "
                f"stage(s), temporal '{pipeline.schedule.temporal}'")
        denoiser = pipeline.component("denoiser")
        for hook in ("emit_static_inputs", "emit_precomputed_inputs"):
            if getattr(denoiser, hook, None) is not None:
                raise CheckFailed("distill-steps trains the reference denoiser: run it before static-shape / "
                                  "precompute-inputs")
        if pipeline.prompt_encoder is None:
            raise CheckFailed("distill-steps needs the pipeline's tokenizers to encode its training prompts")
        if self.config.gan_stages is not None:
            from neoc.distill.dmd import gan_stage_set

            try:
                gan_stage_set(self.config.gan_stages, pipeline.schedule.num_stages)
            except InputError as exc:
                raise InputError(f"distill-steps: {exc}") from None

    def settings(self, ctx):
        from neoc.distill.train import DistillSettings

        cfg = self.config
        defaults = PROFILE_DEFAULTS.get(ctx.profile, PROFILE_DEFAULTS["tiny"])
        return DistillSettings(
            method=cfg.method, schedule=cfg.schedule, steps=cfg.steps,
            batch_size=cfg.batch_size or defaults["batch_size"],
            lr=cfg.lr if cfg.lr is not None else defaults["lr"],
            fake_lr=cfg.fake_lr if cfg.fake_lr is not None else defaults["fake_lr"],
            fake_updates_per_student=cfg.fake_updates_per_student, teacher_loss_weight=cfg.teacher_loss_weight,
            gan_weight=cfg.gan_weight, disc_lr=cfg.disc_lr, gan_stages=cfg.gan_stages,
            gan_features=cfg.gan_features or "fake",
            critic_warmup=cfg.critic_warmup, rollout=cfg.rollout,
            teacher_guidance_scale=cfg.teacher_guidance_scale,
            teacher_video_guidance_scale=cfg.teacher_video_guidance_scale, teacher_steps=cfg.teacher_steps,
            data=cfg.data, data_videos=cfg.data_videos,
            first_frame_prob=cfg.first_frame_prob, ema_decay=cfg.ema_decay, guard_every=cfg.guard_every,
            guard_videos=cfg.guard_videos, min_variance_ratio=cfg.min_variance_ratio,
            max_histogram_l1=cfg.max_histogram_l1, checkpoint_every=cfg.checkpoint_every, seed=ctx.seed,
            progress=False if ctx.quiet else None)

    def run(self, pipeline, ctx) -> PassResult:
        from neoc.distill.train import distill, teacher_schedule

        cfg = self.config
        settings = self.settings(ctx)
        nfe_before = pipeline.nfe()
        base_schedule = pipeline.schedule
        skip = quality_skip_reason(pipeline, cfg.quality_videos)
        quality_teacher = None
        if skip is None:
            pipeline.with_schedule(teacher_schedule(base_schedule, cfg.schedule))
            quality_teacher = self._quality(pipeline, ctx)
            pipeline.with_schedule(base_schedule)

        result = distill(pipeline, settings, ctx.artifact("train"), resume=True,
                         progress=lambda items, desc: ctx.progress(items, desc), log=ctx.log.info)
        pipeline.replace_component("denoiser", result.student)
        pipeline.with_schedule(result.schedule)
        nfe_after = pipeline.nfe()
        quality_student = self._quality(pipeline, ctx) if skip is None else None

        metrics = {
            "method": cfg.method, "schedule": cfg.schedule, "nfe_before": nfe_before, "nfe_after": nfe_after,
            "quality_teacher_same_steps": quality_teacher, "quality_student": quality_student,
            "teacher_guidance": [base_schedule.guidance_scale, base_schedule.video_guidance_scale],
            "distill_guidance": list(result.guidance),
            "data": result.data_source, "train_steps": result.train.steps,
            "resumed_from": result.train.resumed_from, "final_loss": result.train.final_loss,
            "train_seconds": result.seconds, "guard": result.guard,
            "settings": {"lr": settings.lr, "fake_lr": settings.fake_lr, "batch_size": settings.batch_size,
                         "data_videos": settings.data_videos},
        }
        if skip is not None:
            metrics["quality_note"] = f"skipped: {skip}"
        else:
            metrics["quality_total_gain"] = quality_student["total"] - quality_teacher["total"]
        pipeline.info.setdefault("distillation", {}).update(
            {"method": cfg.method, "schedule": cfg.schedule, "teacher_nfe": nfe_before, "nfe": nfe_after})
        return PassResult(pipeline, modified=True, metrics=metrics)

    def check_postconditions(self, pipeline, result: PassResult, ctx) -> None:
        expected = pipeline.schedule.nfe(pipeline.spec.latent_frames)
        if result.metrics["nfe_after"] != expected or pipeline.nfe() != expected:
            raise CheckFailed(f"distill-steps: the re-emitted graph has NFE {pipeline.nfe()}, the student schedule "
                              f"{expected}")

    def _quality(self, pipeline, ctx) -> dict:
        from neoc.eval.pipeline_quality import evaluate_pipeline

        out = evaluate_pipeline(pipeline, num=self.config.quality_videos, seed=ctx.seed, quiet=ctx.quiet)
        return {k: v for k, v in out.items() if not k.startswith("_")}
