"""``prune-blocks``: MMDiT block importance and two-stage finetune (Neodragon §3.3, Figs. 7-11, Tables 4-5).

1. **Block importance** (:mod:`neoc.prune.importance`): ``BI_k = 1 - E[cos(z_k, z_{k+1})]`` for visual and text
   tokens separately, from forward hooks at every denoising step of both CFG passes while the pipeline generates
   ``calib_prompts`` toy-world *train* captions ``samples_per_prompt`` times each (paper: 100 x 5). The last block
   has no text score (its text stream is discarded).
2. **Visual impact, automated** (:mod:`neoc.prune.visual`): each removable block is dropped alone and
   ``impact_prompts`` videos are generated with the same seeds as the full model; PSNR and LPIPS of the frames
   against the full model's, and (trained ``builtin:pyramid-tiny`` only) the toy-world quality drop. This is the
   paper's manual Fig. 8 inspection, automated as its §3.3 suggests.
3. **Selection** (:mod:`neoc.prune.selection`): ``keep`` blocks stay; ``policy`` ranks the removable ones by
   ``visual`` / ``text`` / ``average`` BI, ``impact`` alone, or ``combined`` (average BI + visual impact, mixed by
   ``visual_weight``: the paper's choice). ``blocks`` overrides the choice with explicit ids. The final block is
   never removed. ``metrics.selection`` lists what *every* policy would have removed.
4. **Stage 1** (:mod:`neoc.prune.finetune`): pyramidal flow matching on data — toy-world train clips encoded by
   the pipeline's own VAE encoder (:mod:`neoc.prune.data`), history corrupted with noise — Adam at a fixed LR
   (paper: 300 iterations, 3e-5).
5. **Stage 2**, run after Stage 1 (the paper's curriculum): full-teacher distillation — visual-token MSE and
   text-token cosine feature matching under ``mapping`` (simple | next-block), teacher flow matching and data flow
   matching, each with its weight (a weight of 0 drops the term: Table 5's ablations).

Both stages use the shared trainer (:mod:`neoc.train.loop`: torchrun / DDP, checkpoints every
``checkpoint_every`` steps in the pass's artifact folder, an interrupted pass resumes from them). The text side
stays frozen; only the denoiser changes, and the IR is rewritten with the pruned denoiser.

Measured and reported (``metrics``): CONTRACT keys ``params_before`` / ``params_after`` (denoiser),
``removed_blocks``, ``importance`` (``[{"block", "visual", "text", "text_positive", "text_negative"}]``),
``quality_stage1`` / ``quality_stage2`` (toy-world eval dicts, same prompts and seeds), plus ``quality_teacher``
(the unpruned model), ``quality_pruned`` (pruned, before any finetune; only with ``quality_pruned: true``),
``visual_impact``, ``policy_scores``, ``selection``, and held-out flow-matching losses (``validation``: teacher,
pruned, stage 1, stage 2 on the same fixed batches of eval-split clips; ``teacher_mse`` = distance to the
teacher's velocity). Artifacts: ``importance.png`` (Fig. 7-style scores + visual impact), ``drop_one_frames.png``
(Fig. 8-style grid), ``scores.json``.

Quality is scored only where the toy-world instrument means something (a trained ``builtin:pyramid-tiny``
pipeline): elsewhere ``quality_*`` are None and ``quality_note`` says why.

``python -m neoc.passes.prune_blocks --help`` runs this pass alone (also under ``torchrun``).
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m`: run the module under its package name, so the pass registers once
    import sys

    from neoc.passes.prune_blocks import main

    sys.exit(main())

import hashlib
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import attrs

from neoc.config import in_range
from neoc.errors import CheckFailed
from neoc.pass_api import Pass, PassContext, PassResult
from neoc.prune.surgery import remove_blocks  # noqa: F401  (re-exported: the analysis tests import it from here)
from neoc.registry import register_pass
from neoc.eval.pipeline_quality import quality_skip_reason


def _help(text: str) -> dict:
    return {"help": text}


@attrs.frozen
class PruneBlocksConfig:
    keep: int = attrs.field(default=18, validator=in_range(1), metadata=_help("blocks that stay (paper 18 of 24)"))
    policy: Literal["visual", "text", "average", "combined", "impact"] = attrs.field(
        default="combined", metadata=_help("block ranking: BI visual / text / average, visual impact, or combined"))
    blocks: tuple[int, ...] = attrs.field(default=(), metadata=_help(
        "explicit block ids to remove (overrides policy; the paper's hand-picked set)"))
    calib_prompts: int = attrs.field(default=100, validator=in_range(1),
                                     metadata=_help("calibration prompts for block importance (paper 100)"))
    samples_per_prompt: int = attrs.field(default=5, validator=in_range(1),
                                          metadata=_help("videos per calibration prompt (paper 5)"))
    impact_prompts: int = attrs.field(default=2, validator=in_range(0), metadata=_help(
        "videos per dropped block for the visual impact (0: skip; policies combined/impact need it)"))
    impact_lpips: bool = attrs.field(default=True, metadata=_help("LPIPS in the visual impact (when available)"))
    visual_weight: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0),
                                       metadata=_help("combined policy: weight of the visual impact vs average BI"))
    train_videos: int = attrs.field(default=64, validator=in_range(1),
                                    metadata=_help("toy-world train clips encoded for the finetunes"))
    val_videos: int = attrs.field(default=8, validator=in_range(1),
                                  metadata=_help("eval-split clips for the held-out flow-matching losses"))
    val_batches: int = attrs.field(default=8, validator=in_range(1), metadata=_help("fixed held-out batches"))
    batch_size: int = attrs.field(default=4, validator=in_range(1),
                                  metadata=_help("clips per process and step (paper 4)"))
    first_frame_prob: float = attrs.field(default=0.25, validator=in_range(0.0, 1.0),
                                          metadata=_help("share of steps that train the first latent frame"))
    fg_weight: float = attrs.field(default=0.0, validator=in_range(0.0), metadata=_help(
        "object-weighted flow-matching losses in both stages: weight 1 + w * object share of each latent cell "
        "(toy-world training clips; 0: plain MSE, the paper's)"))
    stage1_steps: int = attrs.field(default=300, validator=in_range(0), metadata=_help("Stage 1 steps (paper 300)"))
    stage1_lr: float = attrs.field(default=3e-5, validator=in_range(0.0),
                                   metadata=_help("Stage 1 Adam LR (paper 3e-5)"))
    stage2_steps: int = attrs.field(default=300, validator=in_range(0), metadata=_help("Stage 2 steps"))
    stage2_lr: float = attrs.field(default=3e-5, validator=in_range(0.0), metadata=_help("Stage 2 Adam LR"))
    mapping: Literal["simple", "next-block"] = attrs.field(
        default="simple", metadata=_help("Stage 2 feature block mapping (paper's deployed model: simple)"))
    w_feature_visual: float = attrs.field(default=1.0, validator=in_range(0.0),
                                          metadata=_help("Stage 2 visual-token MSE weight"))
    w_feature_text: float = attrs.field(default=1.0, validator=in_range(0.0),
                                        metadata=_help("Stage 2 text-token cosine weight"))
    w_teacher_fm: float = attrs.field(default=1.0, validator=in_range(0.0),
                                      metadata=_help("Stage 2 teacher flow-matching weight"))
    w_data_fm: float = attrs.field(default=1.0, validator=in_range(0.0),
                                   metadata=_help("Stage 2 data flow-matching weight"))
    warmup: int = attrs.field(default=0, validator=in_range(0), metadata=_help("linear LR warm-up steps per stage"))
    ema_decay: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0),
                                   metadata=_help("EMA of the student's weights (0: off)"))
    checkpoint_every: int = attrs.field(default=50, validator=in_range(0),
                                        metadata=_help("training checkpoint interval (0: only at the end)"))
    quality_videos: int = attrs.field(default=4, validator=in_range(0), metadata=_help(
        "toy-quality videos for teacher / stage 1 / stage 2 (trained builtin:pyramid-tiny only; 0 skips)"))
    quality_pruned: bool = attrs.field(default=False,
                                       metadata=_help("also score the pruned model before any finetune"))


def analysis_blocks(num_layers: int, keep: int) -> list[int]:
    """Blocks removed by ``neoc analyze`` (no importance scores without running): the ones just before the
    final block. Every non-final block has the same size, so counts do not depend on this choice."""
    drop = num_layers - keep
    return list(range(num_layers - 1 - drop, num_layers - 1))


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def _denoiser_swapped(pipeline, module):
    original = pipeline.component("denoiser")
    pipeline.replace_component("denoiser", module)
    try:
        yield pipeline
    finally:
        pipeline.replace_component("denoiser", original)


def _eval_dict(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


@register_pass
class PruneBlocks(Pass):
    name = "prune-blocks"
    summary = "Score MMDiT blocks (visual/text BI + visual impact), drop the weakest, two-stage finetune"
    paper = "Neodragon §3.3"
    Config = PruneBlocksConfig
    implemented = True

    # ------------------------------------------------------------------ analysis (no training)
    def analyze(self, pipeline) -> None:
        from neoc.errors import InputError

        denoiser = pipeline.component("denoiser")
        n = len(denoiser.transformer_blocks)
        if not 1 <= self.config.keep <= n:
            raise InputError(f"prune-blocks: keep={self.config.keep} but the denoiser has {n} blocks")
        removed = list(self.config.blocks) if self.config.blocks else analysis_blocks(n, self.config.keep)
        remove_blocks(denoiser, removed)
        pipeline.replace_component("denoiser", denoiser)

    # ------------------------------------------------------------------ contract
    def check_preconditions(self, pipeline, ctx: PassContext) -> None:
        cfg = self.config
        denoiser = pipeline.component("denoiser")
        if not hasattr(denoiser, "transformer_blocks") or not hasattr(denoiser, "config"):
            hint = ("run prune-blocks before the deployment passes" if hasattr(denoiser, "mmdit") else
                    "its block importance compares the visual and text streams of joint-attention blocks")
            raise CheckFailed(f"prune-blocks: the denoiser ({type(denoiser).__name__}) is not an MMDiT with "
                              f"transformer_blocks ({hint})")
        n = len(denoiser.transformer_blocks)
        if not 1 <= cfg.keep < n:
            raise CheckFailed(f"prune-blocks: keep={cfg.keep} but the denoiser has {n} blocks (keep must be < {n})")
        if cfg.blocks:
            if len(cfg.blocks) != n - cfg.keep:
                raise CheckFailed(f"prune-blocks: blocks {list(cfg.blocks)} removes {len(cfg.blocks)} blocks, but "
                                  f"keep={cfg.keep} of {n} removes {n - cfg.keep}")
            try:
                from neoc.prune.surgery import check_removal

                check_removal(n, list(cfg.blocks))
            except ValueError as exc:
                raise CheckFailed(f"prune-blocks: blocks: {exc}") from None
        elif cfg.policy in ("combined", "impact") and cfg.impact_prompts == 0:
            raise CheckFailed(f"prune-blocks: policy {cfg.policy} needs the visual impact (impact_prompts > 0)")
        if pipeline.prompt_encoder is None:
            raise CheckFailed("prune-blocks: calibration generates prompts, but the pipeline has no tokenizers")
        if (cfg.stage1_steps or cfg.stage2_steps) and not pipeline.has("vae_encoder"):
            raise CheckFailed("prune-blocks: the finetunes train on clips encoded by the pipeline's vae_encoder, "
                              "and this pipeline has none")

    def check_postconditions(self, pipeline, result: PassResult, ctx: PassContext) -> None:
        denoiser = pipeline.component("denoiser")
        if len(denoiser.transformer_blocks) != self.config.keep:
            raise CheckFailed(f"prune-blocks: the denoiser has {len(denoiser.transformer_blocks)} blocks, "
                              f"expected {self.config.keep}")
        if not denoiser.transformer_blocks[-1].context_pre_only:
            raise CheckFailed("prune-blocks: the final block is no longer the context_pre_only block")
        if denoiser.config.get("num_layers") != self.config.keep:
            raise CheckFailed("prune-blocks: the denoiser's config does not record the new num_layers")
        for stage in ("validation",):
            for name, losses in result.metrics.get(stage, {}).items():
                for key, value in losses.items():
                    if value is None or not math.isfinite(value):
                        raise CheckFailed(f"prune-blocks: {stage} {name} {key} is {value!r}")

    # ------------------------------------------------------------------ run
    def run(self, pipeline, ctx: PassContext) -> PassResult:
        from neoc.ir.pipeline import count_params
        from neoc.ir.runfolder import state_hash
        from neoc.prune import selection
        from neoc.prune.data import FlowData, TextConditioning, encode_toy_latents
        from neoc.prune.finetune import LossWeights, PrunedFlowObjective, train_stage, validation_losses
        from neoc.prune.surgery import kept_blocks, pruned_copy
        from neoc.train import distributed as dist_utils

        cfg, log = self.config, ctx.log
        info = dist_utils.init_distributed()
        for module in pipeline.components.values():
            module.eval()
        teacher = pipeline.component("denoiser")
        n = len(teacher.transformer_blocks)
        home = next(teacher.parameters()).device
        model_key = _hash(state_hash(teacher.state_dict()), pipeline.spec.name, pipeline.schedule.label,
                          list(pipeline.schedule.first_frame_steps), list(pipeline.schedule.video_steps), ctx.seed)

        # ---- 1-2. block importance and visual impact (rank 0 measures, the others read its cache)
        importance, impact = self._scores(pipeline, ctx, model_key, info)
        quality_reason = quality_skip_reason(pipeline, cfg.quality_videos)

        # ---- 3. selection (and what every policy would have chosen)
        choice = {}
        for policy in selection.POLICIES:
            if policy in selection.NEEDS_IMPACT and impact is None:
                continue
            removed_p, scores_p = selection.choose_blocks(importance, cfg.keep, policy, impact, cfg.visual_weight)
            choice[policy] = {"removed": removed_p, "scores": {str(k): v for k, v in scores_p.items()}}
        if cfg.blocks:
            removed = sorted(int(b) for b in cfg.blocks)
            scores = {}
        else:
            removed = choice[cfg.policy]["removed"]
            scores = {int(k): v for k, v in choice[cfg.policy]["scores"].items()}
        kept = kept_blocks(n, removed)
        log.info("prune-blocks: removing blocks %s (policy %s), keeping %s", removed,
                 "explicit" if cfg.blocks else cfg.policy, kept)

        # ---- data: train clips for the finetunes, held-out eval-split clips for validation losses
        cache = ctx.work_dir / "data"
        conditioning = TextConditioning(pipeline)
        stages, gamma = pipeline.schedule.num_stages, pipeline.schedule.gamma
        train_data, train_set = None, None
        for rank_turn in ("main", "others"):  # rank 0 encodes into the cache first, the other ranks then read it
            if (rank_turn == "main") == info.is_main:
                val_set = encode_toy_latents(pipeline, cfg.val_videos, ctx.seed + 101, "eval", cache)
                if cfg.stage1_steps or cfg.stage2_steps:
                    train_set = encode_toy_latents(pipeline, cfg.train_videos, ctx.seed + 11, "train", cache,
                                                   progress=lambda it: ctx.progress(it, "prune-blocks encode"))
            dist_utils.barrier()
        val_batches = FlowData(val_set, pipeline.prompt_encoder, cfg.batch_size, stages, gamma,
                               cfg.first_frame_prob).fixed_batches(cfg.val_batches, ctx.seed + 202)
        if train_set is not None:
            train_data = FlowData(train_set, pipeline.prompt_encoder, cfg.batch_size, stages, gamma,
                                  cfg.first_frame_prob, fg_weight=cfg.fg_weight)

        # ---- quality of the unpruned teacher (the runner's baseline when nothing ran before)
        quality = {"teacher": None, "pruned": None, "stage1": None, "stage2": None}
        if quality_reason is None and info.is_main:
            quality["teacher"] = self._quality_teacher(pipeline, ctx)

        student = pruned_copy(teacher, removed).to(home)
        validation = {"teacher": validation_losses(teacher, conditioning, val_batches),
                      "pruned": validation_losses(student, conditioning, val_batches, teacher)}
        if cfg.quality_pruned and quality_reason is None and info.is_main:
            quality["pruned"] = self._quality(pipeline, student, ctx)

        # ---- 4. Stage 1: data flow matching (checkpoints keyed by what shapes Stage 1 only, so runs that differ
        # in Stage 2 or in how the same blocks were chosen share it)
        data_settings = (cfg.train_videos, cfg.batch_size, cfg.first_frame_prob, cfg.ema_decay, cfg.warmup,
                         info.world_size) + ((cfg.fg_weight,) if cfg.fg_weight else ())  # old keys stay valid
        key1 = _hash(model_key, removed, data_settings, cfg.stage1_steps, cfg.stage1_lr)
        train_root = ctx.work_dir / "train"
        training = {}
        stage1 = PrunedFlowObjective(student, conditioning, LossWeights(data_fm=1.0))
        result1 = train_stage(stage1, train_data, cfg.stage1_steps, cfg.stage1_lr, train_root / f"stage1-{key1}",
                              ctx.seed, "prune_stage1", cfg.ema_decay, cfg.checkpoint_every,
                              min(cfg.warmup, cfg.stage1_steps), ctx.quiet)
        student = stage1.student.to(home).eval()
        stage1.frozen_to(home)  # the trainer moved the text side to its device
        training["stage1"] = self._summary(result1, cfg.stage1_steps, cfg.stage1_lr)
        validation["stage1"] = validation_losses(student, conditioning, val_batches, teacher)
        if quality_reason is None and info.is_main:
            quality["stage1"] = self._quality(pipeline, student, ctx)

        # ---- 5. Stage 2: full-teacher distillation, from the Stage 1 weights (the curriculum)
        weights = LossWeights(visual=cfg.w_feature_visual, text=cfg.w_feature_text, teacher_fm=cfg.w_teacher_fm,
                              data_fm=cfg.w_data_fm)
        if cfg.stage2_steps > 0:
            key2 = _hash(key1, cfg.stage2_steps, cfg.stage2_lr, cfg.mapping, attrs.asdict(weights))
            stage2 = PrunedFlowObjective(student, conditioning, weights, teacher=teacher, kept=kept,
                                         mapping=cfg.mapping)
            result2 = train_stage(stage2, train_data, cfg.stage2_steps, cfg.stage2_lr, train_root / f"stage2-{key2}",
                                  ctx.seed + 1, "prune_stage2", cfg.ema_decay, cfg.checkpoint_every,
                                  min(cfg.warmup, cfg.stage2_steps), ctx.quiet)
            student = stage2.student.to(home).eval()
            stage2.frozen_to(home)  # teacher and text side back where the pipeline runs
            teacher.eval()
            training["stage2"] = {**self._summary(result2, cfg.stage2_steps, cfg.stage2_lr), "mapping": cfg.mapping,
                                  "targets": stage2.targets, "weights": attrs.asdict(weights)}
            validation["stage2"] = validation_losses(student, conditioning, val_batches, teacher)
            if quality_reason is None and info.is_main:
                quality["stage2"] = self._quality(pipeline, student, ctx)
        else:
            training["stage2"] = {"steps": 0, "note": "skipped: stage2_steps is 0"}

        # ---- the IR rewrite: the pruned denoiser replaces the teacher
        params_before = count_params(teacher)
        pipeline.replace_component("denoiser", student)
        metrics = {
            "params_before": params_before,
            "params_after": count_params(student),
            "blocks_before": n,
            "blocks_after": len(student.transformer_blocks),
            "removed_blocks": removed,
            "kept_blocks": kept,
            "policy": "explicit" if cfg.blocks else cfg.policy,
            "importance": importance.rows(),
            "importance_probe": {"videos": importance.videos, "denoiser_calls": importance.calls,
                                 "calib_prompts": cfg.calib_prompts, "samples_per_prompt": cfg.samples_per_prompt},
            "visual_impact": impact.to_dict() if impact is not None else None,
            "policy_scores": {str(k): v for k, v in scores.items()},
            "selection": {p: c["removed"] for p, c in choice.items()},
            "quality_teacher": quality["teacher"],
            "quality_stage1": quality["stage1"],
            "quality_stage2": quality["stage2"],
            "validation": validation,
            "training": training,
        }
        if cfg.quality_pruned:
            metrics["quality_pruned"] = quality["pruned"]
        if quality_reason is not None:
            metrics["quality_note"] = f"skipped: {quality_reason}"
        elif info.is_main:
            metrics["quality_total"] = {k: (v["total"] if v else None) for k, v in quality.items()}
        artifacts = self._artifacts(ctx, importance, impact, removed, scores, metrics) if info.is_main else {}
        dist_utils.barrier()
        log.info("prune-blocks: %d -> %d blocks, %s -> %s params", n, len(student.transformer_blocks),
                 f"{params_before:,}", f"{metrics['params_after']:,}")
        return PassResult(pipeline, modified=True, metrics=metrics, artifacts=artifacts)

    # ------------------------------------------------------------------ pieces
    def _scores(self, pipeline, ctx: PassContext, model_key: str, info):
        """Block importance + visual impact, cached in the artifact folder (keyed by the model and settings)."""
        from neoc.prune.importance import BlockImportance
        from neoc.prune.visual import VisualImpact
        from neoc.train import distributed as dist_utils

        cfg = self.config
        key = _hash(model_key, cfg.calib_prompts, cfg.samples_per_prompt, cfg.impact_prompts, cfg.impact_lpips,
                    quality_skip_reason(pipeline, 1) is None)
        path = ctx.work_dir / f"scores-{key}.json"
        if info.is_main and not path.is_file():
            importance, impact = measure_scores(pipeline, cfg, ctx.seed, ctx)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"importance": importance.to_dict(),
                                        "impact": impact.to_dict() if impact is not None else None}))
            self._frames = impact.frames if impact is not None else {}
        dist_utils.barrier()
        data = json.loads(path.read_text())
        importance = BlockImportance.from_dict(data["importance"])
        impact = VisualImpact.from_dict(data["impact"]) if data["impact"] is not None else None
        if impact is not None:
            impact.frames = getattr(self, "_frames", {})
        return importance, impact

    @staticmethod
    def _summary(result, steps: int, lr: float) -> dict:
        return {"steps": result.steps, "resumed_from": result.resumed_from, "lr": lr,
                "seconds": round(result.wall_seconds, 2), "final_loss": result.final_loss,
                "losses": result.losses[-5:]}

    def _quality_teacher(self, pipeline, ctx: PassContext) -> dict:
        baseline = ctx.extras.get("quality_baseline")
        denoiser = pipeline.component("denoiser")
        if (not ctx.previous and baseline and baseline.get("num_videos") == self.config.quality_videos
                and baseline.get("seed") == ctx.seed):
            path = self._quality_path(pipeline, denoiser, ctx)
            if not path.is_file():  # later runs in this folder (the policy bench) reuse it
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(_eval_dict(dict(baseline))))
            return _eval_dict(dict(baseline))
        return self._quality(pipeline, denoiser, ctx)

    def _quality_path(self, pipeline, denoiser, ctx: PassContext) -> Path:
        from neoc.ir.runfolder import state_hash

        others = {role: state_hash(m.state_dict()) for role, m in pipeline.components.items() if role != "denoiser"}
        key = _hash(state_hash(denoiser.state_dict()), others, pipeline.schedule.label,
                    self.config.quality_videos, ctx.seed)
        return ctx.work_dir / "quality" / f"{key}.json"

    def _quality(self, pipeline, denoiser, ctx: PassContext) -> dict:
        """Toy-world quality with ``denoiser`` in the pipeline; cached in the artifact folder by the denoiser's
        weights, the rest of the pipeline, the prompts and the seed (identical models are scored once)."""
        from neoc.eval.pipeline_quality import evaluate_pipeline

        path = self._quality_path(pipeline, denoiser, ctx)
        if path.is_file():
            return json.loads(path.read_text())
        with _denoiser_swapped(pipeline, denoiser.eval()):
            result = _eval_dict(evaluate_pipeline(pipeline, num=self.config.quality_videos, seed=ctx.seed,
                                                  quiet=ctx.quiet))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
        return result

    def _artifacts(self, ctx: PassContext, importance, impact, removed, scores, metrics) -> dict[str, str]:
        from neoc.prune.plot import frame_grid, importance_plot

        out = {}
        try:
            out["importance_plot"] = str(importance_plot(importance, ctx.artifact("importance.png"), removed, impact,
                                                         scores or None))
            frames = impact.frames if impact is not None else {}
            if frames:
                out["drop_one_frames"] = str(frame_grid(frames, ctx.artifact("drop_one_frames.png"), removed))
        except Exception as exc:  # noqa: BLE001 - a figure must never fail the pass
            ctx.log.warning("prune-blocks: figure failed: %s", exc)
        path = ctx.artifact("scores.json")
        path.write_text(json.dumps({k: metrics[k] for k in ("removed_blocks", "kept_blocks", "policy", "importance",
                                                              "visual_impact", "policy_scores", "selection")},
                                   indent=1))
        out["scores"] = str(path)
        return out


def measure_scores(pipeline, cfg: PruneBlocksConfig, seed: int, ctx: PassContext | None = None):
    """Block importance over the calibration prompts and, when ``impact_prompts`` > 0, the visual impact of
    dropping each removable block (the quality drop only where the toy-world instrument applies)."""
    from neoc.data.toyworld import ToyWorldDataset
    from neoc.prune.importance import block_importance
    from neoc.prune.surgery import removable_blocks
    from neoc.prune.visual import visual_impact

    progress = (lambda desc: (lambda it: ctx.progress(it, desc))) if ctx is not None else (lambda desc: None)
    calib = ToyWorldDataset("train", cfg.calib_prompts, seed + 1)
    prompts = [calib.scene_and_caption(i)[1] for i in range(cfg.calib_prompts)]
    importance = block_importance(pipeline, prompts, cfg.samples_per_prompt, seed,
                                  progress("prune-blocks importance"))
    impact = None
    if cfg.impact_prompts:
        data = ToyWorldDataset("train", cfg.impact_prompts, seed + 2)
        items = [data.scene_and_caption(i) for i in range(cfg.impact_prompts)]
        targets = [s for s, _ in items] if quality_skip_reason(pipeline, 1) is None else None
        n = len(pipeline.component("denoiser").transformer_blocks)
        impact = visual_impact(pipeline, removable_blocks(n), [t for _, t in items], seed + 3, targets,
                               cfg.impact_lpips, progress("prune-blocks visual impact"))
    return importance, impact


# ---- standalone entry point (one process or torchrun) ---------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run this pass alone on a model source; rank 0 writes ``OUT/pipeline`` and ``OUT/metrics.json``."""
    from neoc.pass_main import standalone_main

    return standalone_main(PruneBlocks, PruneBlocksConfig, "neoc.passes.prune_blocks", ('params_before', 'params_after', 'removed_blocks', 'quality_total', 'validation'), argv, eval_option=None)


__all__ = ["PruneBlocks", "PruneBlocksConfig", "analysis_blocks", "remove_blocks", "measure_scores",
           "quality_skip_reason"]
