"""Legalise an exported ONNX graph for the QNN HTP backend (Neodragon §4.1-4.2 deployment constraints).

The HTP compiler wants static graphs of fp16/int8/int16/int32 tensors with at most 4 (sometimes 5) dims, and
refuses some ONNX patterns outright. Each rewrite here is one small function ``(ModelProto) -> changes`` on the
protobuf graph; :func:`legalize` runs them in order and records what each did:

* ``fold_constants``: constant folding and dead-node removal (onnxscript's optimizer), so shape arithmetic
  disappears from static graphs; any dynamic-shape op left (``Shape``, ``Size``, ``NonZero`` ...) is an error
  naming the node: the graph was exported with a dynamic dimension.
* ``group_norm_to_instance_norm``: opset-21 ``GroupNormalization`` (no shape inference, no HTP kernel) becomes
  ``Reshape -> InstanceNormalization -> Reshape -> Mul -> Add``.
* ``float64_to_float32``: HTP has no float64 (e.g. a RoPE table computed in float64 in torch).
* ``int64_to_int32``: HTP has no int64 data path; graph inputs, casts and data constants become int32 (index
  inputs ONNX requires as int64 — Reshape shapes, Slice bounds, ... — are static and stay).
* ``bool_equal_to_xnor``: ``Equal`` on booleans is rejected by the backend; ``Not(Xor(a, b))`` is the same.
* ``constants_second``: commutative ops read the constant operand second (``x * w``); the backend fails to
  finalise some graphs with a static input 0 (QNN_COMMON_ERROR_MEM_ALLOC).
* ``materialize_broadcast_into_layernorm``: a constant broadcast over leading dims in an ``Add`` that feeds
  ``LayerNormalization`` is expanded to full shape (the backend mis-computes that pattern: 7 dB SQNR).
* ``rms_scale_after_weight``: RMSNorm ``(x * r) * w`` on 4D tensors (per-head q/k norms) becomes ``(x * w) * r``
  (the backend mis-computes the first form at rank 4: 0 dB SQNR).
* ``break_argmax_ties``: ``ArgMax`` of a 0/1 mask (CLIP's first end-of-text token) gets a descending ramp, so
  the HTP ArgMax cannot pick another of the tied positions.
* ``erf_to_tanh_gelu`` is deliberately *not* done: exact GELU exports as ``Gelu`` at opset >= 20, which QNN
  supports; a stray ``Erf`` is reported by the support check with that fix.
* ``lower_high_rank_transposes``: a rank-r ``Transpose`` (r > 4, e.g. the 7D unpatchify permutation) becomes a
  chain of 4D ``[outer, A, B, inner] -> [outer, B, A, inner]`` block swaps between ``Reshape`` views.
* ``lower_high_rank_gathers``: a ``Gather`` with constant indices on rank > 4 data (the un-reduced temporal RoPE's
  6D pair view) gathers from a 3D ``[outer, axis, inner]`` view instead.
* ``flatten_high_rank_ops``: elementwise ops, ``Expand`` and ``MatMul`` on rank > 4 tensors run on merged <=4D
  views (dims merged only where the broadcast pattern allows).
* ``shape_ops_to_reshape``: static ``Unsqueeze``/``Squeeze``/``Flatten`` become ``Reshape`` so they join chains.
* ``collapse_reshape_chains``: ``Reshape(Reshape(x))`` -> one ``Reshape`` (removes the high-rank views the
  lowering leaves behind).

Attention is already decomposed by the exporter at these opsets (``MatMul -> Add(bias) -> Softmax -> MatMul``
with a constant scale); :func:`check_legal` fails on a fused attention op should one appear.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from typing import Callable

import attrs
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from neoc.errors import CheckFailed

DYNAMIC_OPS = ("Shape", "Size", "NonZero", "Loop", "If", "Scan", "Unique", "NonMaxSuppression")
FUSED_ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention")

#: Input slots that ONNX requires to be int64 (static shape/axes/index arguments): (op_type, input index).
INT64_SLOTS = {("Reshape", 1), ("Expand", 1), ("Tile", 1), ("ConstantOfShape", 0), ("Unsqueeze", 1),
               ("Squeeze", 1), ("Slice", 1), ("Slice", 2), ("Slice", 3), ("Slice", 4), ("Pad", 1), ("Resize", 2),
               ("Resize", 3), ("TopK", 1), ("Split", 1), ("ReduceSum", 1), ("ReduceMean", 1), ("ReduceMax", 1),
               ("ReduceMin", 1), ("ReduceProd", 1), ("ReduceL2", 1), ("ReduceSumSquare", 1), ("GatherND", 1),
               ("ScatterND", 1), ("OneHot", 1), ("CenterCropPad", 1)}
#: Ops whose output is int64 by the ONNX spec.
INT64_PRODUCERS = {"ArgMax": 0, "ArgMin": 0, "TopK": 1}


@attrs.define
class LegalizeReport:
    changes: dict[str, int] = attrs.field(factory=dict)
    max_rank: int = 0
    ops: dict[str, int] = attrs.field(factory=dict)
    int32_inputs: list[str] = attrs.field(factory=list)  # graph inputs that changed int64 -> int32

    def to_dict(self) -> dict:
        return attrs.asdict(self)


# ----------------------------------------------------------------------------------------------------------
# small graph helpers
# ----------------------------------------------------------------------------------------------------------


class GraphIndex:
    """Producers, consumers, constants and value types of one graph; rebuilt after each rewrite."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for node in graph.node:
            for index, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((node, index))
        self.initializers = {init.name: init for init in graph.initializer}
        self.graph_outputs = {out.name for out in graph.output}
        self.value_info = {v.name: v for v in itertools.chain(graph.input, graph.value_info, graph.output)}

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def shape(self, name: str) -> list[int] | None:
        info = self.value_info.get(name)
        if info is None or not info.type.HasField("tensor_type"):
            const = self.constant(name)
            return None if const is None else list(const.shape)
        dims = info.type.tensor_type.shape.dim
        if not info.type.tensor_type.HasField("shape") or any(not d.HasField("dim_value") for d in dims):
            return None
        return [d.dim_value for d in dims]

    def elem_type(self, name: str) -> int | None:
        info = self.value_info.get(name)
        if info is not None and info.type.HasField("tensor_type"):
            return info.type.tensor_type.elem_type
        if name in self.initializers:
            return self.initializers[name].data_type
        return None


