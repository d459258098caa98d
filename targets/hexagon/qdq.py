"""W8A16 QuantizeLinear/DequantizeLinear (QDQ) graphs from the recorded encodings (Neodragon §4.2, Table 9).

The ``quantize-w8a16`` pass describes quantisation without applying it: ``pipeline.info["quantization"]``
(format ``neoc-quant/1``, see ``passes/quantize_w8a16.py``) holds per component a scheme (``W8A16``,
``W8A16+AdaRound``, ``FP16``) and per quantised graph (``denoiser/stage{s}``, ``vae_decoder`` ...) AIMET's
torch-format encodings, inline or in ``encodings_file`` (relative to the run folder)::

    {"activation_encodings": {module: {"input"|"output": {index: enc}}}, "param_encodings": {param: [enc, ...]}}
    enc = {"bitwidth", "dtype", "is_symmetric", "min", "max", "offset", "scale"}

Module and parameter names are relative to the pass's graph wrapper (``denoiser.mmdit.…`` / ``component.…``);
the first path element is the wrapper's own attribute and is dropped, so names match the component. They are
matched to the exported graph as follows:

* parameters by *value*: the exporter folds transposes into new initializers, so an initializer equal to the
  parameter (per-channel axis 0) or to its transpose (axis 1) is the parameter;
* module outputs by the exporter's ``pkg.torch.onnx.name_scopes`` node metadata: the module's output is the
  last tensor its scope produces for use outside it.

The QDQ graph itself is written by onnxruntime's QNN quantisation tool (``get_qnn_qdq_config`` +
``quantize``), which knows the backend's QDQ rules (int32 biases, op-specific encodings, 16-bit converts); the
AIMET encodings enter as its tensor overrides, and tensors without one get min/max encodings from the same
captured calibration calls. :func:`layernorm_scale_overrides` then gives every LayerNormalization scale a type the HTP
LayerNorm takes with 16-bit activations (uint8 or symmetric int16; the int8 weight default is refused). A component
the record marks FP16, or a pipeline without a record, compiles in FP16
and the target's notes say so. AdaRound's rounded weights are not re-applied here (the weights are quantised from
the float component with the recorded scales); the target notes it when it happens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import attrs
import numpy as np
import onnx
import torch
from onnx import numpy_helper

from neoc.errors import InputError


@attrs.define
class QuantPlan:
    """What the target does with one graph: ``fp16`` (float graph in HTP fp16) or ``w8a16`` (QDQ)."""

    scheme: str = "fp16"
    param_bw: int = 8
    output_bw: int = 16
    encodings: dict | None = None
    note: str = ""

    @property
    def quantized(self) -> bool:
        return self.scheme == "w8a16"


def record_name(graph_name: str) -> str:
    """Target graph name -> the pass's graph name (``denoiser_stage2`` -> ``denoiser/stage2``)."""
    match = re.fullmatch(r"denoiser_stage(\d+)", graph_name)
    return f"denoiser/stage{match.group(1)}" if match else graph_name


def quant_plan(pipeline, role: str, graph_name: str, run_dir: Path | None = None) -> QuantPlan:
    """The recorded plan of one graph (``pipeline.info["quantization"]``), FP16 when there is none."""
    info = (getattr(pipeline, "info", None) or {}).get("quantization")
    if not info:
        return QuantPlan(note="no quantize-w8a16 record: compiled in FP16")
    component = info.get("components", {}).get(role)
    if component is None:
        return QuantPlan(note=f"quantize-w8a16 recorded nothing for '{role}': compiled in FP16")
    scheme = str(component.get("scheme", "FP16")).upper()
    if scheme == "FP16":
        return QuantPlan(note="FP16 by the quantize-w8a16 plan (Table 9)")
    if not scheme.startswith("W8A16"):
        raise InputError(f"pipeline.info['quantization'] component '{role}': unknown scheme {scheme!r}")
    record = component.get("graphs", {}).get(record_name(graph_name))
    if record is None:
        return QuantPlan(note=f"quantize-w8a16 has no encodings for graph '{record_name(graph_name)}': FP16")
    encodings = record.get("encodings")
    if encodings is None and record.get("encodings_file"):
        path = Path(record["encodings_file"])
        path = path if path.is_absolute() or run_dir is None else run_dir / path
        if not path.is_file():
            raise InputError(f"quantize-w8a16 encodings file {path} (graph '{record_name(graph_name)}') not found")
        encodings = json.loads(path.read_text())
    note = "W8A16 QDQ from the quantize-w8a16 encodings"
    if "ADAROUND" in scheme:
        note += " (AdaRound weights not re-applied: weights quantised from the float component)"
    return QuantPlan("w8a16", int(component.get("param_bw", 8)), int(component.get("output_bw", 16)), encodings,
                     note)


