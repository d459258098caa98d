"""A Table-2-like comparison of the text-encoder distillation modes (Neodragon §3.1): RM, EM, LORA, TDT5.

    python bench/text_encoder_modes.py [--model builtin:pyramid-tiny | --from-build out/build-tiny] [--random-init]
                                       [--modes RM EM LORA TDT5]
                                       [--set KEY=VALUE ...] [--videos 4] [--out out/text-encoder-modes]
                                       [--threads 2] [--prompts FILE] [--from-run RUN_DIR]

Runs the ``replace-text-encoder`` pass once per mode on a fresh copy of the pipeline, with the same seed, data and
settings (``--set steps=300 --set dt5_steps=300 ...``). The modes share one work folder for the mode-independent
"DistilT5" stage (trained once, reused by every mode through the trainer's resume). Collected per mode: text-side
parameters (text_encoder + context_embedder + context_adapter) on this pipeline and at real scale
(``builtin:pyramid-flow-sd3`` on the meta device, as ``neoc analyze`` counts them), cosine similarity and MSE of
the context tokens on held-out prompts, and toy-world quality (total / quality / semantic) of videos generated
with the student text side, against the teacher's on the same prompts and seeds. Writes ``table.md`` and
``table.json`` into ``--out``.

The paper's VBench numbers are not reproducible offline; the toy-world instrument (``neoc eval``) stands in.
``--from-build`` takes the text side (T5 + context embedder, EMA weights) from a ``neoc.zoo.build_tiny`` output
folder's denoiser checkpoint, for measuring cosine / MSE before the shipped weights exist (no quality then).
``--from-run`` reuses a `neoc run` of a recipe with this pass (e.g. examples/replace-text-encoder/recipe.yaml):
with the same settings its finished training stages are picked up instead of re-trained, and its quality
"before" is the teacher's row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

PAPER_TABLE2 = {  # #params TE+CA (B), VBench total / quality / semantic — for reference
    "teacher": (4.732, 80.31, 83.68, 66.81), "RM": (0.260, 79.64, 83.71, 63.39), "EM": (0.266, 79.16, 83.56, 61.55),
    "LORA": (0.136, 64.74, 74.94, 24.08), "TDT5": (0.136, 79.20, 83.44, 62.12)}


def real_scale_params(mode: str | None) -> int:
    """Text-side parameters of builtin:pyramid-flow-sd3 before (mode None) or after the pass's rewrite."""
    from neoc.passes.replace_text_encoder import ReplaceTextEncoder, ReplaceTextEncoderConfig, text_side_params
    from neoc.zoo.builtin import build

    pipe = build("builtin:pyramid-flow-sd3", device="meta")
    if mode is not None:
        ReplaceTextEncoder(ReplaceTextEncoderConfig(mode=mode)).analyze(pipe)
    return text_side_params(pipe)


def load_build_text_side(pipeline, build_dir: Path) -> None:
    """T5 + context embedder from the newest denoiser checkpoint of a build_tiny folder (its EMA weights)."""
    from safetensors.torch import load_file

    from neoc.models.checkpoint import load_state_dict_strict
    from neoc.train.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(build_dir / "denoiser")
    if checkpoint is None:
        raise SystemExit(f"{build_dir}/denoiser: no checkpoint yet")
    tensors = load_file(str(checkpoint / "ema.safetensors"))
    for role in ("text_encoder", "context_embedder"):
        state = {k[len(role) + 1:]: v.float() for k, v in tensors.items() if k.startswith(role + ".")}
        load_state_dict_strict(pipeline.component(role), state, f"{checkpoint} [{role}]")
    pipeline.source = f"{pipeline.source}, text side from {checkpoint}"


def parse_sets(items: list[str]) -> dict:
    import yaml

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        params[key] = yaml.safe_load(value)
    return params


