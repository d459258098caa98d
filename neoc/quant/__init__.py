"""W8A16 quantisation with AIMET (Neodragon §4.2): calibration data, quantisable graphs, sims, encodings.

* :mod:`neoc.quant.calibration` — record the real inputs of each component while the pipeline generates;
* :mod:`neoc.quant.graphs` — the graphs that get quantised (per component; the denoiser per pyramid stage);
* :mod:`neoc.quant.sim` — AIMET QuantizationSimModel: build, calibrate, AdaRound, SQNR, encodings in and out;
* :mod:`neoc.quant.simulate` — run the pipeline with its components simulated as deployed;
* :mod:`neoc.quant.aimet_modules` — AIMET quantized definitions of neoc's own leaf modules.

The ``quantize-w8a16`` pass (``neoc/passes/quantize_w8a16.py``) documents the record it leaves in
``pipeline.info["quantization"]``; :func:`load_graph_sim` turns that record back into a calibrated sim (e.g. for
the hexagon target's QDQ export). aimet_torch is imported lazily (it takes ~10-20 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from neoc.errors import InputError


def graph_records(pipeline) -> dict[str, dict]:
    """``{graph name: record}`` of every W8A16 graph in ``pipeline.info["quantization"]``."""
    info = pipeline.info.get("quantization")
    if not info:
        raise InputError("the pipeline carries no quantisation record (run the quantize-w8a16 pass)")
    return {name: graph for component in info["components"].values()
            for name, graph in component.get("graphs", {}).items()}


def example_inputs(record: dict) -> tuple[torch.Tensor, ...]:
    """Placeholder inputs with the recorded shapes and dtypes (zeros; enough to build a sim)."""
    return tuple(torch.zeros(shape, dtype=getattr(torch, dtype))
                 for shape, dtype in zip(record["input_shapes"], record["input_dtypes"]))


def load_graph_sim(pipeline, name: str, example: tuple | None = None, run_dir: str | Path | None = None):
    """Rebuild the calibrated AIMET sim of graph ``name`` (``denoiser/stage2``, ``vae_decoder`` ...) from the
    pipeline's float components and its quantisation record. Returns ``(QuantGraph, sim)``.

    Encodings come inline from the record or from ``encodings_file`` (relative paths resolve against
    ``run_dir``); AdaRound graphs load their rounded weights from ``weights_file``.
    """
    import copy

    from safetensors.torch import load_file

    from neoc.quant.graphs import build_graph
    from neoc.quant.sim import SimSettings, load_sim

    records = graph_records(pipeline)
    if name not in records:
        raise InputError(f"no quantised graph '{name}' (graphs: {', '.join(records)})")
    record = records[name]

    def resolve(path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() or run_dir is None else Path(run_dir) / p

    encodings = record.get("encodings")
    if encodings is None:
        encodings = json.loads(resolve(record["encodings_file"]).read_text())
    settings = SimSettings(**pipeline.info["quantization"]["settings"])
    graph = build_graph(pipeline, name, record["structure"])
    module = None
    if "weights_file" in record:
        module = copy.deepcopy(graph.module)
        module.load_state_dict(load_file(str(resolve(record["weights_file"]))))
    example = example if example is not None else example_inputs(record)
    return graph, load_sim(graph, example, settings, encodings, module)
