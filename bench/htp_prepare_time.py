"""HTP prepare (compile) time of the highest-resolution denoiser graph with and without RoPE rank reduction.

    python bench/htp_prepare_time.py [--frames 49] [--soc x-elite] [--repeats 2] [--out out/htp-prepare-time]

Neodragon §4.1 reports that reducing the temporal RoPE's 6D tensors to <=4D cut the QNN prepare time of the DiT
graph from about a day to under 2 hours. Here, in one process and on the same machine:

* two copies of ``builtin:pyramid-tiny`` (random init: prepare time does not depend on weight values), both with
  ``static-shape`` and ``mask-value``; one also with ``rope-rank-reduction``;
* the top pyramid stage's denoiser graph (the highest resolution) of each, exported and legalised exactly as the
  hexagon target does, then prepared for the SoC with onnxruntime-qnn in prepare-only mode
  (``enable_htp_prepare_only``: the context binary is written, nothing runs);
* a second legalisation variant, ``transposes-only``, keeps the 5D/6D elementwise tensors as exported (the
  target's ``flatten_high_rank_ops`` rewrite partly does at graph level what rope-rank-reduction does in the
  model), so the HTP compiler sees what the paper's toolchain saw without the pass;
* each (pipeline, variant) is prepared ``--repeats`` times, alternating, and the median wall and process-CPU
  seconds are reported with the ratio (without / with rope-rank-reduction). The machine may be shared: CPU
  seconds are the steadier figure;
* a graph the backend refuses with CPU fallback disabled (onnxruntime-qnn 2.7 rejects the rank-6 RoPE
  ``Gather``/``Reshape`` nodes outright rather than spending a day on them: the ``transposes-only`` variant) is
  reported as rejected, with the op types and node count, and its HTP part is prepared again with fallback
  allowed, so the ratio is then over the part the HTP takes (a lower bound on what the whole graph would cost).
  The ``full`` legalisation lowers those nodes at graph level (``lower_high_rank_gathers`` +
  ``collapse_reshape_chains``), so without the pass the graph compiles strictly and the ratio is a real one
  (x-elite, 49 frames, 2 repeats on a shared 2-core CPU: 1.3x wall and CPU).

Writes ``result.json`` and ``result.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch


def build_pipeline(frames: int, rope: bool, work: Path):
    import attrs

    import neoc.passes  # noqa: F401  (registers the passes)
    from neoc.deploy.testing import SHORT_SCHEDULE, apply_pass
    from neoc.zoo import builtin

    torch.manual_seed(0)
    pipe = builtin.build("builtin:pyramid-tiny", random_init=True)
    pipe.spec = attrs.evolve(pipe.spec, frames=frames)
    pipe.with_schedule(SHORT_SCHEDULE)
    for module in pipe.components.values():
        module.eval()
    for name in ("static-shape", "rope-rank-reduction", "mask-value") if rope else ("static-shape", "mask-value"):
        apply_pass(pipe, name, work / "passes")
    return pipe


def top_stage_graph(pipe):
    from neoc.targets.hexagon.graphs import deploy_graphs

    graphs = deploy_graphs(pipe, ["a red ball rolls to the left"], seed=0, roles=["denoiser"], max_calls_per_graph=1)
    top = max(graphs, key=lambda g: int(g.name.split("stage")[1].split("_")[0]))
    return top


def legalised(graph, work: Path, variant: str) -> tuple[Path, dict]:
    from neoc.targets.hexagon import export, legalize

    exported = work / f"{graph.name}.onnx"
    if not exported.exists():
        export.export_graph(graph, exported)
    model = export.load_model(exported)
    if variant == "full":
        report = legalize.legalize(model)
    else:  # transposes-only: the target's rewrites minus the elementwise rank flattening
        report = legalize.LegalizeReport()
        for name, rewrite in (("fold_constants", legalize.fold_constants),
                              ("float64_to_float32", legalize.float64_to_float32),
                              ("int64_to_int32", lambda m: legalize.int64_to_int32(m, report)),
                              ("bool_equal_to_xnor", legalize.bool_equal_to_xnor),
                              ("lower_high_rank_transposes", legalize.lower_high_rank_transposes),
                              ("collapse_reshape_chains", legalize.collapse_reshape_chains)):
            report.changes[name] = rewrite(model)
        report.max_rank = legalize.max_tensor_rank(model)
    path = work / f"{graph.name}.{variant}.onnx"
    export.save_model(model, path)
    return path, {"max_rank": report.max_rank, "nodes": len(model.graph.node)}


def prepare_once(model: Path, soc: str, out: Path, allow_cpu_fallback: bool = False) -> dict:
    """Prepare ``model`` for ``soc`` (prepare-only: the context binary is written, nothing runs); wall and
    process-CPU seconds. With ``allow_cpu_fallback`` the nodes the HTP rejects stay on the CPU EP and the HTP part
    is prepared anyway; their count comes back as ``cpu_fallback_nodes``."""
    from neoc.targets.hexagon import qnn

    out.mkdir(parents=True, exist_ok=True)
    plan = qnn.SessionPlan(soc, context_path=str(out / f"{model.stem}_ctx.onnx"), prepare_only=True,
                           record_assignment=allow_cpu_fallback, allow_cpu_fallback=allow_cpu_fallback)
    wall, cpu = time.perf_counter(), time.process_time()
    fallback = 0
    with qnn.captured_stderr() as log:
        try:
            session = qnn.create_session(model, plan)
            if allow_cpu_fallback:
                fallback = len(qnn.cpu_nodes(session))
            del session
            error = ""
        except Exception as exc:
            error = str(exc).strip().splitlines()[-1][:300]
    result = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "error": error,
              "cpu_fallback_nodes": fallback}
    if error:
        rejected = sorted(set(re.findall(r"type: (\w+) \}", log[0])))
        result["rejected_op_types"] = rejected
        result["rejected_nodes"] = len(set(re.findall(r"\{ name: ([^,]+), type: \w+ \}", log[0])))  # listed twice
        result["log_tail"] = log[0][-600:]
    return result


def measure(model: Path, soc: str, out: Path) -> dict:
    """Strict prepare (CPU fallback disabled, as the target compiles); when the backend rejects nodes, the HTP
    part is prepared again with fallback allowed so its prepare time is still measured."""
    strict = prepare_once(model, soc, out / "strict")
    if not strict["error"]:
        return {**strict, "mode": "strict"}
    partial = prepare_once(model, soc, out / "fallback", allow_cpu_fallback=True)
    return {**partial, "mode": "htp-part (CPU fallback allowed)", "strict_error": strict["error"],
            "rejected_op_types": strict.get("rejected_op_types", []), "rejected_nodes": strict.get("rejected_nodes", 0)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--soc", default="x-elite", choices=["x-elite", "8-elite"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["full", "transposes-only"])
    parser.add_argument("--out", default="out/htp-prepare-time")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    models = {}
    for rope in (False, True):
        label = "with-rrr" if rope else "without-rrr"
        work = out / label
        graph = top_stage_graph(build_pipeline(args.frames, rope, work))
        for variant in args.variants:
            models[(label, variant)] = (*legalised(graph, work, variant), graph.name)
            print(f"{label} {variant}: {graph.name} {models[(label, variant)][1]}", flush=True)

    runs: dict[tuple, list[dict]] = {key: [] for key in models}
    for repeat in range(args.repeats):
        order = list(models) if repeat % 2 == 0 else list(reversed(list(models)))
        for key in order:
            result = measure(models[key][0], args.soc, out / "ctx" / f"{key[0]}-{key[1]}-{repeat}")
            runs[key].append(result)
            print(f"repeat {repeat} {key}: {result['mode']}: {result['wall_s']:.2f} s wall, {result['cpu_s']:.2f} s "
                  f"cpu, {result['cpu_fallback_nodes']} CPU nodes {result.get('strict_error', '')[:120]}", flush=True)

    rows = []
    for (label, variant), results in runs.items():
        ok = [r for r in results if not r["error"]]
        rows.append({"pipeline": label, "variant": variant, "graph": models[(label, variant)][2],
                     **models[(label, variant)][1], "runs": results, "mode": results[0]["mode"],
                     "cpu_fallback_nodes": results[0]["cpu_fallback_nodes"],
                     "rejected_op_types": results[0].get("rejected_op_types", []),
                     "rejected_nodes": results[0].get("rejected_nodes", 0),
                     "median_wall_s": statistics.median(r["wall_s"] for r in ok) if ok else None,
                     "median_cpu_s": statistics.median(r["cpu_s"] for r in ok) if ok else None})
    ratios = {}
    for variant in args.variants:
        without = next(r for r in rows if r["pipeline"] == "without-rrr" and r["variant"] == variant)
        with_ = next(r for r in rows if r["pipeline"] == "with-rrr" and r["variant"] == variant)
        if without["median_cpu_s"] and with_["median_cpu_s"]:
            ratios[variant] = {"wall": without["median_wall_s"] / with_["median_wall_s"],
                               "cpu": without["median_cpu_s"] / with_["median_cpu_s"],
                               "without_mode": without["mode"], "with_mode": with_["mode"],
                               "without_strict_compile": without["mode"] == "strict"}
    result = {"soc": args.soc, "frames": args.frames, "rows": rows, "ratio_without_over_with": ratios}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    lines = ["| pipeline | legalisation | graph | max rank | nodes | strict compile | prepared | CPU nodes | "
             "prepare wall s | prepare cpu s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = (lambda v: "failed" if v is None else f"{v:.2f}")
        strict = "ok" if r["mode"] == "strict" else \
            f"rejected ({r['rejected_nodes']} nodes: {', '.join(r['rejected_op_types'])})"
        lines.append(f"| {r['pipeline']} | {r['variant']} | {r['graph']} | {r['max_rank']} | {r['nodes']} | {strict} | "
                     f"{r['mode']} | {r['cpu_fallback_nodes']} | {fmt(r['median_wall_s'])} | {fmt(r['median_cpu_s'])} |")
    for variant, ratio in ratios.items():
        lines.append(f"\nratio without/with rope-rank-reduction ({variant}): {ratio['wall']:.2f}x wall, "
                     f"{ratio['cpu']:.2f}x cpu (without: {ratio['without_mode']}; with: {ratio['with_mode']})")
    (out / "result.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
