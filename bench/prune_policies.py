"""Ablation of the ``prune-blocks`` selection policies (Neodragon Fig. 9): blocks chosen, quality after Stage 1.

    python bench/prune_policies.py [--model builtin:pyramid-tiny | --from-build out/build-tiny] [--random-init]
                                   [--policies visual text average combined impact] [--main-run]
                                   [--set KEY=VALUE ...] [--videos 4] [--out out/prune-policies] [--threads 1]

Every policy runs the pass on a fresh copy of the pipeline with the same seed, data and settings, Stage 1 only
(``stage2_steps: 0``), in one shared artifact folder: block importance and visual impact are measured once (the
pass caches them by model and settings), the latent training set is encoded once, policies that choose the same
blocks share their Stage 1 checkpoint, and identical models are scored once (quality cache).

``--main-run`` first runs the full pass (Stage 1 + Stage 2, the configured policy) through ``neoc run`` on a
one-pass recipe written to ``OUT/recipe.yaml`` (``OUT/run/report.json`` is the CONTRACT report, quality before /
after from the runner); the policy runs then reuse that run's artifact folder (its scores, data, Stage 1 checkpoint
and teacher quality).

``--from-old-weights DIR`` loads a pre-rebuild ``pyramid-tiny.{safetensors,json}`` (wider VAE, trained at
128x128) and runs it at 64x64 — a trained model to rehearse the measurement on while the shipped weights are
rebuilt. ``--from-build`` assembles the tiny pipeline from a ``neoc.zoo.build_tiny`` output folder (VAE + EMA denoiser +
latent norms) instead of the shipped weights — for measuring before ``builtin:pyramid-tiny``'s weights exist.

Writes ``OUT/policies.json`` and ``OUT/policies.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

PAPER_TABLE4 = {"24 blocks (teacher)": 80.31, "18 blocks, stage 1": 78.39, "18 blocks, stage 2": 80.21}


def parse_sets(items: list[str]) -> dict:
    import yaml

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        params[key] = yaml.safe_load(value)
    return params


#: the tiny VAE before the 64x64 rebuild (wider, trained on 128x128 clips): for --from-old-weights only
OLD_TINY_VAE = {"decoder_block_out_channels": [32, 64, 64, 64], "encoder_block_out_channels": [32, 64, 64, 64],
                "sample_size": 128}


def old_weights_pipeline(folder: Path):
    """The tiny pipeline from a pre-rebuild ``pyramid-tiny.{safetensors,json}`` pair (its wider VAE), generating at
    the current 64x64 size: a trained model for rehearsing the measurement, off its 128x128 training size."""
    from neoc.models.text_encoders import PromptEncoderBundle
    from neoc.zoo import model_configs as mc
    from neoc.zoo import text_configs as tc
    from neoc.zoo.builtin import assemble, load_role_weights, native_schedule, tiny_spec

    meta = json.loads((folder / "pyramid-tiny.json").read_text())
    pipe = assemble(tiny_spec(tuple(meta["latent_norm"])), native_schedule(*meta["guidance"]), mc.TINY_MMDIT_CONFIG,
                    {**mc.TINY_VAE_CONFIG, **OLD_TINY_VAE}, tc.TINY_T5_CONFIG, tc.TINY_CLIP_L_CONFIG,
                    tc.TINY_CLIP_G_CONFIG, prompt_encoder=PromptEncoderBundle.tiny(), source="builtin:pyramid-tiny")
    load_role_weights(pipe, folder / "pyramid-tiny.safetensors")
    pipe.info["weights"] = {"file": str(folder / "pyramid-tiny.safetensors"), "training": "pre-rebuild weights"}
    pipe.source = f"builtin:pyramid-tiny (pre-rebuild weights from {folder}, run at 64x64)"
    return pipe


def build_pipeline(args):
    from neoc import sources

    if args.from_old_weights is not None:
        return old_weights_pipeline(args.from_old_weights)
    if args.from_build is None:
        return sources.load_source(args.model, random_init=args.random_init)
    from neoc.zoo.build_tiny import candidate_pipeline

    pipe = candidate_pipeline(args.from_build)
    pipe.info["weights"] = {"file": str(args.from_build), "training": "build_tiny output folder"}
    pipe.source = f"builtin:pyramid-tiny (weights from {args.from_build})"
    return pipe


def fmt(q: dict | None, key: str = "total") -> str:
    return "n/a" if not q else f"{q[key]:.4f}"


def main_run(args, params: dict) -> Path:
    """The full pass through ``neoc run`` on a one-pass recipe; returns the pass's artifact folder."""
    import yaml

    from neoc.runner import run_recipe

    recipe = {"model": args.model, "seed": args.seed, "eval": {"num_videos": args.videos},
              "passes": [{"name": "prune-blocks", **params, "quality_videos": args.videos}]}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_dir = args.out / "run"
    start = time.time()
    run_recipe(str(path), out=str(run_dir), resume=True, quiet=True)
    print(f"[prune-policies] main run: {run_dir}/report.json ({time.time() - start:.0f} s)", flush=True)
    return next(run_dir.glob("passes/*-prune-blocks")) / "artifacts"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:pyramid-tiny")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--from-build", type=Path, default=None, help="assemble the tiny pipeline from a build folder")
    parser.add_argument("--from-old-weights", type=Path, default=None,
                        help="a folder with pre-rebuild pyramid-tiny.{safetensors,json} (rehearsal only)")
    parser.add_argument("--policies", nargs="+", default=["visual", "text", "average", "combined", "impact"])
    parser.add_argument("--full", action="store_true",
                        help="without --main-run: first the full pass (Stage 1 + 2, configured policy) in-process")
    parser.add_argument("--main-run", action="store_true", help="first the full pass through `neoc run`")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="pass parameters shared by every run, e.g. --set keep=6 --set stage1_steps=100")
    parser.add_argument("--videos", type=int, default=4, help="toy-quality videos per model (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/prune-policies"))
    parser.add_argument("--work", type=Path, default=None, help="artifact folder to share (default OUT/work)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import neoc.passes  # noqa: F401  (registers the passes)
    from neoc.config import build_config
    from neoc.pass_api import PassContext
    from neoc.passes.prune_blocks import PruneBlocks, PruneBlocksConfig

    params = parse_sets(args.sets)
    work = args.work or args.out / "work"
    main_metrics = None
    if args.main_run:
        if args.from_build is not None or args.from_old_weights is not None:
            raise SystemExit("--main-run goes through `neoc run`, which needs --model (not --from-build)")
        work = main_run(args, params)
        pass_json = work.parent / "pass.json"
        if pass_json.is_file():
            main_metrics = json.loads(pass_json.read_text()).get("metrics")
    base = build_pipeline(args)
    for module in base.components.values():
        module.eval()

    rows, teacher_quality, importance, impact = [], None, None, None
    if args.full and not args.main_run:
        config = build_config(PruneBlocksConfig, {**params, "quality_videos": args.videos}, "--set")
        start = time.time()
        result, _ = PruneBlocks(config).apply(base.clone(), PassContext(seed=args.seed, work_dir=work, quiet=True))
        main_metrics = result.metrics
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "main_metrics.json").write_text(json.dumps(main_metrics, indent=1, default=str))
        print(f"[prune-policies] full pass: removed {main_metrics['removed_blocks']}, quality teacher "
              f"{fmt(main_metrics.get('quality_teacher'))} stage 1 {fmt(main_metrics.get('quality_stage1'))} "
              f"stage 2 {fmt(main_metrics.get('quality_stage2'))} ({time.time() - start:.0f} s)", flush=True)
    for policy in args.policies:
        config = build_config(PruneBlocksConfig, {**params, "policy": policy, "stage2_steps": 0,
                                                  "quality_videos": args.videos}, "--set")
        ctx = PassContext(seed=args.seed, work_dir=work, quiet=True)
        start = time.time()
        result, _ = PruneBlocks(config).apply(base.clone(), ctx)
        m = result.metrics
        teacher_quality = teacher_quality or m.get("quality_teacher")
        importance, impact = m["importance"], m["visual_impact"]
        rows.append({"policy": policy, "removed": m["removed_blocks"], "quality_stage1": m.get("quality_stage1"),
                     "val_stage1": m["validation"]["stage1"], "val_pruned": m["validation"]["pruned"],
                     "stage1_seconds": m["training"]["stage1"]["seconds"],
                     "stage1_resumed_from": m["training"]["stage1"]["resumed_from"],
                     "seconds": round(time.time() - start, 1), "quality_note": m.get("quality_note")})
        print(f"[prune-policies] {policy:9s} removed {m['removed_blocks']} quality_stage1 "
              f"{fmt(m.get('quality_stage1'))} val {m['validation']['stage1']['data_fm']:.4f} "
              f"({time.time() - start:.0f} s)", flush=True)

        write(args, base, params, teacher_quality, importance, impact, rows, main_metrics)  # after every policy
    print(write(args, base, params, teacher_quality, importance, impact, rows, main_metrics))
    if main_metrics:  # the shared artifact folder's figure is the last policy's: redraw the main run's
        print(f"[prune-policies] {replot(main_metrics, args.out / 'importance.png')}")
    return 0


