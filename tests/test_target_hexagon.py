"""hexagon target: legalisation rewrites, QNN HTP context binaries for both SoCs, a rejected op named with its fix,
weight sharing, the AI Hub path with a recorded fake client, the bundle manifest.

Graphs are built by hand with onnx.helper (a handful of nodes), so each QNN compile takes well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from neoc.errors import CheckFailed
from neoc.targets.hexagon import bundle, compile as qnn_compile, legalize, qai_hub, qnn, simulate, support

RNG = np.random.default_rng(0)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def mlp_model(tokens: int = 8, width: int = 16, weights: np.ndarray | None = None) -> onnx.ModelProto:
    """x [1, tokens, width] -> tanh(x @ W + b) @ W."""
    weight = weights if weights is not None else (RNG.standard_normal((width, width)) / 4).astype(np.float32)
    bias = np.linspace(-0.5, 0.5, width, dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm0"),
             helper.make_node("Add", ["h", "b"], ["hb"], name="add0"),
             helper.make_node("Tanh", ["hb"], ["t"], name="tanh0"),
             helper.make_node("MatMul", ["t", "w"], ["y"], name="mm1")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TP.FLOAT, [1, tokens, width])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [1, tokens, width])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def cpu_run(path: Path, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


# ---------------------------------------------------------------------------------------------------------------
# legalisation (pure graph rewrites, checked on onnxruntime's CPU EP)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, perm", [([1, 3, 2, 2, 4, 5, 2], [0, 6, 1, 2, 4, 3, 5]),  # the unpatchify
                                         ([2, 3, 4, 5, 6], [4, 2, 0, 3, 1]),
                                         ([2, 3, 4, 5, 6, 7], [5, 4, 3, 2, 1, 0])])
def test_block_swap_plan_equals_transpose(shape, perm):
    x = RNG.standard_normal(shape)
    steps = legalize.block_swap_plan(shape, perm, max_rank=4)
    y = x
    for view, step_perm in steps:
        assert len(view) <= 4
        y = np.transpose(y.reshape(view), step_perm)
    assert np.array_equal(y.reshape([shape[p] for p in perm]), np.transpose(x, perm))


def test_merged_views_keep_broadcast():
    # [B, C, T, H, W] + [1, C, 1, 1, 1]: T and H merge; C stays apart from them (its broadcast pattern differs)
    assert legalize.merged_views([[2, 8, 3, 4, 4], [1, 8, 1, 1, 1]], 4) == [[2, 8, 12, 4], [1, 8, 1, 1]]
    # only as many dims merge as the rank needs (outermost first): never a 1D view of a large activation
    assert legalize.merged_views([[2, 3, 4, 5, 6], [2, 3, 4, 5, 6]], 4) == [[6, 4, 5, 6], [6, 4, 5, 6]]
    assert legalize.merged_views([[1, 16, 17, 64, 64]], 4) == [[16, 17, 64, 64]]
    assert legalize.merged_views([[2, 3, 5, 7, 11], [1, 3, 1, 7, 1]], 4) is None  # alternating broadcast


def test_legalize_makes_toy_graph_htp_shaped(tmp_path):
    """int64 input, a float64 island, Equal on booleans, a 7D transpose, a 5D MatMul: after legalize the graph is
    int32/fp32, <=4D inside, and computes the same values."""
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TP.DOUBLE, name="to_double"),
        helper.make_node("Mul", ["ids_f", "two"], ["ids_2"], name="double_mul"),
        helper.make_node("Cast", ["ids_2"], ["ids_32"], to=TP.FLOAT, name="to_float"),
        helper.make_node("Greater", ["ids_32", "half"], ["valid"], name="gt"),
        helper.make_node("Equal", ["valid", "valid_t"], ["same"], name="bool_eq"),
        helper.make_node("Cast", ["same"], ["same_f"], to=TP.FLOAT, name="same_f"),
        helper.make_node("Reshape", ["x", "shape7"], ["x7"], name="to7d"),
        helper.make_node("Transpose", ["x7"], ["x7t"], perm=[0, 6, 1, 2, 4, 3, 5], name="unpatchify"),
        helper.make_node("Reshape", ["x7t", "shape5"], ["x5"], name="to5d"),
        helper.make_node("Transpose", ["x5"], ["x5t"], perm=[0, 2, 3, 4, 1], name="channels_last"),
        helper.make_node("MatMul", ["x5t", "w"], ["mm"], name="mm5d"),
        helper.make_node("ReduceSum", ["same_f", "axes"], ["score"], keepdims=0, name="score"),
        helper.make_node("Mul", ["mm", "score"], ["y"], name="scale"),
    ]
    inits = [numpy_helper.from_array(np.array(2.0), "two"), numpy_helper.from_array(np.float32(0.5), "half"),
             numpy_helper.from_array(np.array([1, 3, 2, 2, 2, 2, 4], np.int64), "shape7"),
             numpy_helper.from_array(np.array([1, 4, 3, 4, 4], np.int64), "shape5"),
             numpy_helper.from_array(RNG.standard_normal((4, 4)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0, 1], np.int64), "axes")]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("ids", TP.INT64, [1, 6]),
                                             helper.make_tensor_value_info("valid_t", TP.BOOL, [1, 6]),
                                             helper.make_tensor_value_info("x", TP.FLOAT, [1, 12, 16])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [1, 3, 4, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    source = save(model, tmp_path / "toy.onnx")
    report = legalize.legalize(model)
    legal = save(model, tmp_path / "legal.onnx")

    ops = {n.op_type for n in model.graph.node}
    assert "Xor" in ops and report.changes["bool_equal_to_xnor"] == 1
    assert report.changes["lower_high_rank_transposes"] == 2 and report.changes["flatten_high_rank_ops"] >= 1
    assert report.int32_inputs == ["ids"]
    index = legalize.GraphIndex(model)
    inner = [index.shape(v.name) for v in model.graph.value_info]
    assert max(len(s) for s in inner if s is not None) <= 4  # only the graph output keeps its 5D shape
    assert all(index.elem_type(v.name) not in (TP.DOUBLE, TP.INT64) for v in model.graph.value_info
               if index.elem_type(v.name) is not None and not any(v.name in n.input[1:] for n in model.graph.node
                                                                   if n.op_type in ("Reshape",)))
    feeds = {"ids": np.array([[0, 1, 0, 3, 1, 0]]), "valid_t": np.array([[True, False, True, True, False, True]]),
             "x": RNG.standard_normal((1, 12, 16)).astype(np.float32)}
    expected = cpu_run(source, feeds)[0]
    got = cpu_run(legal, {**feeds, "ids": feeds["ids"].astype(np.int32)})[0]
    assert np.allclose(expected, got, atol=1e-5)


def test_rank6_rope_gather_lowered_and_compiles(tmp_path):
    """The un-reduced temporal RoPE: a [1, L, 1, H, D/2, 2] pair view, x[..., 0] and x[..., 1] by Gather on the
    last axis. After legalisation nothing is above 4D, the values are the same, and HTP compiles it strictly."""
    shape6 = [1, 12, 1, 4, 8, 2]
    nodes = [helper.make_node("Reshape", ["x", "s6"], ["pairs"], name="pair_view"),
             helper.make_node("Gather", ["pairs", "i0"], ["real"], name="select_real", axis=5),
             helper.make_node("Gather", ["pairs", "i1"], ["imag"], name="select_imag", axis=5),
             helper.make_node("Mul", ["real", "imag"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "rope6", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 12, 4, 16])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [1, 12, 1, 4, 8])],
                              [numpy_helper.from_array(np.array(shape6, np.int64), "s6"),
                               numpy_helper.from_array(np.array(0, np.int64), "i0"),
                               numpy_helper.from_array(np.array(1, np.int64), "i1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    x = RNG.standard_normal((1, 12, 4, 16)).astype(np.float32)
    expected = cpu_run(save(model, tmp_path / "raw.onnx"), {"x": x})[0]
    report = legalize.legalize(model)
    assert report.changes["lower_high_rank_gathers"] == 2 and report.max_rank <= 5
    assert all(len(legalize.GraphIndex(model).shape(o) or []) <= 4 for n in model.graph.node for o in n.output
               if n.output[0] != "y")
    path = save(model, tmp_path / "legal.onnx")
    assert np.array_equal(cpu_run(path, {"x": x})[0], expected)
    compiled = qnn_compile.compile_graph(path, "rope6", "x-elite", tmp_path / "ctx")
    assert compiled.cpu_fallback_nodes == 0


def _rms_norm_graph(shape):
    """(x * rsqrt(mean(x^2) + eps)) * w over the last dim: the MMDiT's per-head q/k RMSNorm as exported."""
    width = shape[-1]
    nodes = [helper.make_node("Pow", ["x", "two"], ["p"]), helper.make_node("ReduceMean", ["p", "axes"], ["m"]),
             helper.make_node("Add", ["m", "eps"], ["a"]), helper.make_node("Sqrt", ["a"], ["s"]),
             helper.make_node("Reciprocal", ["s"], ["r"]), helper.make_node("Mul", ["x", "r"], ["n"]),
             helper.make_node("Mul", ["n", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.float32(2.0), "two"), numpy_helper.from_array(np.array([-1]), "axes"),
             numpy_helper.from_array(np.float32(1e-6), "eps"),
             numpy_helper.from_array(RNG.standard_normal(width).astype(np.float32), "w")]
    return nodes, inits


def _broadcast_add_layernorm_graph(shape):
    """(x + position_table[1, L, D]) -> LayerNormalization: CLIP's embeddings at batch 2."""
    width = shape[-1]
    nodes = [helper.make_node("Add", ["x", "table"], ["a"]),
             helper.make_node("LayerNormalization", ["a", "g", "b"], ["y"], axis=-1, epsilon=1e-5)]
    inits = [numpy_helper.from_array((RNG.standard_normal([1, *shape[1:]]) * 0.02).astype(np.float32), "table"),
             numpy_helper.from_array(np.ones(width, np.float32), "g"),
             numpy_helper.from_array(np.zeros(width, np.float32), "b")]
    return nodes, inits


@pytest.mark.parametrize("build, shape, rewrite", [(_rms_norm_graph, [1, 32, 4, 32], "rms_scale_after_weight"),
                                                   (_broadcast_add_layernorm_graph, [2, 32, 64],
                                                    "materialize_broadcast_into_layernorm")])
def test_htp_miscomputed_patterns_are_rewritten(build, shape, rewrite, tmp_path):
    """Two patterns the HTP backend computes wrongly (SQNR ~0-7 dB as exported); after legalisation they match
    the CPU result to fp16 precision."""
    nodes, inits = build(shape)
    graph = helper.make_graph(nodes, "pattern", [helper.make_tensor_value_info("x", TP.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TP.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    x = (RNG.standard_normal(shape) * 0.05).astype(np.float32)
    expected = cpu_run(save(model, tmp_path / "raw.onnx"), {"x": x})[0]
    report = legalize.legalize(model)
    assert report.changes[rewrite] == 1
    path = save(model, tmp_path / "legal.onnx")
    assert np.allclose(cpu_run(path, {"x": x})[0], expected, atol=1e-5)
    session = qnn.create_session(path, qnn.SessionPlan("x-elite"))
    measured = session.run(None, {"x": x})[0]
    assert simulate.sqnr_db([expected], [measured]) > 40.0


def test_argmax_ties_broken_towards_first_index(tmp_path):
    nodes = [helper.make_node("Equal", ["ids", "eos"], ["hit"], name="eq"),
             helper.make_node("Cast", ["hit"], ["hit_f"], to=TP.FLOAT, name="cast"),
             helper.make_node("ArgMax", ["hit_f"], ["pos"], axis=-1, keepdims=0, name="argmax")]
    graph = helper.make_graph(nodes, "eos", [helper.make_tensor_value_info("ids", TP.INT64, [2, 8])],
                              [helper.make_tensor_value_info("pos", TP.INT64, [2])],
                              [numpy_helper.from_array(np.array(1, np.int64), "eos")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    legalize.legalize(model)
    assert "Mul" in {n.op_type for n in model.graph.node}
    ids = np.array([[0, 5, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1]], np.int32)
    assert cpu_run(save(model, tmp_path / "m.onnx"), {"ids": ids})[0].tolist() == [2, 1]


# ---------------------------------------------------------------------------------------------------------------
# QNN HTP: compile for both SoCs, simulate, reject with a named op and fix
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_mlp(tmp_path_factory):
    """The toy MLP compiled for both SoCs, with its HTP-simulated outputs on one input."""
    folder = tmp_path_factory.mktemp("mlp")
    source = save(mlp_model(), folder / "mlp.onnx")
    x = RNG.standard_normal((1, 8, 16)).astype(np.float32)
    reference = cpu_run(source, {"x": x})[0]
    out = {}
    for soc in ("x-elite", "8-elite"):
        graph = qnn_compile.compile_graph(source, "mlp", soc, folder / soc)
        sim = simulate.simulate(graph.context_model, soc, [(torch.from_numpy(x),)], [(torch.from_numpy(reference),)])
        out[soc] = (graph, sim)
    return source, out


def test_compile_toy_graph_for_both_socs(compiled_mlp):
    _, results = compiled_mlp
    for soc, (graph, sim) in results.items():
        assert graph.context_model.is_file() and graph.binary.is_file() and graph.binary.suffix == ".bin"
        assert graph.cpu_fallback_nodes == 0 and sim["cpu_fallback_nodes"] == 0 and graph.qnn_nodes >= 4
        ctx = onnx.load(str(graph.context_model))
        (node,) = ctx.graph.node
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert node.op_type == "EPContext" and attrs["embed_mode"] == 0  # binary beside the model, not inside
        assert attrs["ep_cache_context"].decode() == graph.binary.name
        assert sim["sqnr_db"] > 30.0  # fp16 HTP arithmetic vs fp32


def test_rejected_op_named_with_fix(tmp_path):
    """Erf has no QNN HTP implementation: the support report names the node and the fix, and the compile
    refuses CPU fallback naming the same op."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu_in"), helper.make_node("Erf", ["r"], ["e"], name="my_erf"),
             helper.make_node("Relu", ["e"], ["y"], name="relu_out")]
    graph = helper.make_graph(nodes, "erf", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [1, 4, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    path = save(model, tmp_path / "erf.onnx")
    model = onnx.shape_inference.infer_shapes(model)
    report = support.support_report(model, "erf_graph", "x-elite", tmp_path / "support")
    (bad,) = report.unsupported
    assert bad.op_type == "Erf" and bad.nodes == ["my_erf"] and "Gelu" in bad.fix
    assert "not supported by QNN EP" in bad.reason
    assert all(op.supported for op in report.ops if op.op_type == "Relu")
    with pytest.raises(CheckFailed, match=r"Erf \(.*\) at node my_erf.*fix: exact GELU"):
        support.check_supported(report)
    with pytest.raises(CheckFailed, match=r"rejected Erf at node my_erf"):
        qnn_compile.compile_graph(path, "erf_graph", "8-elite", tmp_path / "ctx")


def test_support_probe_bisects_when_the_probe_session_fails(monkeypatch, tmp_path):
    """A probe the backend cannot finalise as a whole (one bad op, or QNN_COMMON_ERROR_MEM_ALLOC on a big probe) is
    asked again in halves down to single ops, so the report still names the op at fault."""
    asked = []

    def fake_probe(model, index, reps, soc, work, tag):
        asked.append([n.op_type for n in reps])
        if len(reps) > 1 and any(n.op_type == "Erf" for n in reps):
            return None
        return ({n.name: n.op_type != "Erf" for n in reps},
                {n.name: "Failed to finalize QNN graph" for n in reps if n.op_type == "Erf"})

    monkeypatch.setattr(support, "_probe", fake_probe)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Erf", ["r"], ["e"], name="erf"),
             helper.make_node("Tanh", ["e"], ["t"], name="tanh"), helper.make_node("Sigmoid", ["t"], ["y"], name="sig")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, [1, 4, 8])])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    report = support.support_report(model, "g", "x-elite", tmp_path)
    assert asked[0] == ["Relu", "Erf", "Tanh", "Sigmoid"] and ["Tanh", "Sigmoid"] in asked and ["Erf"] in asked
    (bad,) = report.unsupported
    assert bad.op_type == "Erf" and bad.nodes == ["erf"] and "finalize" in bad.reason and "Gelu" in bad.fix

    # a single op too large for the backend's memory when probed alone: no answer (left to the compile), not a
    # rejection (the VAE decoder's fp16 [1, 32, 17, 64, 64] Reshape probes; the W8A16 graph compiles with 0 fallback)
    monkeypatch.setattr(support, "_probe", lambda model, index, reps, soc, work, tag: (
        {n.name: n.op_type != "Tanh" for n in reps},
        {n.name: "Failed to finalize QNN graph. Error: QNN_COMMON_ERROR_MEM_ALLOC" for n in reps if n.op_type == "Tanh"}))
    report = support.support_report(model, "g", "x-elite", tmp_path)
    assert [op.op_type for op in report.unverified] == ["Tanh"] and not report.unsupported


def test_weight_sharing_one_binary_for_three_shapes(tmp_path):
    """Three graphs with the same weights and different token counts (the denoiser stages) -> one binary."""
    weights = (RNG.standard_normal((64, 64)) / 8).astype(np.float32)
    models = [(f"stage{i}", save(mlp_model(tokens, 64, weights), tmp_path / f"stage{i}.onnx"), "fp16")
              for i, tokens in enumerate((4, 16, 64))]
    shared = qnn_compile.compile_group(models, "x-elite", tmp_path / "shared", weight_sharing=True)
    assert len({g.binary for g in shared}) == 1 and shared[0].binary.is_file()
    assert shared[2].shared_with == ["stage0", "stage1"]
    alone = qnn_compile.compile_graph(models[0][1], "alone", "x-elite", tmp_path / "alone")
    # three graphs with shared weights take less than three graphs with their own copy of them
    assert shared[0].binary.stat().st_size < 3 * alone.binary.stat().st_size - 2 * weights.nbytes // 2
    x = RNG.standard_normal((1, 16, 64)).astype(np.float32)
    ref = cpu_run(models[1][1], {"x": x})[0]
    sim = simulate.run_session(shared[1].session, [(torch.from_numpy(x),)], [(torch.from_numpy(ref),)])
    assert sim["sqnr_db"] > 30.0 and sim["cpu_fallback_nodes"] == 0


def test_bundle_manifest(compiled_mlp, tmp_path):
    source, results = compiled_mlp
    graph, sim = results["8-elite"]
    copied = qnn_compile.copy_compiled(graph, tmp_path / "8-elite")
    path = bundle.write_bundle("8-elite", tmp_path / "8-elite", [copied], {"mlp": source}, {"mlp": "upsampler"},
                               {"mlp": {"x": "[1, 8, 16] tokens"}},
                               {"mlp": {"cpu_fallback_nodes": 0, "sqnr_db": sim["sqnr_db"], "prepare_seconds": 0.1}})
    manifest = json.loads(path.read_text())
    assert manifest["format"] == bundle.FORMAT and manifest["soc"] == "8-elite"
    assert (manifest["soc_model"], manifest["htp_arch"], manifest["context_embed_mode"]) == (69, 79, 0)
    assert set(manifest["tools"]) >= {"onnxruntime", "onnxruntime-qnn", "qnn_sdk"}
    (entry,) = manifest["graphs"]
    assert entry["context_model"] == "mlp_ctx.onnx" and (tmp_path / "8-elite" / entry["binary"]).is_file()
    assert entry["inputs"] == [{"name": "x", "shape": [1, 8, 16], "dtype": "float", "meaning": "[1, 8, 16] tokens",
                                "encoding": None}]
    assert entry["outputs"][0]["name"] == "y" and entry["outputs"][0]["shape"] == [1, 8, 16]
    assert entry["cpu_fallback_nodes"] == 0 and entry["role"] == "upsampler"


# ---------------------------------------------------------------------------------------------------------------
# W8A16 QDQ from AIMET torch-format encodings
# ---------------------------------------------------------------------------------------------------------------


def test_qdq_from_aimet_encodings_compiles_and_keeps_sqnr(tmp_path):
    """Encodings keyed like the quantize-w8a16 record (wrapper prefix, module outputs, per-channel int8 weights)
    land on the exported graph's tensors; the W8A16 graph compiles with 0 fallback and > 30 dB in HTP sim."""
    from torch import nn

    from neoc.targets.hexagon import export, qdq
    from neoc.targets.hexagon.graphs import CapturedCall, _graph_from_calls

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 32)

        def forward(self, x):
            return self.fc2(torch.nn.functional.gelu(self.fc1(x), approximate="tanh"))

    torch.manual_seed(0)
    block = Block().eval()
    graph = _graph_from_calls("upsampler", "upsampler", block,
                              [CapturedCall("upsampler", (torch.randn(1, 16, 32),), {}) for _ in range(3)])
    export.export_graph(graph, tmp_path / "float.onnx")
    model = export.load_model(tmp_path / "float.onnx")
    legalize.legalize(model)
    export.save_model(model, tmp_path / "legal.onnx")

    scales = (block.fc1.weight.detach().abs().amax(1) / 127).tolist()
    encodings = {"param_encodings": {"component.fc1.weight": [
                     {"bitwidth": 8, "is_symmetric": "True", "scale": s, "offset": -128} for s in scales]},
                 "activation_encodings": {
                     "component.fc1": {"output": {"0": {"bitwidth": 16, "scale": 1e-4, "offset": -32768}}},
                     "component.fc2": {"output": {"0": {"bitwidth": 16, "scale": 2e-5, "offset": -32768}}}}}
    assert qdq.module_outputs(model) == {"fc1": "linear", "fc2": "output"}
    overrides, matched = qdq.tensor_overrides(model, block, encodings)
    assert matched == {"params_matched": 1, "params_total": 1, "activations_matched": 2, "activations_total": 2}
    weight_override = next(v for k, v in overrides.items() if k not in ("linear", "output"))
    assert weight_override[0]["axis"] == 1 and int(weight_override[0]["zero_point"]) == 0  # w.T, symmetric int8
    assert int(overrides["linear"][0]["zero_point"]) == 32768

    plan = qdq.QuantPlan("w8a16", 8, 16, encodings)
    qdq.write_qdq(tmp_path / "legal.onnx", tmp_path / "qdq.onnx", graph.calibration, plan, block)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "qdq.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the support report reads the quantiser's output as is (no value_info in it: shapes are inferred first)
    report = support.support_report(onnx.load(str(tmp_path / "qdq.onnx")), "block", "x-elite", tmp_path / "support")
    assert not report.unsupported and {"MatMul", "Add"} <= set(report.to_dict()["op_types"])
    compiled = qnn_compile.compile_graph(tmp_path / "qdq.onnx", "block", "x-elite", tmp_path / "ctx", "w8a16")
    references = [graph.reference(call) for call in graph.calibration]
    sim = simulate.simulate(compiled.context_model, "x-elite", graph.calibration, references, "w8a16")
    assert compiled.cpu_fallback_nodes == 0 and sim["cpu_fallback_nodes"] == 0 and sim["sqnr_db"] > 30.0


def test_w8a16_layernorm_scale_legalised(monkeypatch, tmp_path):
    """Issue 10: a quantised LayerNormalization with a scale and no bias (the MMDiT's ``elementwise_affine=False``
    norms export a constant all-ones scale; ``bias=False`` norms a learned one) gets an int8 scale by default,
    which the HTP LayerNorm refuses with 16-bit activations (the compile names it); after
    ``layernorm_scale_overrides`` (uint8 scale) both SoCs compile it with 0 fallback and > 30 dB."""
    from torch import nn

    from neoc.targets.hexagon import export, qdq
    from neoc.targets.hexagon.graphs import CapturedCall, _graph_from_calls

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 32)
            self.norm = nn.LayerNorm(32, bias=False)
            self.plain = nn.LayerNorm(32, elementwise_affine=False, eps=1e-6)

        def forward(self, x):
            return self.plain(self.norm(self.fc(x)) * 2.0)

    torch.manual_seed(0)
    block = Block().eval()
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
    graph = _graph_from_calls("upsampler", "upsampler", block,
                              [CapturedCall("upsampler", (torch.randn(1, 16, 32),), {}) for _ in range(3)])
    export.export_graph(graph, tmp_path / "float.onnx")
    model = export.load_model(tmp_path / "float.onnx")
    legalize.legalize(model)
    export.save_model(model, tmp_path / "legal.onnx")
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 2 and all(len(n.input) == 2 for n in norms)  # scale, no bias
    plan = qdq.QuantPlan("w8a16", 8, 16, None)
    references = [graph.reference(call) for call in graph.calibration]

    with monkeypatch.context() as patch:  # as before the fix: int8 scales
        patch.setattr(qdq, "layernorm_scale_overrides", lambda *a: {})
        qdq.write_qdq(tmp_path / "legal.onnx", tmp_path / "int8_scale.onnx", graph.calibration, plan, block)
    with pytest.raises(CheckFailed, match="rejected LayerNormalization"):
        qnn_compile.compile_graph(tmp_path / "int8_scale.onnx", "block", "x-elite", tmp_path / "bad", "w8a16")

    info = qdq.write_qdq(tmp_path / "legal.onnx", tmp_path / "qdq.onnx", graph.calibration, plan, block)
    assert info["layernorm_scales"] == 2
    report = support.support_report(onnx.load(str(tmp_path / "qdq.onnx")), "block", "x-elite", tmp_path / "support")
    assert not report.unsupported
    for soc in ("x-elite", "8-elite"):
        compiled = qnn_compile.compile_graph(tmp_path / "qdq.onnx", "block", soc, tmp_path / soc, "w8a16")
        sim = simulate.simulate(compiled.context_model, soc, graph.calibration, references, "w8a16")
        assert compiled.cpu_fallback_nodes == 0 and sim["cpu_fallback_nodes"] == 0 and sim["sqnr_db"] > 30.0


def test_quant_plan_reads_the_pass_record(tmp_path):
    from neoc.targets.hexagon import qdq

    class Pipe:
        info = {"quantization": {"format": "neoc-quant/1", "components": {
            "text_encoder": {"scheme": "FP16"},
            "denoiser": {"scheme": "W8A16", "param_bw": 8, "output_bw": 16, "graphs": {
                "denoiser/stage2": {"encodings_file": "enc/stage2.json"}}}}}}

    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "stage2.json").write_text(json.dumps({"param_encodings": {}, "activation_encodings": {}}))
    plan = qdq.quant_plan(Pipe(), "denoiser", "denoiser_stage2", tmp_path)
    assert plan.quantized and plan.encodings == {"param_encodings": {}, "activation_encodings": {}}
    assert not qdq.quant_plan(Pipe(), "text_encoder", "text_encoder", tmp_path).quantized
    assert "no encodings" in qdq.quant_plan(Pipe(), "denoiser", "denoiser_stage0", tmp_path).note
    assert "no quantize-w8a16 record" in qdq.quant_plan(object(), "vae_decoder", "vae_decoder").note


# ---------------------------------------------------------------------------------------------------------------
# AI Hub: recorded fake client; no token -> skipped with a note
# ---------------------------------------------------------------------------------------------------------------


class FakeJob:
    def __init__(self, job_id, target=None, profile=None):
        self.job_id, self._target, self._profile = job_id, target, profile

    def get_target_model(self):
        return self._target

    def wait(self, timeout=None):
        return True

    def download_profile(self):
        return self._profile


class FakeHub:
    """Records calls; answers like qai_hub (a profile's estimated_inference_time is in microseconds)."""

    def __init__(self):
        self.calls = []

    def Device(self, name):  # noqa: N802  (qai_hub's spelling)
        return ("device", name)

    def submit_compile_job(self, model, device, name, options):
        self.calls.append(("compile", Path(model).name, device[1], options))
        return FakeJob(f"c{len(self.calls)}", target=f"target-of-{name}")

    def submit_profile_job(self, model, device, name):
        self.calls.append(("profile", model, device[1]))
        micros = 12500 if "X Elite" in device[1] else 9000
        return FakeJob(f"p{len(self.calls)}", profile={"execution_summary": {"estimated_inference_time": micros}})


def test_qai_hub_jobs_with_fake_client(tmp_path):
    fake = FakeHub()
    results, note = qai_hub.hub_step([("denoiser_stage2", tmp_path / "d2.onnx")], ["x-elite", "8-elite"], True,
                                     client=fake)
    assert [r.latency_ms for r in results] == [12.5, 9.0] and all(r.status == "done" for r in results)
    assert fake.calls[0] == ("compile", "d2.onnx", "Snapdragon X Elite CRD", "--target_runtime qnn_context_binary")
    assert fake.calls[3] == ("profile", "target-of-neoc-denoiser_stage2", "Samsung Galaxy S25 (Family)")
    assert "2/2" in note


def test_qai_hub_skipped_without_token(tmp_path):
    results, note = qai_hub.hub_step([("g", tmp_path / "g.onnx")], ["x-elite"], True,
                                     environ={"QAIHUB_CLIENT_INI": str(tmp_path / "missing.ini")})
    assert results == [] and "skipped, no AI Hub token" in note


# ---------------------------------------------------------------------------------------------------------------
# the target end to end on the toy pipeline (two small graphs, one SoC)
# ---------------------------------------------------------------------------------------------------------------


def test_target_build_on_toy_pipeline(tmp_path):
    from neoc.pass_api import PassContext
    from neoc.targets.hexagon.target import HexagonConfig, HexagonTarget
    from neoc.testing import toy_pipeline

    config = HexagonConfig(socs=("8-elite",), graphs=("text_encoder", "vae_decoder"), calibration_prompts=1,
                           qai_hub=False)  # never submit real jobs from a test
    result = HexagonTarget(config).build(toy_pipeline(frames=1), PassContext(seed=0, work_dir=tmp_path / "target"))
    assert [(g["name"], g["soc"]) for g in result.graphs] == [("text_encoder", "8-elite"),
                                                              ("vae_decoder", "8-elite")]
    for entry in result.graphs:
        assert {"name", "soc", "path", "cpu_fallback_nodes", "sqnr_db", "prepare_seconds"} <= set(entry)
        assert entry["cpu_fallback_nodes"] == 0 and entry["sqnr_db"] >= 15.0 and entry["prepare_seconds"] > 0
        assert (tmp_path / entry["path"]).is_file() and entry["simulated_from"] == "context binary"
    manifest = json.loads((tmp_path / "target" / "8-elite" / "manifest.json").read_text())
    assert [g["name"] for g in manifest["graphs"]] == ["text_encoder", "vae_decoder"]
    token_ids = manifest["graphs"][0]["inputs"][0]
    assert token_ids["name"] == "input_ids" and token_ids["shape"] == [2, 8]
    assert token_ids["dtype"] == "int32"  # int64 ids narrowed by legalisation
    assert any("no quantize-w8a16 record: compiled in FP16" in note for note in result.notes)
    assert "qai-hub: disabled in the target config (qai_hub: false)" in result.notes


def test_split_model_parts_chain_to_the_whole(tmp_path):
    """The simulator-crash fallback runs a graph in consecutive parts; chained on CPU they equal the whole."""
    from neoc.targets.hexagon.worker import split_model

    model = onnx.shape_inference.infer_shapes(mlp_model())
    x = RNG.standard_normal((1, 8, 16)).astype(np.float32)
    expected = cpu_run(save(model, tmp_path / "whole.onnx"), {"x": x})[0]
    values = {"x": x}
    parts = split_model(model, 3)
    assert len(parts) == 3 and sum(len(p.graph.node) for p in parts) == 4
    for number, part in enumerate(parts):
        path = save(part, tmp_path / f"part{number}.onnx")
        outputs = cpu_run(path, {i.name: values[i.name] for i in part.graph.input})
        values.update(zip([o.name for o in part.graph.output], outputs))
    assert [o.name for o in parts[-1].graph.output] == ["y"] and np.array_equal(values["y"], expected)
