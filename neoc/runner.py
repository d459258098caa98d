"""``neoc run``: validate everything, then load the model, run the passes, build the target, write the report.

Order of work, so that bad input never leaves a half-written run folder:

1. recipe, overrides, model source, pass/target availability are validated (InputError, nothing written);
2. the run folder gets ``status.json`` = running and a ``run.log``;
3. passes run through the :class:`~neoc.manager.PassManager` (cached, resumable);
4. the target builds; quality, cost and latency are measured before/after;
5. ``pipeline/`` is written atomically, then the reports, then ``status.json`` = complete.
A failure writes ``status.json`` = failed and ``report.partial.json``; never ``report.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path

from neoc import registry, sources
from neoc.errors import InputError
from neoc.eval.cost import analyze_pipeline
from neoc.ir.runfolder import save_pipeline
from neoc.manager import PassManager
from neoc.pass_api import EvalData, PassContext
from neoc.recipe import Recipe, check_implemented, load_recipe
from neoc.report.writer import empty_report, write_reports

log = logging.getLogger("neoc")


def default_out(recipe_path: str) -> Path:
    return Path("runs") / Path(recipe_path).stem


def _status(out: Path, status: str, **extra) -> None:
    tmp = out / "status.json.tmp"
    tmp.write_text(json.dumps({"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}, indent=2))
    os.replace(tmp, out / "status.json")


def _attach_log(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("neoc").addHandler(handler)
    logging.getLogger("neoc").setLevel(logging.INFO)
    return handler


def run_recipe(recipe_path: str, model: str | None = None, out: str | None = None, resume: bool = False,
               sets: tuple[str, ...] = (), quiet: bool = False) -> Path:
    recipe = load_recipe(recipe_path, model=model, overrides=sets)
    sources.classify(recipe.model)
    check_implemented(recipe)
    out_dir = Path(out) if out else default_out(recipe_path)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not resume:
        raise InputError(f"--out {out_dir}: folder exists and is not empty; pass --resume to continue it "
                         "(finished passes are reused from its cache) or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").unlink(missing_ok=True)  # a resumed run is not complete until it finishes
    _status(out_dir, "running", recipe=recipe.path, model=recipe.model)
    (out_dir / "recipe.resolved.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    handler = _attach_log(out_dir)
    report = empty_report(recipe.path, recipe.model)
    try:
        _run(recipe, out_dir, resume, quiet, report)
    except BaseException as exc:
        report["status"] = "failed"
        report["error"] = f"{type(exc).__name__}: {exc}"
        log.error("run failed: %s\n%s", exc, traceback.format_exc())
        (out_dir / "report.partial.json").write_text(json.dumps(report, indent=2, default=str))
        _status(out_dir, "failed", error=str(exc))
        raise
    finally:
        logging.getLogger("neoc").removeHandler(handler)
        handler.close()
    return out_dir


def _run(recipe: Recipe, out_dir: Path, resume: bool, quiet: bool, report: dict) -> None:
    log.info("loading model %s", recipe.model)
    pipeline = sources.load_source(recipe.model)
    baseline = pipeline.clone()
    report["cost"]["before"] = analyze_pipeline(baseline)
    eval_data = EvalData(prompts=recipe.eval_prompts, videos=recipe.eval_videos)
    profile = recipe.profile or ("tiny" if recipe.model == "builtin:pyramid-tiny" else "real")

    def on_record(record):
        report["passes"].append(record.to_report())
        report["lineage"].append(record.lineage())
        (out_dir / "report.partial.json").write_text(json.dumps(report, indent=2, default=str))

    quality_before = measure_quality(baseline, recipe, quiet, report, "before")
    manager = PassManager(recipe.passes, out_dir, seed=recipe.seed, eval_data=eval_data, profile=profile,
                          quiet=quiet, resume=resume, on_record=on_record)
    if quality_before is not None:
        manager.extras["quality_baseline"] = quality_before
    pipeline = manager.run(pipeline)
    report["cost"]["after"] = analyze_pipeline(pipeline)
    measure_quality(pipeline, recipe, quiet, report, "after")

    if recipe.target is not None:
        tcls = registry.get_target(recipe.target.name)
        ctx = PassContext(seed=recipe.seed, work_dir=out_dir / "target", eval=eval_data, profile=profile,
                          quiet=quiet, log=log)
        result = tcls(recipe.target.config).build(pipeline, ctx)
        report["target"] = {"name": recipe.target.name, "graphs": result.graphs, "notes": result.notes}

    save_pipeline(pipeline, out_dir / "pipeline")
    report["status"] = "complete"
    write_reports(report, out_dir)
    (out_dir / "report.partial.json").unlink(missing_ok=True)
    _status(out_dir, "complete")


def measure_quality(pipeline, recipe: Recipe, quiet: bool, report: dict, phase: str) -> dict | None:
    """Toy-world quality and generation latency of ``pipeline`` (same prompts and seeds before and after).

    The instrument reads toy-world videos, so it applies to pipelines derived from ``builtin:pyramid-tiny``;
    for other pipelines the report says why it was skipped instead of printing a meaningless number.
    """
    from neoc.errors import NeocError
    from neoc.eval.pipeline_quality import evaluate_pipeline

    if recipe.eval_num_videos == 0:
        report["quality"]["note"] = "skipped: eval.num_videos is 0"
        return None
    if pipeline.spec.name != "pyramid-tiny":
        report["quality"]["note"] = (f"skipped: the toy-world instrument scores pipelines derived from "
                                     f"builtin:pyramid-tiny, not '{pipeline.spec.name}'")
        return None
    try:
        result = evaluate_pipeline(pipeline, num=recipe.eval_num_videos, seed=recipe.seed, quiet=quiet)
    except NeocError as exc:
        report["quality"]["note"] = f"skipped: {exc}"
        return None
    report["quality"][phase] = {k: v for k, v in result.items() if not k.startswith("_")}
    latency = report["latency"]
    latency[f"{phase}_seconds"] = result["seconds_per_video"]
    latency["device"] = _device_name()
    if latency.get("before_seconds") and latency.get("after_seconds"):
        latency["ratio"] = latency["before_seconds"] / latency["after_seconds"]
    return report["quality"][phase]


def _device_name() -> str:
    import os
    import platform

    import torch

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads " \
           f"{torch.get_num_threads()})"
