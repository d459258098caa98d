"""Per-op support report from the QNN execution provider's own answer, before the real compile.

Every node of a legalised graph is grouped by its *signature* (op type, input dtypes and shapes, which inputs
are constants, attributes). One representative node per signature goes into a probe model of independent
single-op subgraphs; a QNN HTP session on it (CPU fallback allowed, assignment recorded, verbose log captured)
answers, per signature, whether the backend takes the op — the same ``backendValidateOpConfig`` check the real
compile makes — and why not (the EP's ``REASON`` line and the backend's tensor/param dump). Unsupported ops
come back with a suggested fix, so a failure names the op and what to do about it. Should the probe session
itself fail (an op that validates but fails to finalise, or a probe too big for the backend's memory), the
signatures are probed in halves, down to single ops, to find it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import attrs
import onnx
from onnx import TensorProto, helper, numpy_helper

from neoc.errors import CheckFailed
from neoc.targets.hexagon import qnn
from neoc.targets.hexagon.legalize import GraphIndex, infer_shapes

#: QuantizeLinear/DequantizeLinear of a QDQ graph: the EP folds them into the quantised node unit of the op they
#: surround, so they are not probed one by one (a lone Q/DQ is a graph-boundary Q/DQ, which the EP declines); the
#: compile itself, with CPU fallback disabled, checks them in place.
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

#: op type -> fix, for ops the HTP backend is known to refuse
OP_FIXES = {
    "Erf": "exact GELU: export at opset >= 20 so it becomes a Gelu op, or use the tanh GELU approximation",
    "Shape": "export with static input shapes and constant-fold (legalize.fold_constants)",
    "Size": "export with static input shapes and constant-fold (legalize.fold_constants)",
    "NonZero": "replace the data-dependent indexing by a static mask multiply",
    "Sinh": "rewrite as (exp(x) - exp(-x)) / 2", "Cosh": "rewrite as (exp(x) + exp(-x)) / 2",
    "Acos": "precompute the value on the host (it only depends on static inputs) or use a polynomial",
    "Det": "precompute on the host",
    "Unique": "data-dependent output shape: keep this on the host",
    "Loop": "unroll the loop at export (static trip count)", "If": "resolve the branch at export time",
    "Equal": "booleans: Not(Xor(a, b)) (legalize.bool_equal_to_xnor); otherwise compare in float",
}
DTYPE_FIXES = {
    TensorProto.DOUBLE: "float64 tensor: compute in float32 (legalize.float64_to_float32)",
    TensorProto.INT64: "int64 tensor: the HTP data path is int32 (legalize.int64_to_int32)",
}


@attrs.define
class OpSupport:
    op_type: str
    signature: str
    nodes: list[str]
    supported: bool
    reason: str = ""
    fix: str = ""

    def to_dict(self) -> dict:
        return attrs.asdict(self)


def _unverified(op: OpSupport) -> bool:
    return "QNN_COMMON_ERROR_MEM_ALLOC" in op.reason


@attrs.define
class SupportReport:
    graph: str
    soc: str
    ops: list[OpSupport] = attrs.field(factory=list)

    @property
    def unsupported(self) -> list[OpSupport]:
        return [op for op in self.ops if not op.supported and not _unverified(op)]

    @property
    def unverified(self) -> list[OpSupport]:
        """Ops whose single-op probe could not be finalised for lack of backend memory (a large fp16 view of a
        tensor the real graph keeps quantised, e.g. the VAE decoder's [1, 32, 17, 64, 64] Reshape): no answer
        about the op; the real compile (CPU fallback disabled) decides and names it if it is refused."""
        return [op for op in self.ops if not op.supported and _unverified(op)]

    def summary(self) -> str:
        bad = self.unsupported
        if not bad:
            note = f" ({len(self.unverified)} too large to probe alone: left to the compile)" if self.unverified \
                else ""
            return f"{self.graph} [{self.soc}]: all {len(self.ops)} op signatures supported by QNN HTP{note}"
        lines = [f"{self.graph} [{self.soc}]: {len(bad)} of {len(self.ops)} op signatures rejected by QNN HTP:"]
        for op in bad:
            lines.append(f"  - {op.op_type} ({op.signature}) at node {op.nodes[0]}"
                         f"{f' (+{len(op.nodes) - 1} more)' if len(op.nodes) > 1 else ''}: {op.reason or 'rejected'}"
                         f"; fix: {op.fix}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"graph": self.graph, "soc": self.soc, "signatures": len(self.ops),
                "unsupported": [op.to_dict() for op in self.unsupported],
                "unverified": [op.to_dict() for op in self.unverified],
                "op_types": sorted({op.op_type for op in self.ops})}


# ----------------------------------------------------------------------------------------------------------


def node_signature(node: onnx.NodeProto, index: GraphIndex) -> str:
    parts = []
    for name in node.input:
        if not name:
            parts.append("-")
            continue
        dtype = index.elem_type(name)
        dtype_name = TensorProto.DataType.Name(dtype) if dtype else "?"
        kind = "const" if index.constant(name) is not None else "x"
        parts.append(f"{kind}:{dtype_name.lower()}{index.shape(name)}")
    attributes = ",".join(f"{a.name}={helper.get_attribute_value(a)!r}"[:60] for a in node.attribute)
    return f"({'; '.join(parts)}){' ' + attributes if attributes else ''}"


def _value_info(name: str, index: GraphIndex) -> onnx.ValueInfoProto | None:
    shape, dtype = index.shape(name), index.elem_type(name)
    if shape is None or dtype is None:
        return None
    return helper.make_tensor_value_info(name, dtype, shape)


def probe_model(model: onnx.ModelProto, nodes: list[onnx.NodeProto], index: GraphIndex,
                prefix: str = "p") -> onnx.ModelProto:
    """Independent single-op subgraphs: each node's non-constant inputs become graph inputs, its constant inputs
    initializers, its outputs graph outputs (all renamed per node so the subgraphs never connect)."""
    inputs, outputs, initializers, new_nodes = [], [], [], []
    for number, node in enumerate(nodes):
        tag = f"{prefix}{number}"
        renamed_inputs = [f"{tag}_{name}" if name else "" for name in node.input]
        renamed_outputs = [f"{tag}_{name}" if name else "" for name in node.output]
        for name, new_name in zip(node.input, renamed_inputs):
            if not name:
                continue
            constant = index.constant(name)
            if constant is not None:
                initializers.append(numpy_helper.from_array(constant, new_name))
            else:
                info = _value_info(name, index)
                if info is None:
                    raise CheckFailed(f"support: node {node.name} input {name} has no static shape/type")
                info.name = new_name
                inputs.append(info)
        for name, new_name in zip(node.output, renamed_outputs):
            if not name:
                continue
            info = _value_info(name, index)
            out = helper.make_tensor_value_info(new_name, index.elem_type(name) or TensorProto.FLOAT, None) \
                if info is None else info
            out.name = new_name
            outputs.append(out)
        copy = helper.make_node(node.op_type, renamed_inputs, renamed_outputs, name=f"{tag}__{node.name}",
                                domain=node.domain)
        copy.attribute.extend(node.attribute)
        new_nodes.append(copy)
    graph = helper.make_graph(new_nodes, "support_probe", inputs, outputs, initializers)
    probe = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return probe


_LAYOUT_TOKEN = re.compile(r"_token_\d+$")
_REASON = re.compile(r"Validation FAILED for \d+ nodes in OrtNodeUnit \((?P<op>[^)]*)\) :\s*\n"
                     r"\s*Operator type: (?P<type>\S+) Node name: (?P<node>\S+) Node index: \d+\s*\n"
                     r"\s*REASON : (?P<reason>[^\n]*)")
_BACKEND = re.compile(r"backendValidateOpConfig\(\) failed for node `(?P<node>[^`]+)` of type `(?P<qnn>[^`]+)` "
                      r"with error code (?P<code>\d+)")
_TENSOR = re.compile(r"name=(?P<name>\S+) id=\d+ version=\d+ type=QNN_TENSOR_TYPE_\w+ dataFormat=\d+ "
                     r"dataType=QNN_DATATYPE_(?P<dtype>\w+) rank=(?P<rank>\d+)")


def parse_reasons(log_text: str) -> dict[str, str]:
    """Node name -> the EP's reason for refusing it (plus the backend op and error code when it gave them)."""
    reasons: dict[str, str] = {}
    backend = {m.group("node"): m for m in _BACKEND.finditer(log_text)}
    for match in _REASON.finditer(log_text):
        node = match.group("node")
        reason = match.group("reason").strip()
        detail = backend.get(node)
        if detail is not None:
            reason += f" (QNN {detail.group('qnn')} validation error {detail.group('code')})"
        reasons.setdefault(node, reason)
    return reasons


def suggest_fix(node: onnx.NodeProto, index: GraphIndex, reason: str) -> str:
    data = [n for n in node.input if n and index.constant(n) is None] + [n for n in node.output if n]
    for name in data:  # constant shape/axes arguments are int64 by the ONNX spec and fine
        dtype = index.elem_type(name)
        if dtype in DTYPE_FIXES:
            return DTYPE_FIXES[dtype]
    ranks = [len(s) for s in (index.shape(n) for n in list(node.input) + list(node.output) if n) if s is not None]
    if node.op_type in OP_FIXES:
        return OP_FIXES[node.op_type]
    if ranks and max(ranks) > 4:
        return (f"rank-{max(ranks)} tensors: rewrite into <=4D views (legalize.lower_high_rank_transposes for "
                "Transpose; a model-level rewrite such as rope-rank-reduction otherwise)")
    if "not supported" in reason:
        return f"replace {node.op_type} by a supported decomposition or run it on the host"
    return f"check the {node.op_type} attributes/dtypes against the QNN HTP op definition"


def _probe(model: onnx.ModelProto, index: GraphIndex, reps: list[onnx.NodeProto], soc: str, work: Path,
           tag: str) -> tuple[dict[str, bool], dict[str, str]] | None:
    """Compile a probe of ``reps``; (original node name -> supported, -> reason), or None if the session failed."""
    probe = probe_model(model, reps, index, prefix=tag)
    path = work / f"support_{tag}.onnx"
    onnx.save(probe, str(path))
    names = {f"{tag}{i}__{node.name}": node.name for i, node in enumerate(reps)}
    plan = qnn.SessionPlan(soc, allow_cpu_fallback=True, log_severity=0)
    with qnn.captured_stderr() as log:
        try:
            session = qnn.create_session(path, plan)
            # layout-transformed nodes (Conv, Resize ... to NHWC) come back as <name>_token_<n>
            on_qnn = {_LAYOUT_TOKEN.sub("", name) for ep, name, _ in qnn.assignment(session) if ep == qnn.EP_NAME}
            del session
            failed = False
        except Exception as exc:  # a finalize failure: the caller bisects
            failed = True
            error = str(exc)
    path.unlink(missing_ok=True)
    if failed:
        return None if len(reps) > 1 else ({reps[0].name: False}, {reps[0].name: error.strip()[:300]})
    reasons = {names[n]: r for n, r in parse_reasons(log[0]).items() if n in names}
    return {names[n]: n in on_qnn for n in names}, reasons


def _ask(model: onnx.ModelProto, index: GraphIndex, reps: list[onnx.NodeProto], soc: str, work: Path,
         tag: str) -> tuple[dict[str, bool], dict[str, str]]:
    """Probe ``reps`` together; when the probe session itself fails (one op that validates but fails to finalise,
    or a probe too large for the backend's memory: QNN_COMMON_ERROR_MEM_ALLOC), ask each half separately, down
    to single ops, so the answer still names the op at fault."""
    answer = _probe(model, index, reps, soc, work, tag)
    if answer is not None:
        return answer
    half = len(reps) // 2
    first = _ask(model, index, reps[:half], soc, work, f"{tag}a")
    second = _ask(model, index, reps[half:], soc, work, f"{tag}b")
    return {**first[0], **second[0]}, {**first[1], **second[1]}


def support_report(model: onnx.ModelProto, graph_name: str, soc: str, work_dir: Path) -> SupportReport:
    """Ask the QNN HTP EP about every op signature of ``model`` (a legalised, shape-inferred graph)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    if any(GraphIndex(model).shape(o) is None for n in model.graph.node for o in n.output if o):
        model = infer_shapes(model)  # e.g. a QDQ graph as onnxruntime's quantiser writes it (no value_info)
    index = GraphIndex(model)
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type == "Constant" or all(index.constant(n) is not None for n in node.input if n):
            continue  # constant subgraphs are folded by onnxruntime before the EP sees the graph
        if node.op_type in QDQ_OPS:
            continue  # validated with the node unit they belong to; alone they would be graph boundary Q/DQ
        groups[f"{node.op_type} {node_signature(node, index)}"].append(node)
    reps = [nodes[0] for nodes in groups.values()]
    supported, reasons = _ask(model, index, reps, soc, work_dir, "all")
    report = SupportReport(graph_name, soc)
    for key, nodes in groups.items():
        rep = nodes[0]
        ok = supported.get(rep.name, False)
        reason = reasons.get(rep.name, "")
        report.ops.append(OpSupport(rep.op_type, key.split(" ", 1)[1], [n.name for n in nodes], ok,
                                    "" if ok else (reason or "not assigned to QNN"),
                                    "" if ok else suggest_fix(rep, index, reason)))
    return report


def check_supported(report: SupportReport) -> None:
    if report.unsupported:
        raise CheckFailed("hexagon: " + report.summary())