def replot(metrics: dict, path: Path) -> Path:
    """Fig. 7-style figure of a finished run from its metrics (importance rows, visual impact, policy scores)."""
    from neoc.prune.importance import BlockImportance
    from neoc.prune.plot import importance_plot
    from neoc.prune.visual import VisualImpact

    rows = metrics["importance"]
    branches = {b: [r.get(f"text_{b}") for r in rows] for b in ("negative", "positive") if f"text_{b}" in rows[0]}
    importance = BlockImportance([r["visual"] for r in rows], [r["text"] for r in rows], text_by_branch=branches,
                                 calls=metrics.get("importance_probe", {}).get("denoiser_calls", 0),
                                 videos=metrics.get("importance_probe", {}).get("videos", 0))
    impact = VisualImpact.from_dict(metrics["visual_impact"]) if metrics.get("visual_impact") else None
    scores = {int(k): v for k, v in (metrics.get("policy_scores") or {}).items()}
    return importance_plot(importance, path, metrics["removed_blocks"], impact, scores or None)


def write(args, base, params, teacher_quality, importance, impact, rows, main_metrics) -> str:
    out = {"source": base.source, "seed": args.seed, "settings": params, "videos": args.videos,
           "teacher_quality": teacher_quality, "importance": importance, "visual_impact": impact,
           "policies": rows, "main_run": main_metrics and {
               k: main_metrics.get(k) for k in ("params_before", "params_after", "removed_blocks", "policy",
                                                "quality_teacher", "quality_stage1", "quality_stage2",
                                                "validation", "training")}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "policies.json").write_text(json.dumps(out, indent=1, default=str))
    text = markdown(out)
    (args.out / "policies.md").write_text(text)
    return text


