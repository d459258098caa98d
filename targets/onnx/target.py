"""ONNX target: each deployable graph exported to ONNX with static shapes, checked on onnxruntime's CPU EP.

The graphs are the hexagon target's (:mod:`neoc.targets.hexagon.graphs`: text side, one denoiser graph per
pyramid stage, VAE decoder, upsampler, first frame), exported the same way (:mod:`neoc.targets.hexagon.export`)
and optionally legalised for QNN HTP (``legalize: true``), without compiling anything. Each graph is run on its
captured calibration calls with onnxruntime's CPU EP and compared with the float torch module (SQNR); the
session creation time is reported as ``prepare_seconds``. ``target/onnx/`` gets the models and a
``manifest.json`` (inputs/outputs with shapes and dtypes, tool versions).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import attrs

from neoc.config import in_range
from neoc.errors import CheckFailed
from neoc.registry import register_target
from neoc.target_api import Target, TargetResult

FORMAT = "neoc-onnx-bundle/1"


@attrs.frozen
class OnnxConfig:
    opset: int = attrs.field(default=18, validator=in_range(13, 23))
    #: component roles to export (empty: every deployable one the pipeline has)
    graphs: tuple[str, ...] = ()
    calibration_prompts: int = attrs.field(default=1, validator=in_range(1, 64))
    calibration_calls: int = attrs.field(default=2, validator=in_range(1, 512))
    #: apply the hexagon target's QNN HTP legalisation (int32, <=4D, no dynamic ops) to the exported graphs
    legalize: bool = False
    min_sqnr_db: float = 40.0
    external_data_mb: float = 1024.0


@register_target
class OnnxTarget(Target):
    name = "onnx"
    summary = "Export the deployable graphs to ONNX (static shapes), checked on onnxruntime CPU"
    Config = OnnxConfig
    implemented = True

    def build(self, pipeline, ctx) -> TargetResult:
        from neoc.targets.hexagon import bundle, export, legalize, qnn
        from neoc.targets.hexagon.graphs import DEFAULT_CALIBRATION_PROMPTS, deploy_graphs
        from neoc.targets.hexagon.target import calibration_prompts, cpu_check

        cfg = self.config
        work = Path(ctx.work_dir)
        out_dir = work / "onnx"
        prompts = calibration_prompts(ctx, cfg.calibration_prompts) or \
            list(DEFAULT_CALIBRATION_PROMPTS[:cfg.calibration_prompts])
        graphs = deploy_graphs(pipeline, prompts, ctx.seed, roles=cfg.graphs or None,
                               max_calls_per_graph=cfg.calibration_calls)
        if not graphs:
            raise CheckFailed("onnx: the pipeline has no deployable graph to export")
        entries, manifest_graphs, failures = [], [], []
        for graph in graphs:
            path = out_dir / f"{graph.name}.onnx"
            exported = export.export_graph(graph, path, cfg.opset, cfg.external_data_mb)
            info = {"exporter": exported.exporter, "export_seconds": round(exported.seconds, 3)}
            if cfg.legalize:
                model = export.load_model(path)
                info["legalize"] = legalize.legalize(model).changes
                export.save_model(model, path, cfg.external_data_mb)
            start = time.perf_counter()
            sqnr = cpu_check(path, graph)
            prepare = time.perf_counter() - start
            entry = {"name": graph.name, "soc": "onnxruntime-cpu", "path": str(path.relative_to(work.parent)),
                     "cpu_fallback_nodes": 0, "sqnr_db": round(sqnr, 2), "prepare_seconds": round(prepare, 3),
                     "role": graph.role, **info}
            entries.append(entry)
            inputs, outputs = bundle.io_description(path, graph.layouts)
            manifest_graphs.append({"name": graph.name, "role": graph.role, "model": path.name,
                                    "external_data": exported.external_data, "inputs": inputs, "outputs": outputs,
                                    "sqnr_db": entry["sqnr_db"]})
            if not sqnr >= cfg.min_sqnr_db:
                failures.append(f"{graph.name}: CPU SQNR {sqnr:.1f} dB < {cfg.min_sqnr_db} dB")
        manifest = {"format": FORMAT, "opset": cfg.opset, "legalized_for_htp": cfg.legalize,
                    "tools": qnn.tool_versions(), "graphs": manifest_graphs}
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if failures:
            raise CheckFailed("onnx: " + "; ".join(failures))
        notes = ["cpu_fallback_nodes is 0 by construction: the graphs run on onnxruntime's CPU EP; sqnr_db compares "
                 "it with the float torch module on captured calibration calls"]
        return TargetResult(graphs=entries, notes=notes)

    def host_pipeline(self, pipeline, result: TargetResult, ctx):
        """The exported graphs (``target/onnx/``) run by ONNX Runtime's CPU EP inside the pipeline's graph."""
        from neoc.targets.hexagon.host import host_pipeline

        return host_pipeline(pipeline, Path(ctx.work_dir), result.graphs, folder="onnx")
