"""onnx target: the toy pipeline's graphs exported with static shapes, matching torch on onnxruntime CPU, with a
manifest; graph capture finds every component call and one denoiser graph per stage."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from neoc.pass_api import PassContext
from neoc.targets.hexagon.graphs import deploy_graphs
from neoc.targets.onnx.target import OnnxConfig, OnnxTarget
from neoc.testing import toy_pipeline

CONTRACT_KEYS = {"name", "soc", "path", "cpu_fallback_nodes", "sqnr_db", "prepare_seconds"}


@pytest.fixture(scope="module")
def pipe():
    return toy_pipeline(frames=1)  # one latent frame: one denoiser call shape per stage


def test_graph_capture(pipe):
    graphs = deploy_graphs(pipe, ["a red ball", "a blue square"], seed=0, max_calls_per_graph=4)
    names = [g.name for g in graphs]
    assert names == ["text_encoder", "context_embedder", "denoiser_stage0", "denoiser_stage1", "denoiser_stage2",
                     "vae_decoder"]
    stage2 = graphs[4]
    assert stage2.input_names[0] == "latent" and stage2.output_names == ["velocity"]
    assert stage2.share_group == "denoiser"
    # toy schedule: first frame [2, 2, 2] steps with CFG (batch 2), two prompts -> 4 calls at stage 2
    assert len(stage2.calibration) == 4 and stage2.calibration[0][0].shape == (2, 16, 1, 8, 8)
    text = graphs[0]
    assert text.input_names == ["input_ids", "attention_mask"]  # positional inputs named by forward's signature
    assert [t.dtype for t in text.example] == [torch.long] * 2
    # the captured inputs reproduce the pipeline's own call: reference output has the latent's shape
    (velocity,) = stage2.reference(stage2.example)
    assert velocity.shape == stage2.example[0].shape


def test_onnx_target_exports_and_checks(pipe, tmp_path):
    config = OnnxConfig(graphs=("context_embedder", "vae_decoder"))
    result = OnnxTarget(config).build(pipe, PassContext(seed=0, work_dir=tmp_path / "target", quiet=True))
    assert [g["name"] for g in result.graphs] == ["context_embedder", "vae_decoder"]
    for entry in result.graphs:
        assert CONTRACT_KEYS <= set(entry)
        assert entry["cpu_fallback_nodes"] == 0 and entry["sqnr_db"] > 60.0
        model = onnx.load(str(tmp_path / entry["path"]))
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert all(d > 0 for d in dims)  # static shapes
    manifest = json.loads((tmp_path / "target" / "onnx" / "manifest.json").read_text())
    decoder = manifest["graphs"][1]
    assert decoder["model"] == "vae_decoder.onnx"
    assert decoder["inputs"][0]["shape"] == [1, 16, 1, 8, 8] and decoder["inputs"][0]["dtype"] == "float"
    assert decoder["outputs"][0]["shape"] == [1, 3, 1, 64, 64]


def test_onnx_target_graphs_run_as_the_pipeline(pipe, tmp_path):
    """host_pipeline: the exported graphs generate the torch pipeline's video (the run times this form)."""
    config = OnnxConfig()  # every graph, denoiser stages included
    ctx = PassContext(seed=0, work_dir=tmp_path / "target", quiet=True)
    target = OnnxTarget(config)
    host = target.host_pipeline(pipe, target.build(pipe, ctx), ctx)
    video = host.generate("a red ball", seed=1)
    assert torch.allclose(video, pipe.generate("a red ball", seed=1), atol=1e-4)
    summary = host.summary()
    assert summary["torch_fallback_calls"] == 0 and summary["graph_calls"] > 0
    assert sorted(summary["graphs"]) == ["context_embedder", "denoiser", "text_encoder", "vae_decoder"]