class Namer:
    def __init__(self, model: onnx.ModelProto, prefix: str):
        self.taken = {n.name for n in model.graph.node} | {o for n in model.graph.node for o in n.output}
        self.taken |= {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
        self.prefix = prefix
        self.count = 0

    def __call__(self, hint: str) -> str:
        while True:
            self.count += 1
            name = f"{self.prefix}_{hint}_{self.count}"
            if name not in self.taken:
                self.taken.add(name)
                return name


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape/type inference, keeping the model in memory (the exporter's graphs are < 2 GB at toy scale; large
    graphs are inferred by path in :mod:`.export`)."""
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)


def replace_uses(model: onnx.ModelProto, old: str, new: str) -> None:
    """Point every node input reading ``old`` at ``new`` (graph outputs are renamed by their producer)."""
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


def topological_sort(model: onnx.ModelProto) -> None:
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progress = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                progress.append(node)
        if len(progress) == len(pending):
            raise CheckFailed(f"legalize: graph has a cycle or a dangling input near node {pending[0].name}")
        pending = progress
    del graph.node[:]
    graph.node.extend(ordered)


def const_node(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(array, name))


# ----------------------------------------------------------------------------------------------------------
# rewrites
# ----------------------------------------------------------------------------------------------------------


def fold_constants(model: onnx.ModelProto) -> int:
    """Constant folding + dead-node removal; returns how many nodes went away."""
    import onnxscript.optimizer

    before = len(model.graph.node)
    optimized = onnxscript.optimizer.optimize(model, num_iterations=2)
    model.CopyFrom(optimized)
    return before - len(model.graph.node)


def group_norm_to_instance_norm(model: onnx.ModelProto) -> int:
    """Opset-21 ``GroupNormalization`` (a function op: onnx's shape inference stops at it, and the HTP
    backend has no kernel for it) becomes ``Reshape [N, G, -1] -> InstanceNormalization -> Reshape -> Mul(scale)
    -> Add(bias)``. Rewritten one at a time as shapes become known."""
    changes = 0
    while True:
        model.CopyFrom(infer_shapes(model))
        index = GraphIndex(model)
        namer = Namer(model, "groupnorm")
        target = next((n for n in model.graph.node if n.op_type == "GroupNormalization" and n.domain in ("", "ai.onnx")
                       and index.shape(n.input[0]) is not None), None)
        if target is None:
            return changes
        attrs_ = {a.name: helper.get_attribute_value(a) for a in target.attribute}
        groups, eps = int(attrs_["num_groups"]), float(attrs_.get("epsilon", 1e-5))
        shape = index.shape(target.input[0])
        channels = shape[1]
        broadcast = [1, channels] + [1] * (len(shape) - 2)
        names = {k: namer(k) for k in ("grouped_shape", "grouped", "ones", "zeros", "normed", "shape", "back",
                                       "scale", "scaled", "bias")}
        scale = index.constant(target.input[1])
        bias = index.constant(target.input[2])
        if scale is None or bias is None:
            raise CheckFailed(f"legalize: GroupNormalization {target.name} has non-constant scale/bias")
        new_nodes = [
            const_node(names["grouped_shape"], np.array([shape[0], groups, -1], dtype=np.int64)),
            helper.make_node("Reshape", [target.input[0], names["grouped_shape"]], [names["grouped"]],
                             name=names["grouped"]),
            const_node(names["ones"], np.ones(groups, dtype=np.float32)),
            const_node(names["zeros"], np.zeros(groups, dtype=np.float32)),
            helper.make_node("InstanceNormalization", [names["grouped"], names["ones"], names["zeros"]],
                             [names["normed"]], name=names["normed"], epsilon=eps),
            const_node(names["shape"], np.array(shape, dtype=np.int64)),
            helper.make_node("Reshape", [names["normed"], names["shape"]], [names["back"]], name=names["back"]),
            const_node(names["scale"], scale.astype(np.float32).reshape(broadcast)),
            helper.make_node("Mul", [names["back"], names["scale"]], [names["scaled"]], name=names["scaled"]),
            const_node(names["bias"], bias.astype(np.float32).reshape(broadcast)),
            helper.make_node("Add", [names["scaled"], names["bias"]], [target.output[0]], name=target.name),
        ]
        position = list(model.graph.node).index(target)
        model.graph.node.remove(target)
        for offset, node in enumerate(new_nodes):
            model.graph.node.insert(position + offset, node)
        changes += 1


def float64_to_float32(model: onnx.ModelProto) -> int:
    changes = 0
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.DOUBLE:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
            changes += 1
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type in ("Cast", "RandomNormal", "RandomUniform", "EyeLike") and attr.name in ("to", "dtype") \
                    and attr.i == TensorProto.DOUBLE:
                attr.i = TensorProto.FLOAT
                changes += 1
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.DOUBLE:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
                changes += 1
    for value in itertools.chain(graph.input, graph.output, graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.DOUBLE:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    return changes


def int64_to_int32(model: onnx.ModelProto, report: LegalizeReport | None = None) -> int:
    """Move the int64 data path to int32 (shape/axes arguments stay int64 constants)."""
    graph = model.graph
    index = GraphIndex(model)
    namer = Namer(model, "i32")
    changes = 0
    for value in graph.input:
        if value.type.tensor_type.elem_type == TensorProto.INT64:
            value.type.tensor_type.elem_type = TensorProto.INT32
            changes += 1
            if report is not None:
                report.int32_inputs.append(value.name)
            # consumers that need int64 (index slots) get a cast back; they are rare for graph inputs
            for node, slot in index.consumers.get(value.name, []):
                if (node.op_type, slot) in INT64_SLOTS:
                    cast = namer("cast64")
                    graph.node.append(helper.make_node("Cast", [value.name], [cast], name=cast, to=TensorProto.INT64))
                    node.input[slot] = cast
    for node in list(graph.node):
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.INT64:
                    if all((c.op_type, s) not in INT64_SLOTS for c, s in index.consumers.get(node.output[0], [])):
                        attr.i = TensorProto.INT32
                        changes += 1
        for slot, name in enumerate(node.input):
            if not name or (node.op_type, slot) in INT64_SLOTS:
                continue
            array = index.constant(name)
            if array is None or array.dtype != np.int64 or name in {i.name for i in graph.input}:
                continue
            if np.any(array > np.iinfo(np.int32).max) or np.any(array < np.iinfo(np.int32).min):
                continue
            small = namer("const")
            graph.node.append(const_node(small, array.astype(np.int32)))
            node.input[slot] = small
            changes += 1
        if node.op_type in INT64_PRODUCERS:
            out_slot = INT64_PRODUCERS[node.op_type]
            produced = node.output[out_slot]
            users = index.consumers.get(produced, [])
            if produced in index.graph_outputs or not users:
                continue
            data_users = [(c, s) for c, s in users if (c.op_type, s) not in INT64_SLOTS]
            if data_users:
                cast = namer("cast32")
                graph.node.append(helper.make_node("Cast", [produced], [cast], name=cast, to=TensorProto.INT32))
                for consumer, slot in data_users:
                    consumer.input[slot] = cast
                changes += 1
    for value in graph.output:  # int64 graph outputs: the producer writes a renamed tensor, a cast the output
        if value.type.tensor_type.elem_type == TensorProto.INT64:
            value.type.tensor_type.elem_type = TensorProto.INT32
            producer = index.producer.get(value.name)
            if producer is not None:
                wide = namer("wide")
                producer.output[list(producer.output).index(value.name)] = wide
                replace_uses(model, value.name, wide)
                graph.node.append(helper.make_node("Cast", [wide], [value.name], name=namer("out"),
                                                   to=TensorProto.INT32))
                changes += 1
    topological_sort(model)
    model.CopyFrom(infer_shapes(model))
    # index slots now fed by an int32 value (e.g. GatherND indices built from an ArgMax) get a cast back
    graph = model.graph  # CopyFrom detached the old reference
    index = GraphIndex(model)
    for node in list(graph.node):
        for slot, name in enumerate(node.input):
            if name and (node.op_type, slot) in INT64_SLOTS and index.elem_type(name) == TensorProto.INT32:
                cast = namer("cast64")
                graph.node.append(helper.make_node("Cast", [name], [cast], name=cast, to=TensorProto.INT64))
                node.input[slot] = cast
    topological_sort(model)
    model.CopyFrom(infer_shapes(model))
    return changes


COMMUTATIVE_OPS = ("Add", "Mul", "Max", "Min", "And", "Or", "Xor", "Equal", "Sum")


def constants_second(model: onnx.ModelProto) -> int:
    """Commutative binary ops with a constant first operand get their operands swapped (``w * x`` -> ``x * w``):
    the HTP backend fails to finalise some graphs with a static tensor as input 0 of an elementwise op
    (QNN_COMMON_ERROR_MEM_ALLOC, seen with T5's ``weight * hidden`` LayerNorm scale)."""
    index = GraphIndex(model)
    changes = 0
    for node in model.graph.node:
        if node.op_type in COMMUTATIVE_OPS and len(node.input) == 2 and index.constant(node.input[0]) is not None \
                and index.constant(node.input[1]) is None:
            first, second = node.input[0], node.input[1]
            node.input[0], node.input[1] = second, first
            changes += 1
    return changes


def materialize_broadcast_into_layernorm(model: onnx.ModelProto, max_bytes: int = 64 << 20) -> int:
    """``Add(x, c) -> LayerNormalization`` with a constant ``c`` broadcast over leading dims (e.g. a position
    table ``[1, L, D]`` added to a batch of 2) computes wrong values on the HTP backend (measured: 7 dB SQNR,
    69 dB once ``c`` has the full shape; a per-channel ``[D]`` bias is fine). ``c`` is expanded to the full
    shape of the sum (up to ``max_bytes``)."""
    index = GraphIndex(model)
    namer = Namer(model, "full")
    changes = 0
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        users = index.consumers.get(node.output[0], [])
        if not any(user.op_type == "LayerNormalization" and slot == 0 for user, slot in users):
            continue
        out_shape = index.shape(node.output[0])
        for slot, name in enumerate(node.input):
            constant = index.constant(name)
            if constant is None or out_shape is None or list(constant.shape) == out_shape:
                continue
            if constant.ndim <= 1 or constant.size * (math.prod(out_shape) // max(constant.size, 1)) * 4 > max_bytes:
                continue  # a trailing per-channel vector is handled correctly; very large expansions are skipped
            full = np.broadcast_to(constant, out_shape).copy()
            full_name = namer("const")
            model.graph.initializer.append(numpy_helper.from_array(full, full_name))
            node.input[slot] = full_name
            changes += 1
    return changes


def rms_scale_after_weight(model: onnx.ModelProto) -> int:
    """RMSNorm ``(x * r) * w`` (``r`` a per-row scale ``[..., 1]``, ``w`` a constant per-channel weight) on a
    rank >= 4 tensor (the per-head q/k norms ``[B, L, H, Dh]``) becomes ``(x * w) * r``. The HTP backend
    mis-computes the first form at rank 4 (measured 0 dB SQNR; 65 dB reordered; rank 3 is fine either way)."""
    index = GraphIndex(model)
    changes = 0
    for outer in model.graph.node:
        if outer.op_type != "Mul" or len(outer.input) != 2:
            continue
        weight_slot = next((k for k in (0, 1) if index.constant(outer.input[k]) is not None), None)
        if weight_slot is None:
            continue
        weight, normed = outer.input[weight_slot], outer.input[1 - weight_slot]
        inner = index.producer.get(normed)
        if inner is None or inner.op_type != "Mul" or len(index.consumers.get(normed, [])) != 1 or \
                normed in index.graph_outputs:
            continue
        shapes = [index.shape(n) for n in inner.input]
        if any(s is None for s in shapes) or max(len(s) for s in shapes) < 4:
            continue
        scale_slot = next((k for k in (0, 1) if shapes[k][-1] == 1 and shapes[1 - k][-1] > 1), None)
        if scale_slot is None or index.constant(inner.input[scale_slot]) is not None:
            continue
        x, scale = inner.input[1 - scale_slot], inner.input[scale_slot]
        inner.input[0], inner.input[1] = x, weight
        outer.input[0], outer.input[1] = normed, scale
        changes += 1
    return changes


def bool_equal_to_xnor(model: onnx.ModelProto) -> int:
    """``Equal(a, b)`` on booleans -> ``Not(Xor(a, b))`` (the backend rejects boolean ElementWiseEqual)."""
    index = GraphIndex(model)
    namer = Namer(model, "xnor")
    changes = 0
    for node in list(model.graph.node):
        if node.op_type != "Equal" or index.elem_type(node.input[0]) != TensorProto.BOOL:
            continue
        xor = namer("xor")
        position = list(model.graph.node).index(node)
        model.graph.node.insert(position, helper.make_node("Xor", list(node.input), [xor], name=xor))
        node.op_type = "Not"
        del node.input[:]
        node.input.append(xor)
        changes += 1
    return changes


def break_argmax_ties(model: onnx.ModelProto) -> int:
    """``ArgMax`` of a 0/1 mask (``Cast(bool)``, e.g. CLIP's "first end-of-text token") has ties, and the HTP
    ArgMax does not promise ONNX's first-index rule. Multiplying the mask by a descending ramp ``L, L-1, ..., 1``
    along the axis keeps the first 1 the unique maximum (exact in fp16 for L <= 2048)."""
    index = GraphIndex(model)
    namer = Namer(model, "argmax")
    changes = 0
    for node in list(model.graph.node):
        if node.op_type != "ArgMax":
            continue
        attrs_ = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        source = index.producer.get(node.input[0])
        shape = index.shape(node.input[0])
        is_mask = source is not None and source.op_type == "Cast" and index.elem_type(source.input[0]) == TensorProto.BOOL
        if not is_mask or shape is None or attrs_.get("select_last_index", 0) != 0 or shape[attrs_.get("axis", 0)] > 2048:
            continue
        axis = attrs_.get("axis", 0) % len(shape)
        length = shape[axis]
        ramp_shape = [1] * len(shape)
        ramp_shape[axis] = length
        ramp = np.arange(length, 0, -1, dtype=np.float32).reshape(ramp_shape)
        elem = index.elem_type(node.input[0])
        ramp = ramp.astype(helper.tensor_dtype_to_np_dtype(elem))
        ramp_name, ranked = namer("ramp"), namer("ranked")
        position = list(model.graph.node).index(node)
        model.graph.node.insert(position, const_node(ramp_name, ramp))
        model.graph.node.insert(position + 1, helper.make_node("Mul", [node.input[0], ramp_name], [ranked], name=ranked))
        node.input[0] = ranked
        changes += 1
    return changes


def block_swap_plan(shape: list[int], perm: list[int], max_rank: int = 4) -> list[tuple[list[int], list[int]]]:
    """A chain of ``(view_shape, perm)`` steps, each of rank <= ``max_rank``, equal to ``transpose(perm)``.

    Size-1 dims are dropped and input dims that stay adjacent and in order are merged first; when that is still
    above ``max_rank``, the permutation is built from block swaps ``[outer, A, B, inner] -> [outer, B, A,
    inner]`` (the first out-of-place target dims pulled forward with the maximal run that follows them).
    """
    # drop size-1 dims
    keep = [d for d in range(len(shape)) if shape[d] != 1]
    rank_of = {d: i for i, d in enumerate(keep)}
    sizes = [shape[d] for d in keep]
    order = [rank_of[d] for d in perm if d in rank_of]
    # merge input dims that remain consecutive in the output order
    groups: list[list[int]] = []
    for d in order:
        if groups and groups[-1][-1] + 1 == d:
            groups[-1].append(d)
        else:
            groups.append([d])
    by_start = sorted(groups, key=lambda g: g[0])
    group_id = {tuple(g): i for i, g in enumerate(by_start)}
    merged_sizes = [math.prod(sizes[d] for d in g) for g in by_start]
    target = [group_id[tuple(g)] for g in groups]
    if target == sorted(target):
        return []
    if len(target) <= max_rank:
        return [(merged_sizes, target)]
    steps = []
    current = list(range(len(target)))
    size_of = dict(enumerate(merged_sizes))
    for i in range(len(target)):
        if current[i] == target[i]:
            continue
        j = current.index(target[i])
        run = 1
        while j + run < len(current) and i + run < len(target) and current[j + run] == target[i + run]:
            run += 1
        outer = math.prod(size_of[g] for g in current[:i])
        block_a = math.prod(size_of[g] for g in current[i:j])
        block_b = math.prod(size_of[g] for g in current[j:j + run])
        inner = math.prod(size_of[g] for g in current[j + run:])
        steps.append(([outer, block_a, block_b, inner], [0, 2, 1, 3]))
        current = current[:i] + current[j:j + run] + current[i:j] + current[j + run:]
    return steps


def _commit_nodes(model: onnx.ModelProto, new_nodes: list, changes: int) -> int:
    """Replace the graph's nodes by ``new_nodes``; re-infer shapes when anything changed. Returns ``changes``."""
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    if changes:
        model.CopyFrom(infer_shapes(model))
    return changes


def lower_high_rank_transposes(model: onnx.ModelProto, max_rank: int = 4) -> int:
    index = GraphIndex(model)
    namer = Namer(model, "lowered")
    changes = 0
    new_nodes = []
    for node in model.graph.node:
        shape = index.shape(node.input[0]) if node.op_type == "Transpose" else None
        if shape is None or len(shape) <= max_rank:
            new_nodes.append(node)
            continue
        perm = next(list(a.ints) for a in node.attribute if a.name == "perm")
        out_shape = [shape[p] for p in perm]
        steps = block_swap_plan(shape, perm, max_rank)
        current = node.input[0]
        for view, step_perm in steps:
            view_name, shape_name, moved = namer("view"), namer("shape"), namer("swap")
            new_nodes.append(const_node(shape_name, np.array(view, dtype=np.int64)))
            new_nodes.append(helper.make_node("Reshape", [current, shape_name], [view_name], name=view_name))
            new_nodes.append(helper.make_node("Transpose", [view_name], [moved], name=moved, perm=step_perm))
            current = moved
        final_shape = namer("shape")
        new_nodes.append(const_node(final_shape, np.array(out_shape, dtype=np.int64)))
        new_nodes.append(helper.make_node("Reshape", [current, final_shape], [node.output[0]], name=node.name))
        changes += 1
    return _commit_nodes(model, new_nodes, changes)


def lower_high_rank_gathers(model: onnx.ModelProto, max_rank: int = 4) -> int:
    """``Gather(data, indices, axis)`` on rank > ``max_rank`` data with constant indices (the un-reduced RoPE's
    ``x[..., 0]`` on its 6D pair view) gathers from the 3D view ``[outer, axis_dim, inner]`` along axis 1 and
    reshapes back: the same values, and the rank-6 view is left to ``collapse_reshape_chains``."""
    index = GraphIndex(model)
    namer = Namer(model, "lowered")
    changes = 0
    new_nodes = []
    for node in model.graph.node:
        shape = index.shape(node.input[0]) if node.op_type == "Gather" else None
        indices = index.constant(node.input[1]) if shape is not None else None
        out_shape = index.shape(node.output[0]) if indices is not None else None
        if shape is None or len(shape) <= max_rank or indices is None or out_shape is None:
            new_nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % len(shape)
        view = [math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])]
        view_name, shape_name, picked, final_shape = namer("view"), namer("shape"), namer("gather"), namer("shape")
        new_nodes.append(const_node(shape_name, np.array(view, dtype=np.int64)))
        new_nodes.append(helper.make_node("Reshape", [node.input[0], shape_name], [view_name], name=view_name))
        new_nodes.append(helper.make_node("Gather", [view_name, node.input[1]], [picked], name=picked, axis=1))
        new_nodes.append(const_node(final_shape, np.array(out_shape, dtype=np.int64)))
        new_nodes.append(helper.make_node("Reshape", [picked, final_shape], [node.output[0]], name=node.name))
        changes += 1
    return _commit_nodes(model, new_nodes, changes)


UNARY_OPS = {"Tanh", "Sigmoid", "Relu", "Exp", "Log", "Sqrt", "Neg", "Abs", "Erf", "Gelu", "Sin", "Cos",
             "Reciprocal", "Softplus", "Elu", "LeakyRelu", "HardSigmoid", "Cast", "Not", "Floor", "Ceil", "Round"}
BINARY_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Greater", "Less", "GreaterOrEqual",
              "LessOrEqual", "And", "Or", "Xor", "Where"}


