"""Hexagon target: the pipeline's deployable graphs as QNN HTP context binaries per SoC, checked in HTP simulation.

Neodragon's end product (§4, Table 9) is a set of graphs on the Hexagon NPU. Per graph (see
:mod:`~neoc.targets.hexagon.graphs`: text side, 3 denoiser stage graphs, VAE decoder, upsampler, first frame):

1. :mod:`.export` — ONNX at the captured calls' static shapes;
2. :mod:`.legalize` — static, int32/fp32, <=4D, HTP-accepted patterns; checked on CPU against torch;
3. :mod:`.qdq` — W8A16 QDQ from the ``quantize-w8a16`` encodings (FP16 when the record says so or is absent);
4. per SoC (``x-elite``: soc_model 60 / v73, ``8-elite``: 69 / v79), in child processes (:mod:`.worker`: the
   x86 HTP simulator can segfault; a crash is then a named failure or a run in parts, never a dead run):
   :mod:`.support` (the EP's per-op answer; a rejected op fails here, named, with a fix) ->
   :mod:`.compile` (context binaries, CPU fallback disabled, embed mode 0, the denoiser stages sharing one
   binary) -> :mod:`.simulate` (HTP simulation on the captured calls, SQNR vs float torch) ->
   :mod:`.bundle` (``target/<soc>/`` + ``manifest.json``);
5. :mod:`.qai_hub` — compile + profile on AI Hub devices when a token is configured;
6. :mod:`.host` — after the build, ``neoc run`` times the legalised graphs on this CPU (ONNX Runtime) as the
   compiled pipeline's latency (:meth:`HexagonTarget.host_pipeline`).

Every graph must end with 0 CPU-fallback nodes and SQNR >= ``min_sqnr_db``; otherwise the build fails naming it
(after the bundle and the per-graph results are written, so the failure can be inspected).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import attrs
import numpy as np

from neoc.config import in_range
from neoc.errors import CheckFailed
from neoc.registry import register_target
from neoc.target_api import Target, TargetResult
from neoc.targets.hexagon.qnn import SOCS  # noqa: F401  (SoC table, re-exported for callers)

@attrs.frozen
class HexagonConfig:
    socs: tuple[Literal["x-elite", "8-elite"], ...] = ("x-elite", "8-elite")
    weight_sharing: bool = True
    qai_hub: bool = True
    #: component roles to lower (empty: every deployable one the pipeline has)
    graphs: tuple[str, ...] = ()
    #: prompts the pipeline runs to capture calibration calls, and calls kept per graph (SQNR, QDQ calibration)
    calibration_prompts: int = attrs.field(default=2, validator=in_range(1, 64))
    calibration_calls: int = attrs.field(default=2, validator=in_range(1, 512))
    min_sqnr_db: float = 15.0
    opset: int = attrs.field(default=21, validator=in_range(20, 22))
    external_data_mb: float = 1024.0


@attrs.define
class PreparedGraph:
    """One graph after export, legalisation and (optionally) QDQ: what gets compiled per SoC."""

    graph: object  # DeployGraph
    model_path: Path  # the ONNX model handed to the QNN EP
    precision: str  # "fp16" or "w8a16"
    info: dict = attrs.field(factory=dict)


@register_target
class HexagonTarget(Target):
    name = "hexagon"
    summary = "QNN HTP context binaries per SoC (onnxruntime-qnn), checked in HTP simulation"
    Config = HexagonConfig
    implemented = True

    def build(self, pipeline, ctx) -> TargetResult:
        from neoc.targets.hexagon.graphs import DEFAULT_CALIBRATION_PROMPTS, deploy_graphs

        cfg = self.config
        work = Path(ctx.work_dir)
        run_dir = work.parent
        prompts = calibration_prompts(ctx, cfg.calibration_prompts) or \
            list(DEFAULT_CALIBRATION_PROMPTS[:cfg.calibration_prompts])
        graphs = deploy_graphs(pipeline, prompts, ctx.seed, roles=cfg.graphs or None,
                               max_calls_per_graph=cfg.calibration_calls)
        if not graphs:
            raise CheckFailed("hexagon: the pipeline has no deployable graph to lower")
        notes: list[str] = []
        prepared = [prepare_graph(g, pipeline, work, cfg, run_dir, notes) for g in graphs]

        entries, failures = [], []
        for soc in cfg.socs:
            entries.extend(build_soc(prepared, soc, work, run_dir, cfg, notes, failures))

        from neoc.targets.hexagon.qai_hub import hub_step

        hub, note = hub_step([(p.graph.name, p.model_path) for p in prepared], cfg.socs, cfg.qai_hub)
        notes.append(note)
        if hub:
            (work / "qai_hub.json").write_text(json.dumps([r.to_dict() for r in hub], indent=2))
            for entry in entries:
                for result in hub:
                    if result.graph == entry["name"] and result.soc == entry["soc"]:
                        entry["device_latency_ms"] = result.latency_ms
        (work / "graphs.json").write_text(json.dumps(entries, indent=2, default=str))
        if failures:
            raise CheckFailed("hexagon: " + "; ".join(failures))
        return TargetResult(graphs=entries, notes=notes)

    def host_pipeline(self, pipeline, result: TargetResult, ctx):
        """The legalised graphs (``target/legal/``) run by ONNX Runtime's CPU EP (:mod:`.host`)."""
        from neoc.targets.hexagon.host import host_pipeline

        return host_pipeline(pipeline, Path(ctx.work_dir), result.graphs)