# ----------------------------------------------------------------------------------------------------------
# AIMET encodings -> per-name (scale, zero_point) lists
# ----------------------------------------------------------------------------------------------------------


@attrs.frozen
class Encoding:
    scales: tuple[float, ...]
    offsets: tuple[int, ...]  # AIMET convention: q = round(x / scale) - offset, i.e. zero_point = -offset
    bitwidth: int
    symmetric: bool


def _drop_wrapper(name: str) -> str:
    """``denoiser.mmdit.x`` / ``component.x`` (the pass's wrapper attribute first) -> ``mmdit.x`` / ``x``."""
    head, _, rest = name.partition(".")
    return rest if head in ("denoiser", "component") and rest else name


def _encoding(channels: list[dict]) -> Encoding:
    first = channels[0]
    return Encoding(tuple(float(c["scale"]) for c in channels), tuple(int(c.get("offset", 0)) for c in channels),
                    int(first.get("bitwidth", first.get("bw", 8))),
                    str(first.get("is_symmetric", first.get("is_sym", "False"))).lower() == "true")


def parse_encodings(encodings: dict) -> tuple[dict[str, Encoding], dict[str, Encoding]]:
    """(param encodings by parameter name, module-output encodings by module name), wrapper prefix dropped.

    ``activation_encodings`` may be torch-format (``module -> {"output": {"0": enc}}``) or flat
    (``tensor -> [enc]``)."""
    params = {}
    for name, channels in encodings.get("param_encodings", {}).items():
        channels = channels if isinstance(channels, list) else [channels]
        if channels:
            params[_drop_wrapper(name)] = _encoding(channels)
    activations = {}
    for name, value in encodings.get("activation_encodings", {}).items():
        if isinstance(value, dict) and "output" in value:
            outputs = value["output"]
            enc = outputs.get("0", outputs.get(0)) if isinstance(outputs, dict) else None
            if enc:
                activations[_drop_wrapper(name)] = _encoding(enc if isinstance(enc, list) else [enc])
        elif isinstance(value, list) and value:
            activations[_drop_wrapper(name)] = _encoding(value)
    return params, activations


def _quant_type(bitwidth: int, signed: bool):
    from onnxruntime.quantization import QuantType

    if bitwidth <= 8:
        return QuantType.QInt8 if signed else QuantType.QUInt8
    return QuantType.QInt16 if signed else QuantType.QUInt16


def _override(encoding: Encoding, signed: bool, axis: int | None = None) -> list[dict]:
    qtype = _quant_type(encoding.bitwidth, signed)
    dtype = np.int8 if encoding.bitwidth <= 8 and signed else np.uint8 if encoding.bitwidth <= 8 else \
        np.int16 if signed else np.uint16
    out = []
    # AIMET's grid is unsigned [0, 2^bw - 1] with q = round(x / scale) - offset; a signed type shifts it by 2^(bw-1)
    shift = 2 ** (encoding.bitwidth - 1) if signed else 0
    for channel, (scale, offset) in enumerate(zip(encoding.scales, encoding.offsets)):
        entry = {"scale": np.array(scale, dtype=np.float32), "zero_point": np.array(-offset - shift, dtype=dtype),
                 "quant_type": qtype}
        if channel == 0 and axis is not None and len(encoding.scales) > 1:
            entry["axis"] = axis
        out.append(entry)
    return out