def merged_views(shapes: list[list[int]], max_rank: int) -> list[list[int]] | None:
    """Views of rank <= ``max_rank`` of broadcast-compatible ``shapes`` (same rank after left-padding with 1s) that
    keep the broadcast, merging as few dims as possible.

    Size-1 dims (in every operand) are dropped; then adjacent dims are merged, outermost first, only where every
    operand is either full-size in both or size-1 in both, until the rank fits. Merging no more than needed
    matters: a fully merged 1D view of a large activation (``[2228224]``) puts everything in the HTP's channel
    dimension, and the backend then takes tens of minutes to prepare a single elementwise op."""
    rank = max(len(s) for s in shapes)
    padded = [[1] * (rank - len(s)) + list(s) for s in shapes]
    out = [max(p[d] for p in padded) for d in range(rank)]
    pattern = {d: tuple(p[d] == out[d] or out[d] == 1 for p in padded) for d in range(rank)}
    groups: list[list[int]] = [[d] for d in range(rank) if out[d] != 1]
    while len(groups) > max_rank:
        for i in range(len(groups) - 1):
            if pattern[groups[i][-1]] == pattern[groups[i + 1][0]]:
                groups[i:i + 2] = [groups[i] + groups[i + 1]]
                break
        else:
            return None
    views = []
    for p in padded:
        view = [math.prod(p[d] for d in g) for g in groups] or [1]
        views.append(view)
    return views