def calibration_prompts(ctx, count: int) -> list[str]:
    """The first ``count`` prompts of ``eval.prompts`` when the recipe gives them."""
    path = getattr(getattr(ctx, "eval", None), "prompts", None)
    if not path:
        return []
    from neoc.data.prompts import read_prompts

    return read_prompts(path)[:count]


def prepare_graph(graph, pipeline, work: Path, cfg: HexagonConfig, run_dir: Path, notes: list[str]) -> PreparedGraph:
    """Export, legalise (checked on CPU against torch) and, when encodings exist, write the QDQ graph."""
    from neoc.targets.hexagon import export, legalize, qdq

    exported = export.export_graph(graph, work / "onnx" / f"{graph.name}.onnx", cfg.opset, cfg.external_data_mb)
    model = export.load_model(exported.path)
    report = legalize.legalize(model)
    legal_path = work / "legal" / f"{graph.name}.onnx"
    export.save_model(model, legal_path, cfg.external_data_mb)
    cpu = cpu_check(legal_path, graph)
    info = {"exporter": exported.exporter, "export_seconds": exported.seconds, "legalize": report.to_dict(),
            "legalized_cpu_sqnr_db": cpu}
    if cpu < 60.0:
        raise CheckFailed(f"hexagon: legalised graph '{graph.name}' differs from torch on CPU (SQNR {cpu:.1f} dB)")
    plan = qdq.quant_plan(pipeline, graph.role, graph.name, run_dir)
    notes.append(f"{graph.name}: {plan.note}")
    if not plan.quantized:
        return PreparedGraph(graph, legal_path, "fp16", info)
    qdq_path = work / "qdq" / f"{graph.name}.onnx"
    qdq_path.parent.mkdir(parents=True, exist_ok=True)
    info["qdq"] = qdq.write_qdq(legal_path, qdq_path, graph.calibration, plan, pipeline.component(graph.role))
    return PreparedGraph(graph, qdq_path, "w8a16", info)


def cpu_check(model_path: Path, graph) -> float:
    """SQNR of the legalised graph on onnxruntime's CPU EP vs the torch module (legalisation must be exact)."""
    import numpy as np
    import onnxruntime as ort

    from neoc.targets.hexagon.simulate import feeds, sqnr_db

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    measured, expected = [], []
    for inputs in graph.calibration:
        measured.extend(np.asarray(o, dtype=np.float32) for o in session.run(None, feeds(session, inputs)))
        expected.extend(r.numpy() for r in graph.reference(inputs))
    return sqnr_db(expected, measured)


