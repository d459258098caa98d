"""``target/<soc>/``: the context binaries of one SoC plus a ``manifest.json`` an app can load them with.

Manifest (``format: neoc-hexagon-bundle/1``)::

    {"format": ..., "soc": "x-elite", "soc_model": 60, "htp_arch": 73,
     "tools": {"onnxruntime": ..., "onnxruntime-qnn": ..., "qnn_sdk": ..., "onnx": ..., "torch": ...},
     "graphs": [{"name", "role", "context_model", "binary", "shared_with", "precision",
                 "inputs":  [{"name", "shape", "dtype", "meaning", "encoding"}],
                 "outputs": [...same...],
                 "cpu_fallback_nodes", "sqnr_db", "prepare_seconds"}]}

``dtype`` is what the context model takes (int32 where legalisation narrowed int64). ``encoding`` is the graph
I/O's quantisation (``{"scale", "zero_point", "dtype"}`` from the QDQ graph's boundary QuantizeLinear) or
``null`` for float I/O — the app feeds float tensors either way; the binary quantises at its boundary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import onnx
from onnx import TensorProto, numpy_helper

from neoc.targets.hexagon import qnn
from neoc.targets.hexagon.compile import CompiledGraph

FORMAT = "neoc-hexagon-bundle/1"


def io_description(model_path: Path, meanings: dict[str, str] | None = None) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs (name, static shape, dtype, meaning, boundary encoding) of an ONNX graph."""
    model = onnx.load(str(model_path), load_external_data=False)
    encodings = boundary_encodings(model)
    meanings = meanings or {}

    def describe(value: onnx.ValueInfoProto) -> dict:
        tensor = value.type.tensor_type
        return {"name": value.name, "shape": [d.dim_value for d in tensor.shape.dim],
                "dtype": TensorProto.DataType.Name(tensor.elem_type).lower(),
                "meaning": meanings.get(value.name, ""), "encoding": encodings.get(value.name)}

    return [describe(v) for v in model.graph.input], [describe(v) for v in model.graph.output]


def boundary_encodings(model: onnx.ModelProto) -> dict[str, dict]:
    """Graph input -> encoding of the QuantizeLinear that reads it; graph output -> of the DequantizeLinear that
    writes it (QDQ graphs only)."""
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    inputs = {v.name for v in model.graph.input}
    outputs = {v.name for v in model.graph.output}
    found: dict[str, dict] = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        boundary = node.input[0] if node.op_type == "QuantizeLinear" and node.input[0] in inputs else \
            node.output[0] if node.op_type == "DequantizeLinear" and node.output[0] in outputs else None
        if boundary is None or node.input[1] not in constants:
            continue
        zero = constants.get(node.input[2]) if len(node.input) > 2 else None
        found[boundary] = {"scale": constants[node.input[1]].tolist(),
                           "zero_point": None if zero is None else zero.tolist(),
                           "dtype": None if zero is None else str(zero.dtype)}
    return found


def write_bundle(soc: str, bundle_dir: Path, compiled: Sequence[CompiledGraph], sources: dict[str, Path],
                 roles: dict[str, str], meanings: dict[str, dict[str, str]], results: dict[str, dict]) -> Path:
    """Write ``bundle_dir/manifest.json`` for graphs already copied into ``bundle_dir``.

    ``sources``: graph -> the ONNX model it was compiled from (I/O described from it);
    ``results``: graph -> {"cpu_fallback_nodes", "sqnr_db", "prepare_seconds"}.
    """
    soc_model, htp_arch = qnn.soc_ids(soc)
    graphs = []
    for graph in compiled:
        inputs, outputs = io_description(sources[graph.name], meanings.get(graph.name))
        graphs.append({"name": graph.name, "role": roles.get(graph.name, ""),
                       "context_model": graph.context_model.name, "binary": graph.binary.name,
                       "shared_with": graph.shared_with, "precision": graph.precision,
                       "inputs": inputs, "outputs": outputs, **results.get(graph.name, {})})
    manifest = {"format": FORMAT, "soc": soc, "soc_model": soc_model, "htp_arch": htp_arch,
                "context_embed_mode": 0, "tools": qnn.tool_versions(), "graphs": graphs}
    path = bundle_dir / "manifest.json"
    bundle_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, default=_jsonable))
    return path


def _jsonable(value):
    if isinstance(value, float):
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)