def flatten_high_rank_ops(model: onnx.ModelProto, max_rank: int = 4) -> int:
    """Elementwise ops and ``MatMul`` (with a 2D right operand) on rank > ``max_rank`` tensors run on merged
    <=4D views: ``Reshape`` in, the op, ``Reshape`` back (chains of such ops collapse afterwards)."""
    index = GraphIndex(model)
    namer = Namer(model, "flat")
    new_nodes, changes = [], 0

    def view(name: str, shape: list[int]) -> str:
        if index.shape(name) == shape:
            return name
        shape_name, viewed = namer("shape"), namer("view")
        new_nodes.append(const_node(shape_name, np.array(shape, dtype=np.int64)))
        new_nodes.append(helper.make_node("Reshape", [name, shape_name], [viewed], name=viewed))
        return viewed

    for node in model.graph.node:
        out_shape = index.shape(node.output[0]) if node.output else None
        in_shapes = [index.shape(n) for n in node.input]
        if out_shape is None or any(s is None for s in in_shapes) or \
                max([len(out_shape)] + [len(s) for s in in_shapes]) <= max_rank:
            new_nodes.append(node)
            continue
        if node.op_type == "MatMul" and len(in_shapes[1]) == 2 and len(node.input) == 2:
            rows = math.prod(in_shapes[0][:-1])
            views = [[rows, in_shapes[0][-1]], in_shapes[1]]
        elif node.op_type == "Expand":  # broadcast: view input and target shape with the same pattern
            views = merged_views([in_shapes[0], out_shape], max_rank)
            if views is not None:
                target = namer("target")
                new_nodes.append(const_node(target, np.array(views[1], dtype=np.int64)))
                expanded = namer("out")
                new_nodes.append(helper.make_node("Expand", [view(node.input[0], views[0]), target], [expanded],
                                                  name=node.name))
                shape_name = namer("shape")
                new_nodes.append(const_node(shape_name, np.array(out_shape, dtype=np.int64)))
                new_nodes.append(helper.make_node("Reshape", [expanded, shape_name], [node.output[0]],
                                                  name=namer("unview")))
                changes += 1
                continue
        elif node.op_type in UNARY_OPS and len(node.input) == 1:
            views = merged_views([in_shapes[0]], max_rank)
        elif node.op_type in BINARY_OPS:
            views = merged_views([*in_shapes, out_shape], max_rank)
            views = views[:-1] if views else None
        else:
            new_nodes.append(node)
            continue
        if views is None:
            new_nodes.append(node)
            continue
        inputs = [view(name, shape) for name, shape in zip(node.input, views)]
        flat_out = namer("out")
        copy = helper.make_node(node.op_type, inputs, [flat_out], name=node.name, domain=node.domain)
        copy.attribute.extend(node.attribute)
        new_nodes.append(copy)
        shape_name = namer("shape")
        new_nodes.append(const_node(shape_name, np.array(out_shape, dtype=np.int64)))
        new_nodes.append(helper.make_node("Reshape", [flat_out, shape_name], [node.output[0]],
                                          name=namer("unview")))
        changes += 1
    return _commit_nodes(model, new_nodes, changes)