def match_params(model: onnx.ModelProto, params: dict[str, torch.Tensor]) -> dict[str, tuple[str, int]]:
    """torch parameter name -> (initializer name, output-channel axis) by value (w or w.T)."""
    by_shape: dict[tuple, list[onnx.TensorProto]] = {}
    for init in model.graph.initializer:
        by_shape.setdefault(tuple(init.dims), []).append(init)
    found = {}
    for name, tensor in params.items():
        weight = tensor.detach().float().cpu().numpy()
        candidates = [(weight, 0)] + ([(weight.T, 1)] if weight.ndim == 2 else [])
        for value, axis in candidates:
            for init in by_shape.get(tuple(value.shape), []):
                array = numpy_helper.to_array(init)
                if array.dtype == np.float32 and np.array_equal(array, value):
                    found[name] = (init.name, axis)
                    break
            if name in found:
                break
    return found


def node_modules(node: onnx.NodeProto, prefix: str = "component.") -> list[str]:
    """The torch modules (outermost first, names relative to the component) a node was exported from.

    The exporter's ``pkg.torch.onnx.name_scopes`` lists the module path at each nesting level, then the op:
    ``['', 'component', 'component.mmdit', 'component.mmdit.proj_out', 'linear']``."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = json.loads(prop.value.replace("'", '"'))
            except json.JSONDecodeError:
                return []
            return [m[len(prefix):] for m in scopes[1:-1] if m.startswith(prefix)]
    return []


def module_outputs(model: onnx.ModelProto, prefix: str = "component.") -> dict[str, str]:
    """module name (relative to the component) -> the ONNX tensor its forward returns: the last tensor, in
    topological order, that a node of the module produces for a node outside it (or for the graph output)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    scopes = {node.name: set(node_modules(node, prefix)) for node in model.graph.node}
    graph_outputs = {o.name for o in model.graph.output}
    outputs: dict[str, str] = {}
    for node in model.graph.node:
        for module in scopes[node.name]:
            for out in node.output:
                users = consumers.get(out, [])
                if out in graph_outputs or any(module not in scopes[u.name] for u in users):
                    outputs[module] = out
    return outputs


def layernorm_scale_overrides(model: onnx.ModelProto, overrides: dict[str, list[dict]],
                              activation_bw: int) -> dict[str, str]:
    """Give every quantised ``LayerNormalization`` scale (gamma) a type the HTP LayerNorm takes.

    With 16-bit activations QNN HTP validates ``LayerNorm`` only with a uint8 or a symmetric int16 gamma: the
    int8 symmetric default of W8 weights and uint16 are refused (``backendValidateOpConfig`` error 3110; asked of
    onnxruntime-qnn 2.7 for v73 and v79, with and without a bias input — a zero bias does not change the answer).
    So a gamma without an override gets uint8 asymmetric (AIMET's HTP config also quantises LayerNorm weights
    asymmetrically; a constant all-ones gamma, as the exporter writes for ``elementwise_affine=False``, is exact
    at 255 * 1/255). An AIMET 8-bit encoding of a gamma is re-expressed on the same grid as uint8; a 16-bit
    asymmetric one cannot be, and becomes symmetric int16 from the calibration range. Returns {gamma: what was
    done} (8-bit activation graphs need nothing)."""
    from onnxruntime.quantization import QuantType

    if activation_bw <= 8:
        return {}
    initializers = {init.name for init in model.graph.initializer}
    done = {}
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        gamma = node.input[1]
        existing = overrides.get(gamma)
        if existing is None:
            overrides[gamma] = [{"quant_type": QuantType.QUInt8, "symmetric": False}]
            done[gamma] = "uint8 asymmetric (default)"
            continue
        first = existing[0]
        if first.get("quant_type") in (QuantType.QUInt8,) or (first.get("quant_type") == QuantType.QInt16 and
                                                               int(first.get("zero_point", 0)) == 0):
            continue
        if first.get("quant_type") == QuantType.QInt8 and "scale" in first:  # AIMET 8-bit grid, as uint8
            overrides[gamma] = [{**entry, "quant_type": QuantType.QUInt8,
                                 "zero_point": np.array(int(entry["zero_point"]) + 128, dtype=np.uint8)}
                                for entry in existing]
            done[gamma] = "AIMET int8 grid as uint8"
        else:
            overrides[gamma] = [{"quant_type": QuantType.QInt16, "symmetric": True}]
            done[gamma] = "int16 symmetric (AIMET 16-bit asymmetric grid not expressible)"
    return done


