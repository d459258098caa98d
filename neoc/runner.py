"""``neoc run``: validate everything, then load the model, run the passes, build the target, write the report.

Order of work, so that bad input never leaves a half-written run folder:

1. recipe, overrides, model source, pass/target availability are validated (InputError, nothing written);
2. the run folder gets ``status.json`` = running and a ``run.log``;
3. passes run through the :class:`~neoc.manager.PassManager` (cached, resumable);
4. quality and cost are measured before/after, the target builds, then latency: the baseline against the target's
   built graphs run on this machine when the target can (the hexagon target's legalised ONNX graphs on ONNX
   Runtime's CPU EP), the transformed torch pipeline timed alongside; otherwise against the torch pipeline;
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
    from neoc.eval.latency import load_average

    wall_start, cpu_start = time.perf_counter(), time.process_time()
    report["timing"] = {"load_start": load_average()}
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

    videos: dict = {}
    quality_before = measure_quality(baseline, recipe, quiet, report, "before", videos)
    manager = PassManager(recipe.passes, out_dir, seed=recipe.seed, eval_data=eval_data, profile=profile,
                          quiet=quiet, resume=resume, on_record=on_record, on_refuse=recipe.on_refuse)
    if quality_before is not None:
        manager.extras["quality_baseline"] = quality_before
    pipeline = manager.run(pipeline)
    report["cost"]["after"] = analyze_pipeline(pipeline)
    measure_quality(pipeline, recipe, quiet, report, "after", videos)
    measure_run_trajectory(out_dir, manager.records, baseline, recipe, report)

    host = None
    if recipe.target is not None:
        target = registry.get_target(recipe.target.name)(recipe.target.config)
        ctx = PassContext(seed=recipe.seed, work_dir=out_dir / "target", eval=eval_data, profile=profile,
                          quiet=quiet, log=log)
        result = target.build(pipeline, ctx)
        report["target"] = {"name": recipe.target.name, "graphs": result.graphs, "notes": result.notes}
        host = host_runtime(target, pipeline, result, ctx, report)
    measure_latency(baseline, pipeline, recipe, report, host=host)
    if host is not None:
        add_host_point(report, host, recipe)

    draw_figures(report, out_dir, videos)
    save_pipeline(pipeline, out_dir / "pipeline")
    report["timing"].update({
        "wall_seconds": time.perf_counter() - wall_start, "cpu_seconds": time.process_time() - cpu_start,
        "passes_seconds": sum(p["seconds"] for p in report["passes"]), "load_end": load_average(),
        "note": "wall and CPU time of this process from model loading to the reports (the CLI's imports excluded); "
                "cpu_seconds sums all threads, so on a machine shared with other jobs it shows the run's own cost"})
    report["status"] = "complete"
    write_reports(report, out_dir)
    (out_dir / "report.partial.json").unlink(missing_ok=True)
    _status(out_dir, "complete")


def measure_quality(pipeline, recipe: Recipe, quiet: bool, report: dict, phase: str,
                    videos: dict | None = None) -> dict | None:
    """Toy-world quality of ``pipeline`` (same prompts and seeds before and after).

    The instrument reads toy-world videos, so it applies to pipelines derived from ``builtin:pyramid-tiny``;
    for other pipelines the report says why it was skipped instead of printing a meaningless number.
    The generated videos land in ``videos[phase]`` (the report's frame strips).
    """
    from neoc.errors import NeocError
    from neoc.eval.pipeline_quality import evaluate_pipeline, quality_skip_reason

    reason = ("eval.num_videos is 0" if recipe.eval_num_videos == 0
              else quality_skip_reason(pipeline, recipe.eval_num_videos))
    if reason is not None:
        report["quality"]["note"] = f"skipped: {reason}"
        return None
    try:
        result = evaluate_pipeline(pipeline, num=recipe.eval_num_videos, seed=recipe.seed, quiet=quiet,
                                   return_videos=True)
    except NeocError as exc:
        report["quality"]["note"] = f"skipped: {exc}"
        return None
    if videos is not None:
        videos[phase] = result["_videos"][:2]
        videos["_prompts"] = result["_prompts"][:2]
    report["quality"][phase] = {k: v for k, v in result.items() if not k.startswith("_")}
    return report["quality"][phase]


def latency_prompts(recipe: Recipe, count: int = 2) -> list[str]:
    """The prompts latency is timed on: the first eval prompts (toy-world eval split, or ``eval.prompts``)."""
    from neoc.eval.pipeline_quality import eval_prompts

    return [p for p, _ in eval_prompts(count, recipe.seed, recipe.eval_prompts)]


#: largest |video difference| (in [-1, 1] pixel units) between the target's graphs and the torch pipeline before
#: the report warns (float32 graphs agree to ~1e-6; fp16 or quantised graphs would not)
HOST_VIDEO_TOLERANCE = 1e-3


def host_runtime(target, pipeline, result, ctx, report: dict):
    """The target's built graphs as a runnable pipeline (or None, with the reason in the report's notes)."""
    try:
        return target.host_pipeline(pipeline, result, ctx)
    except Exception as exc:  # timing then falls back to the torch pipeline; the report says so
        log.warning("the target's graphs cannot run here (%s); latency times the torch pipeline", exc)
        report["notes"].append(f"latency: the target's graphs could not be run on this machine "
                               f"({type(exc).__name__}: {exc}); the torch pipeline was timed instead")
        return None


def measure_latency(baseline, compiled, recipe: Recipe, report: dict, count: int = 3, host=None) -> None:
    """CONTRACT ``latency``: baseline vs compiled, same prompts and seeds, same process (neoc.eval.latency).

    With ``host`` (the target's graphs runnable here) the compiled figure is the built artifact's, and the torch
    form of the same pipeline is timed alongside (``others.torch``): the ratio with and without the runtime.
    """
    import torch

    from neoc.eval.latency import compare_host_latency, compare_latency

    prompts = latency_prompts(recipe, count)
    log.info("latency: baseline vs compiled on %d prompts", count)
    if host is None:
        result = compare_latency(baseline, compiled, prompts, seed=recipe.seed)
        result["compiled_form"] = compiled_form(compiled)
    else:
        result = compare_host_latency(baseline, compiled, host, prompts, seed=recipe.seed)
        result["compiled_form"] = compiled_form(compiled, host)
        result["others"]["torch"]["form"] = compiled_form(compiled)
        diff = result["host"]["video_max_abs_diff_vs_torch"]
        if not diff <= HOST_VIDEO_TOLERANCE:  # the timed graphs must compute the pipeline's video
            log.warning("latency: the target's graphs differ from the torch pipeline by %.3g", diff)
            report["notes"].append(f"latency: the target's graphs generate a video that differs from the torch "
                                   f"pipeline's by up to {diff:.3g} (tolerance {HOST_VIDEO_TOLERANCE}); the "
                                   "compiled timing is of those graphs")
    result["baseline_form"] = ("the model source's pipeline as float32 torch (eager) on the CPU, torch threads "
                               f"{torch.get_num_threads()}")
    report["latency"].update(result)


def add_host_point(report: dict, host, recipe: Recipe) -> None:
    """The trajectory's last point: the final pipeline's lowered graphs, timed like the other points."""
    points = report.get("trajectory") or []
    if not points:
        return
    start = time.perf_counter()
    host.generate(latency_prompts(recipe, 1)[0], recipe.seed)
    points.append({**points[-1], "stage": "target graphs (ONNX Runtime)", "seconds": time.perf_counter() - start,
                   "note": "the target's lowered graphs of the last pipeline, run on this CPU"})


def compiled_form(pipeline, host=None) -> str:
    """What 'compiled' means for the timed pipeline, in words (the report states it): ``pipeline`` as torch, or
    ``host`` (the target's graphs run on this machine) when given."""
    quant = "quantization" in pipeline.info
    if host is not None:
        return (getattr(host, "form", "the target's graphs run on this machine")
                + ("; W8A16 encodings are not applied here: quantised quality is the quantize-w8a16 pass's "
                   "simulation and the HTP simulator's SQNR" if quant else ""))
    return ("the transformed pipeline (pipeline/) run as float32 torch on the CPU"
            + ("; W8A16 encodings are attached but not applied: quantised quality is the quantize-w8a16 pass's "
               "simulation (AIMET QuantSim), and the NPU latency needs the Hexagon context binaries on a device"
               if quant else ""))


def measure_run_trajectory(out_dir: Path, records: list, baseline, recipe: Recipe, report: dict) -> None:
    from neoc.report.trajectory import measure_trajectory

    try:
        prompt = latency_prompts(recipe, 1)[0]
        report["trajectory"] = measure_trajectory(out_dir, records, baseline, prompt, recipe.seed)
    except Exception as exc:  # the trajectory is a figure; a failure is reported, never fatal
        log.warning("trajectory not measured: %s", exc)
        report["notes"].append(f"trajectory not measured: {type(exc).__name__}: {exc}")


def draw_figures(report: dict, out_dir: Path, videos: dict) -> None:
    from neoc.report import figures

    drawn = {}
    try:
        for title, fn in (("Latency, NFE and parameters through the passes", figures.trajectory_plot),
                          ("Block importance (prune-blocks)", figures.importance_plot)):
            name = fn(report, out_dir)
            if name:
                drawn[title] = name
        name = figures.quality_plot(figures.quality_rows(report), out_dir)
        if name:
            drawn["Toy-world quality through the passes"] = name
        strips = {k: v for k, v in videos.items() if k in ("before", "after")}
        if strips:
            labelled = {("baseline" if k == "before" else "compiled"): v for k, v in strips.items()}
            name = figures.frame_strip(labelled, out_dir, prompts=videos.get("_prompts"))
            if name:
                drawn["Sample frames, baseline vs compiled (same prompts and seeds)"] = name
    except Exception as exc:  # figures never fail a finished run
        log.warning("figures not drawn: %s", exc)
        report["notes"].append(f"figures not drawn: {type(exc).__name__}: {exc}")
    report["figures"] = drawn