def shape_ops_to_reshape(model: onnx.ModelProto) -> int:
    """``Unsqueeze``/``Squeeze``/``Flatten`` with static shapes are ``Reshape``s; as such they join reshape
    chains that collapse (e.g. the 6D ``Unsqueeze -> Expand -> Reshape`` of a nearest-neighbour upsample)."""
    index = GraphIndex(model)
    namer = Namer(model, "as_reshape")
    new_nodes, changes = [], 0
    for node in model.graph.node:
        out_shape = index.shape(node.output[0]) if node.op_type in ("Unsqueeze", "Squeeze", "Flatten") else None
        if out_shape is None:
            new_nodes.append(node)
            continue
        shape_name = namer("shape")
        new_nodes.append(const_node(shape_name, np.array(out_shape, dtype=np.int64)))
        new_nodes.append(helper.make_node("Reshape", [node.input[0], shape_name], [node.output[0]], name=node.name))
        changes += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return changes


def collapse_reshape_chains(model: onnx.ModelProto) -> int:
    """``Reshape(Reshape(x, s1), s2)`` -> ``Reshape(x, s2)`` when every use of the inner one is a Reshape (then
    each reads ``x`` and the inner view is gone); identity reshapes (same static shape in and out) are removed."""
    changes = 0
    while True:
        index = GraphIndex(model)
        changed = False
        for node in model.graph.node:
            if node.op_type != "Reshape":
                continue
            inner = index.producer.get(node.input[0])
            if inner is not None and inner.op_type == "Reshape" and inner.output[0] not in index.graph_outputs \
                    and all(user.op_type == "Reshape" and slot == 0 for user, slot in index.consumers[inner.output[0]]):
                for user, _ in index.consumers[inner.output[0]]:
                    user.input[0] = inner.input[0]
                model.graph.node.remove(inner)
                changes += 1
                changed = True
                break
            in_shape, out_shape = index.shape(node.input[0]), index.shape(node.output[0])
            if in_shape is not None and in_shape == out_shape and node.output[0] not in index.graph_outputs:
                replace_uses(model, node.output[0], node.input[0])
                model.graph.node.remove(node)
                changes += 1
                changed = True
                break
        if not changed:
            break
    if changes:
        model.CopyFrom(infer_shapes(model))
    return changes