def fmt_quality(q: dict | None) -> str:
    if not q:
        return "n/a | n/a | n/a"
    return f"{q['total']:.4f} | {q['quality']:.4f} | {q['semantic']:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:pyramid-tiny")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--from-build", type=Path, default=None,
                        help="text side from a build_tiny folder's latest denoiser checkpoint (EMA)")
    parser.add_argument("--modes", nargs="+", default=["RM", "EM", "LORA", "TDT5"])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--videos", type=int, default=4, help="toy-quality videos per measurement (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/text-encoder-modes"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=Path, default=None,
                        help="evaluation prompts (the recipe's eval.prompts; excluded from training)")
    parser.add_argument("--from-run", type=Path, default=None,
                        help="a `neoc run` folder of a recipe with this pass: share its training folder (same "
                             "settings -> its finished stages are reused) and its quality-before as the teacher's")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import logging

    from neoc import sources
    from neoc.config import build_config, config_to_dict
    from neoc.pass_api import EvalData, PassContext
    from neoc.eval.pipeline_quality import quality_skip_reason
    from neoc.passes.replace_text_encoder import (ReplaceTextEncoder, ReplaceTextEncoderConfig, _quality,
                                                  text_side_params)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("neoc")
    args.out.mkdir(parents=True, exist_ok=True)
    shared_train = args.out / "train"  # the DistilT5 stage, shared by the modes
    run_baseline, run_settings = None, {}
    if args.from_run is not None:
        folders = sorted(args.from_run.glob("passes/*-replace-text-encoder/artifacts"))
        if not folders:
            raise SystemExit(f"{args.from_run}: no replace-text-encoder pass folder")
        shared_train = folders[0] / "train"
        report = json.loads((args.from_run / "report.json").read_text())
        run_baseline = (report.get("quality") or {}).get("before")
        resolved = json.loads((args.from_run / "recipe.resolved.json").read_text())
        if args.prompts is None and resolved["eval"]["prompts"]:
            args.prompts = Path(resolved["eval"]["prompts"])
        entry = next(p for p in resolved["passes"] if p["name"] == "replace-text-encoder")
        run_settings = {k: v for k, v in entry.items() if k not in ("name", "mode", "quality_videos")}
        args.seed = resolved["seed"]
    shared_train.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    base = sources.load_source(args.model, random_init=args.random_init or args.from_build is not None)
    if args.from_build is not None:
        load_build_text_side(base, args.from_build)
    base_params = text_side_params(base)
    extras = {}
    settings = {**run_settings, **parse_sets(args.sets)}  # the run's pass settings, then --set
    probe = build_config(ReplaceTextEncoderConfig, {**settings, "quality_videos": args.videos}, "--set")
    reason = quality_skip_reason(base, probe.quality_videos)
    teacher_quality = None
    if reason is None and run_baseline and run_baseline.get("num_videos") == args.videos \
            and run_baseline.get("seed") == args.seed:
        teacher_quality = extras["quality_baseline"] = run_baseline
        log.info("teacher quality %.4f (from %s)", teacher_quality["total"], args.from_run)
    elif reason is None:
        start = time.time()
        teacher_quality = _quality(base, args.videos, args.seed, quiet=True)
        extras["quality_baseline"] = teacher_quality
        log.info("teacher quality %.4f (%.0f s)", teacher_quality["total"], time.time() - start)
    else:
        log.info("quality not measured: %s", reason)

    rows = {"teacher": {"params": base_params, "params_real": real_scale_params(None), "quality": teacher_quality}}
    for mode in args.modes:
        config = build_config(ReplaceTextEncoderConfig,
                              {**settings, "mode": mode, "quality_videos": args.videos}, "--set")
        work = args.out / mode
        work.mkdir(exist_ok=True)
        if (work / "train").is_symlink() and (work / "train").resolve() != shared_train.resolve():
            (work / "train").unlink()
        if not (work / "train").exists():
            os.symlink(shared_train.resolve(), work / "train")
        ctx = PassContext(seed=args.seed, work_dir=work, quiet=True, log=log, extras=dict(extras),
                          eval=EvalData(prompts=args.prompts))
        start = time.time()
        result, seconds = ReplaceTextEncoder(config).apply(base.clone(), ctx)
        m = result.metrics
        rows[mode] = {"params": m["params_after"], "params_real": real_scale_params(mode),
                      "cosine": m["cosine_similarity"], "mse": m["mse"], "quality": m.get("quality_after"),
                      "eval_sets": {k: {"cosine": v["cosine_similarity"], "mse": v["mse"]}
                                    for k, v in m["eval_sets"].items()},
                      "train": m["train"], "seconds": round(time.time() - start, 1),
                      **({"lora_trainable_params": m["lora_trainable_params"]} if mode == "LORA" else {})}
        log.info("%s: cosine %.4f mse %.5f (%.0f s)", mode, m["cosine_similarity"], m["mse"], seconds)

    config_used = {k: v for k, v in config_to_dict(probe).items() if k != "mode"}
    source = base.source if args.from_build is not None else \
        args.model + (" (random init)" if args.random_init else "")
    evaluated = f"`{args.prompts}`" if args.prompts else "held-out toy + real prompts"
    lines = [f"Text-encoder distillation modes on `{source}`, "
             f"seed {args.seed}, settings {json.dumps(settings)}, {args.videos} quality videos; "
             f"cosine / MSE of the context tokens on {evaluated} (never trained on).",
             "", "| method | params TE+CE+CA (this model) | params at SD3 scale | cosine | MSE "
             "| cosine toy / real held-out | toy total | toy quality | toy semantic | paper params "
             "| paper VBench tot/qual/sem |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for name, row in rows.items():
        paper = PAPER_TABLE2[name]
        cosine = "1 (teacher)" if name == "teacher" else f"{row['cosine']:.4f}"
        mse = "0" if name == "teacher" else f"{row['mse']:.5f}"
        sets = row.get("eval_sets", {})
        per_set = " / ".join(f"{sets[k]['cosine']:.3f}" for k in ("toy_eval", "real_eval") if k in sets) or "—"
        lines.append(f"| {name} | {row['params']:,} | {row['params_real'] / 1e9:.3f}B | {cosine} | {mse} | "
                     f"{per_set} | {fmt_quality(row['quality'])} | {paper[0]}B | {paper[1]} / {paper[2]} / "
                     f"{paper[3]} |")
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "table.json").write_text(json.dumps({"model": args.model, "sets": settings,
                                                     "videos": args.videos, "rows": rows,
                                                     "prompts": str(args.prompts) if args.prompts else None,
                                                     "config": config_used}, indent=2, default=str))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
