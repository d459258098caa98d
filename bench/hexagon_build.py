"""The hexagon target end to end on ``builtin:pyramid-tiny``: deployment passes, W8A16 record, both SoCs.

    python bench/hexagon_build.py [--random-init] [--frames 17] [--socs x-elite 8-elite] [--out out/hexagon-build]

What ``neoc run`` does for a recipe ending in ``target: {name: hexagon}``, minus the training passes (they take
hours on a CPU machine and do not change which graphs are compiled), and at ``--frames`` frames instead of the
spec's 49 (the x86-64 HTP simulator executes every calibration call; at 49 frames the causal VAE decoder alone
takes tens of minutes per SoC there):

1. ``builtin:pyramid-tiny`` (the shipped trained weights; ``--random-init`` for a dry run without them);
2. ``static-shape``, ``precompute-inputs``, ``rope-rank-reduction``, ``mask-value``, ``t5-fp16-rescale``,
   ``quantize-w8a16`` (tiny-profile calibration sizes), applied in the recipe's order;
3. the ``hexagon`` target for both SoCs: every graph exported, legalised, QDQ'd where the record says W8A16,
   support-checked, compiled (CPU fallback disabled), HTP-simulated on captured calls, bundled.

Writes ``--out/report.json`` (``passes`` + ``target`` as in CONTRACT's report.json) and ``--out/report.md``, and
leaves the run folder layout (``target/<soc>/`` bundles) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

DEPLOY_PASSES = ("static-shape", "precompute-inputs", "rope-rank-reduction", "mask-value", "t5-fp16-rescale",
                 "quantize-w8a16")
#: the recipe's tiny-profile calibration sizes (recipes/neodragon.yaml), plus a short quality check
QUANT_PARAMS = {"calib_denoiser": 8, "calib_vae_decoder": 4, "calib_upsampler": 16, "quality_videos": 0}


def build_pipeline(frames: int, random_init: bool):
    import attrs

    from neoc.zoo import builtin

    torch.manual_seed(0)
    pipe = builtin.build("builtin:pyramid-tiny", random_init=random_init)
    pipe.spec = attrs.evolve(pipe.spec, frames=frames)
    for module in pipe.components.values():
        module.eval()
    return pipe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--socs", nargs="+", default=["x-elite", "8-elite"])
    parser.add_argument("--passes", nargs="*", default=list(DEPLOY_PASSES))
    parser.add_argument("--calibration-calls", type=int, default=2)
    parser.add_argument("--out", default="out/hexagon-build")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import neoc.passes  # noqa: F401  (registers the passes)
    from neoc.deploy.testing import apply_pass
    from neoc.pass_api import PassContext
    from neoc.targets.hexagon.target import HexagonConfig, HexagonTarget

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pipe = build_pipeline(args.frames, args.random_init)
    report = {"model": "builtin:pyramid-tiny" + (" (random init)" if args.random_init else ""),
              "frames": args.frames, "schedule": pipe.schedule.label, "passes": [], "target": {}}
    for name in args.passes:
        params = QUANT_PARAMS if name == "quantize-w8a16" else {}
        t0 = time.perf_counter()
        result = apply_pass(pipe, name, out / "passes" / name, **params)
        pipe = result.pipeline
        report["passes"].append({"name": name, "status": "done", "seconds": round(time.perf_counter() - t0, 2),
                                 "metrics": result.metrics})
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    config = HexagonConfig(socs=tuple(args.socs), calibration_calls=args.calibration_calls, qai_hub=True)
    t0 = time.perf_counter()
    target = HexagonTarget(config).build(pipe, PassContext(seed=0, work_dir=out / "target", quiet=True))
    report["target"] = {"name": "hexagon", "graphs": target.graphs, "notes": target.notes,
                        "seconds": round(time.perf_counter() - t0, 1)}
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    lines = ["| graph | soc | precision | cpu_fallback_nodes | sqnr_db | prepare_seconds |", "|---|---|---|---|---|---|"]
    for g in target.graphs:
        lines.append(f"| {g['name']} | {g['soc']} | {g['precision']} | {g['cpu_fallback_nodes']} | {g['sqnr_db']} | "
                     f"{g['prepare_seconds']} |")
    lines += ["", *(f"- {note}" for note in target.notes)]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