# ----------------------------------------------------------------------------------------------------------
# checks and driver
# ----------------------------------------------------------------------------------------------------------


def max_tensor_rank(model: onnx.ModelProto) -> int:
    index = GraphIndex(model)
    ranks = [len(s) for s in (index.shape(n) for n in index.value_info) if s is not None]
    return max(ranks, default=0)


def check_legal(model: onnx.ModelProto) -> None:
    """Raise naming the first node that keeps the graph from being static and HTP-typed."""
    index = GraphIndex(model)
    for node in model.graph.node:
        if node.op_type in DYNAMIC_OPS:
            raise CheckFailed(f"legalize: node {node.name} ({node.op_type}) is dynamic; export the graph with "
                              "static input shapes so its shape arithmetic folds away")
        if node.op_type in FUSED_ATTENTION_OPS:
            raise CheckFailed(f"legalize: node {node.name} is a fused {node.op_type}; export at opset <= 22 so "
                              "attention is emitted as MatMul/Softmax/MatMul")
    for value in itertools.chain(model.graph.input, model.graph.output):
        if index.shape(value.name) is None:
            raise CheckFailed(f"legalize: graph input/output {value.name} has no static shape")
        if value.type.tensor_type.elem_type in (TensorProto.DOUBLE, TensorProto.INT64):
            raise CheckFailed(f"legalize: graph input/output {value.name} is still float64/int64")