def markdown(out: dict) -> str:
    lines = [f"prune-blocks selection policies on `{out['source']}`, seed {out['seed']}, settings "
             f"`{json.dumps(out['settings'])}`, {out['videos']} quality videos (toy-world eval prompts).", ""]
    if out["importance"]:
        lines += ["| block | BI visual | BI text | BI text (positive) | BI text (negative) | PSNR drop-one (dB) | "
                  "LPIPS drop-one | quality drop |", "|---|---|---|---|---|---|---|---|"]
        by = {b["block"]: b for b in (out["visual_impact"] or {}).get("blocks", [])}

        def num(value, digits=4):
            return "—" if value is None else f"{value:.{digits}f}"

        for row in out["importance"]:
            b = by.get(row["block"], {})
            lines.append(f"| {row['block']} | {num(row['visual'])} | {num(row['text'])} | "
                         f"{num(row.get('text_positive'))} | {num(row.get('text_negative'))} | "
                         f"{num(b.get('psnr_db'), 2)} | {num(b.get('lpips'))} | {num(b.get('quality_drop'))} |")
        lines.append("")
    teacher = out["teacher_quality"]
    lines += [f"Teacher (unpruned) quality: total {fmt(teacher)}, quality {fmt(teacher, 'quality')}, "
              f"semantic {fmt(teacher, 'semantic')}.", "",
              "| policy | removed blocks | total (stage 1) | quality | semantic | val flow loss pruned -> stage 1 | "
              "teacher MSE stage 1 |", "|---|---|---|---|---|---|---|"]
    for r in out["policies"]:
        q = r["quality_stage1"]
        lines.append(f"| {r['policy']} | {r['removed']} | {fmt(q)} | {fmt(q, 'quality')} | {fmt(q, 'semantic')} | "
                     f"{r['val_pruned']['data_fm']:.4f} -> {r['val_stage1']['data_fm']:.4f} | "
                     f"{r['val_stage1'].get('teacher_mse', float('nan')):.4f} |")
    main = out.get("main_run")
    if main:
        lines += ["", f"Main run ({main['policy']}, removed {main['removed_blocks']}, "
                      f"{main['params_before']:,} -> {main['params_after']:,} denoiser params): teacher "
                      f"{fmt(main['quality_teacher'])}, stage 1 {fmt(main['quality_stage1'])}, stage 2 "
                      f"{fmt(main['quality_stage2'])}; held-out flow loss "
                      + ", ".join(f"{k} {v['data_fm']:.4f}" for k, v in main["validation"].items())]
    lines += ["", "Paper (Table 4, VBench total): " + ", ".join(f"{k} {v}" for k, v in PAPER_TABLE4.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