def build_soc(prepared: list[PreparedGraph], soc: str, work: Path, run_dir: Path, cfg: HexagonConfig,
              notes: list[str], failures: list[str]) -> list[dict]:
    """Support check and compile (shared denoiser binary) in one child process, HTP simulation of each graph in
    its own (see :mod:`.worker`), then the bundle manifest and the report entries."""
    from neoc.targets.hexagon import bundle
    from neoc.targets.hexagon.compile import CompiledGraph
    from neoc.targets.hexagon.simulate import sqnr_db
    from neoc.targets.hexagon.worker import GraphJob, compile_isolated, simulate_isolated

    jobs = [GraphJob(p.graph.name, str(p.model_path), p.precision, p.graph.share_group) for p in prepared]
    answer = compile_isolated(jobs, soc, work, cfg.weight_sharing)
    by_name = {p.graph.name: p for p in prepared}
    entries, results, compiled = [], {}, []
    for graph in answer["graphs"]:
        item = by_name[graph["name"]]
        calls = [[t.detach().cpu().numpy() for t in call] for call in item.graph.calibration]
        references = [[r.numpy() for r in item.graph.reference(call)] for call in item.graph.calibration]
        context_model = Path(graph["context_model"])
        # a weight-shared binary cannot be loaded by the x86 simulator: the same graph is compiled afresh to run
        sim = simulate_isolated(item.model_path, soc, graph["precision"],
                                None if graph["shared_with"] else context_model, calls,
                                work / soc / f"sim-{graph['name']}")
        sqnr = sqnr_db([r for call in references for r in call],
                       [o.astype(np.float32) for call in sim["outputs"] for o in call])
        fallback = max(graph["cpu_fallback_nodes"], sim["cpu_fallback_nodes"])
        result = {"cpu_fallback_nodes": fallback, "sqnr_db": round(sqnr, 2),
                  "prepare_seconds": round(graph["prepare_seconds"], 3)}
        results[graph["name"]] = result
        binary = Path(graph["binary"])
        compiled.append(CompiledGraph(graph["name"], soc, context_model, binary, graph["prepare_seconds"], fallback,
                                      graph["qnn_nodes"], graph["shared_with"], graph["precision"]))
        entries.append({"name": graph["name"], "soc": soc, "path": str(context_model.relative_to(run_dir)),
                        **result, "binary": str(binary.relative_to(run_dir)), "precision": graph["precision"],
                        "role": item.graph.role, "shared_with": graph["shared_with"], "qnn_nodes": graph["qnn_nodes"],
                        "simulated_calls": len(calls), "simulated_from": sim["loaded_from"],
                        **{k: v for k, v in item.info.items() if k in ("exporter", "legalized_cpu_sqnr_db")}})
        if sim["parts"] > 1:
            notes.append(f"{graph['name']} [{soc}]: {sim['crash']}; SQNR measured running the graph in "
                         f"{sim['parts']} consecutive parts (same ops and precision)")
        if fallback:
            failures.append(f"{graph['name']} [{soc}]: {fallback} CPU-fallback nodes")
        if not sqnr >= cfg.min_sqnr_db:
            failures.append(f"{graph['name']} [{soc}]: SQNR {sqnr:.1f} dB < {cfg.min_sqnr_db} dB ({graph['precision']})")
    shared = [c for c in compiled if c.shared_with]
    if shared:
        notes.append(f"{soc}: {', '.join(c.name for c in shared)} share one context binary ({shared[0].binary.name}, "
                     "ep.share_ep_contexts); the x86 HTP simulator cannot load multi-graph binaries, so their SQNR "
                     "comes from the same ONNX graphs compiled alone")
    bundle.write_bundle(soc, work / soc, compiled, {p.graph.name: p.model_path for p in prepared},
                        {p.graph.name: p.graph.role for p in prepared},
                        {p.graph.name: p.graph.layouts for p in prepared}, results)
    return entries