Rewrite = Callable[[onnx.ModelProto], int]


def legalize(model: onnx.ModelProto, max_rank: int = 4) -> LegalizeReport:
    """Run every rewrite in order on ``model`` (in place); returns what changed."""
    report = LegalizeReport()
    steps: list[tuple[str, Rewrite]] = [
        ("fold_constants", fold_constants),
        ("group_norm_to_instance_norm", group_norm_to_instance_norm),
        ("float64_to_float32", float64_to_float32),
        ("int64_to_int32", lambda m: int64_to_int32(m, report)),
        ("bool_equal_to_xnor", bool_equal_to_xnor),
        ("constants_second", constants_second),
        ("materialize_broadcast_into_layernorm", materialize_broadcast_into_layernorm),
        ("rms_scale_after_weight", rms_scale_after_weight),
        ("break_argmax_ties", break_argmax_ties),
        ("lower_high_rank_transposes", lambda m: lower_high_rank_transposes(m, max_rank)),
        ("lower_high_rank_gathers", lambda m: lower_high_rank_gathers(m, max_rank)),
        ("flatten_high_rank_ops", lambda m: flatten_high_rank_ops(m, max_rank)),
        ("shape_ops_to_reshape", shape_ops_to_reshape),
        ("collapse_reshape_chains", collapse_reshape_chains),
        ("fold_constants_again", fold_constants),
    ]
    for name, rewrite in steps:
        report.changes[name] = int(rewrite(model))
    model.CopyFrom(infer_shapes(model))
    check_legal(model)
    report.max_rank = max_tensor_rank(model)
    report.ops = dict(Counter(node.op_type for node in model.graph.node))
    return report
