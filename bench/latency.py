"""Reproduce a run's latency figure: baseline vs compiled generation time, same prompts, seeds and machine.

    python bench/latency.py --run runs/neodragon [--prompts 3] [--threads N] [--baseline SRC] [--json]

The baseline is the run's model source (report.json "model", e.g. builtin:pyramid-tiny). The compiled pipeline,
as in ``neoc run``: when the run built the hexagon target (``target/graphs.json``), its legalised graphs
(``target/legal/*.onnx``) run by ONNX Runtime's CPU EP over the run folder's ``pipeline/`` schedule
(:mod:`neoc.targets.hexagon.host`), with the torch form of ``pipeline/`` timed alongside ("others.torch");
without a target (or with ``--torch``) the float32 torch ``pipeline/`` only. W8A16 encodings are not applied in
either form. The measurement is :func:`neoc.eval.latency.compare_latency`, the one ``neoc run`` writes to
report.json "latency": one warm-up each, then timed generations alternating baseline / compiled (/ torch) on the
first eval prompts, median seconds per video. Prints the result next to the run's own figure; ``--json`` prints
the result only; ``--write`` also saves it as ``RUN/latency_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished neoc run folder")
    parser.add_argument("--prompts", type=int, default=3, help="timed prompts per pipeline (after one warm-up)")
    parser.add_argument("--baseline", default=None, help="baseline model source (default: the run's model)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--torch", action="store_true", help="time the torch pipeline/ even when target graphs exist")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    parser.add_argument("--write", action="store_true", help="also write RUN/latency_bench.json")
    args = parser.parse_args(argv)

    import torch

    from neoc import sources
    from neoc.eval.latency import compare_host_latency, compare_latency
    from neoc.eval.pipeline_quality import eval_prompts
    from neoc.ir.runfolder import load_pipeline

    report_path = args.run / "report.json"
    if not report_path.is_file() or not (args.run / "pipeline").is_dir():
        print(f"{args.run}: not a finished run folder (needs report.json and pipeline/)", file=sys.stderr)
        return 2
    report = json.loads(report_path.read_text())
    if args.threads:
        torch.set_num_threads(args.threads)
    seed = int(report.get("seed") or 0)
    resolved = args.run / "recipe.resolved.json"
    if resolved.is_file():
        seed = int(json.loads(resolved.read_text()).get("seed", seed))
    baseline = sources.load_source(args.baseline or report["model"])
    compiled = load_pipeline(args.run / "pipeline")
    prompts = [p for p, _ in eval_prompts(args.prompts, seed)]
    target = args.run / "target"
    if (target / "graphs.json").is_file() and not args.torch:
        from neoc.targets.hexagon.host import host_pipeline

        result = compare_host_latency(baseline, compiled, host_pipeline(compiled, target), prompts, seed=seed)
    else:
        result = compare_latency(baseline, compiled, prompts, seed=seed)
    result["run"] = str(args.run)
    result["baseline_source"] = baseline.source
    if args.write:
        (args.run / "latency_bench.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    run_lat = report.get("latency") or {}
    print(f"device: {result['device']}   load average {result['load_average']}")
    print(f"{'':<12}{'before s':>10}{'after s':>10}{'ratio':>9}   NFE")
    print(f"{'this bench':<12}{result['before_seconds']:>10.3f}{result['after_seconds']:>10.3f}"
          f"{result['ratio']:>8.1f}x   {result['nfe_before']} -> {result['nfe_after']}")
    for name, other in (result.get("others") or {}).items():
        print(f"{'  ' + name:<12}{'':>10}{other['after_seconds']:>10.3f}{other['ratio']:>8.1f}x")
    if run_lat.get("before_seconds") and run_lat.get("after_seconds"):
        print(f"{'the run':<12}{run_lat['before_seconds']:>10.3f}{run_lat['after_seconds']:>10.3f}"
              f"{run_lat['before_seconds'] / run_lat['after_seconds']:>8.1f}x   ({run_lat.get('device')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