def tensor_overrides(model: onnx.ModelProto, component: torch.nn.Module, encodings: dict,
                     module_prefix: str = "component.") -> tuple[dict[str, list[dict]], dict[str, int]]:
    """ORT tensor-quantisation overrides from AIMET encodings, and how many params/activations matched."""
    params, activations = parse_encodings(encodings)
    named = dict(component.named_parameters())
    matched = match_params(model, {n: named[n] for n in params if n in named})
    overrides: dict[str, list[dict]] = {}
    for name, (init_name, axis) in matched.items():
        overrides[init_name] = _override(params[name], signed=True, axis=axis)
    outputs = module_outputs(model, module_prefix)
    tensor_names = {v.name for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    hit = 0
    for name, encoding in activations.items():
        tensor = name if name in tensor_names else outputs.get(name)
        if tensor is not None:
            overrides[tensor] = _override(encoding, signed=False)
            hit += 1
    return overrides, {"params_matched": len(matched), "params_total": len(params), "activations_matched": hit,
                       "activations_total": len(activations)}


# ----------------------------------------------------------------------------------------------------------
# writing the QDQ model
# ----------------------------------------------------------------------------------------------------------


class _Reader:
    """onnxruntime CalibrationDataReader over captured calls (already cast to the graph's input dtypes)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def calibration_feeds(model: onnx.ModelProto, calls: Sequence[Sequence[torch.Tensor]]) -> list[dict[str, np.ndarray]]:
    dtypes = {onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.FLOAT: np.float32,
              onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.FLOAT16: np.float16}
    feeds = []
    for call in calls:
        feed = {}
        for value, tensor in zip(model.graph.input, call, strict=True):
            feed[value.name] = tensor.detach().cpu().numpy().astype(dtypes[value.type.tensor_type.elem_type])
        feeds.append(feed)
    return feeds


def write_qdq(float_path: Path, qdq_path: Path, calls: Sequence[Sequence[torch.Tensor]], plan: QuantPlan,
              component: torch.nn.Module | None = None) -> dict:
    """Quantise the legalised float graph at ``float_path`` to a W8A16 QDQ graph at ``qdq_path``."""
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    model = onnx.load(str(float_path))
    overrides, matched = ({}, {"params_matched": 0, "activations_matched": 0})
    if plan.encodings and component is not None:
        overrides, matched = tensor_overrides(model, component, plan.encodings)
    layernorm = layernorm_scale_overrides(model, overrides, plan.output_bw)
    config = get_qnn_qdq_config(
        str(float_path), _Reader(calibration_feeds(model, calls)),
        activation_type=QuantType.QUInt16 if plan.output_bw > 8 else QuantType.QUInt8,
        weight_type=QuantType.QInt8 if plan.param_bw <= 8 else QuantType.QInt16,
        per_channel=True, init_overrides=overrides or None, weight_symmetric=True)
    quantize(str(float_path), str(qdq_path), config)
    return {"scheme": plan.scheme, "param_bw": plan.param_bw, "output_bw": plan.output_bw, **matched,
            "layernorm_scales": len(layernorm)}
