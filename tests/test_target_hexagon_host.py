"""The host runtime: the hexagon target's legalised graphs run by ONNX Runtime inside the pipeline's own graph.

The toy pipeline's text encoder and VAE decoder are exported and legalised exactly as the target does (no QNN
compile needed); the host pipeline must then generate the same video as torch, call each graph once per video,
fall back to torch (counted) for a call whose shapes no graph has, and refuse a target folder without graphs.
"""

from __future__ import annotations

import pytest
import torch

from neoc.errors import InputError
from neoc.testing import toy_pipeline


@pytest.fixture(scope="module")
def lowered(tmp_path_factory):
    from neoc.targets.hexagon.graphs import deploy_graphs
    from neoc.targets.hexagon.target import HexagonConfig, prepare_graph

    work = tmp_path_factory.mktemp("run") / "target"
    pipeline = toy_pipeline(frames=1)
    graphs = deploy_graphs(pipeline, ["a red ball"], seed=0, roles=("text_encoder", "vae_decoder"),
                           max_calls_per_graph=1)
    notes: list[str] = []
    for graph in graphs:
        prepare_graph(graph, pipeline, work, HexagonConfig(), work.parent, notes)
    return pipeline, work, [{"name": g.name, "role": g.role} for g in graphs]


def test_host_pipeline_generates_the_torch_video(lowered):
    from neoc.targets.hexagon.host import host_pipeline

    pipeline, work, entries = lowered
    host = host_pipeline(pipeline, work, entries, threads=1)
    expected = pipeline.generate("a blue square", seed=3)
    got = host.generate("a blue square", seed=3)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4)
    summary = host.summary()
    assert summary["graphs"] == {"text_encoder": ["text_encoder"], "vae_decoder": ["vae_decoder"]}
    assert summary["graph_calls"] == 2 and summary["torch_fallback_calls"] == 0
    assert set(summary["parity_max_abs"]) == {"text_encoder", "vae_decoder"}
    assert max(summary["parity_max_abs"].values()) < 1e-4
    assert summary["threads"] == {"text_encoder": 1, "vae_decoder": 1}
    assert host.nfe() == pipeline.nfe()
    assert "target/legal/*.onnx" in host.form and "ONNX Runtime" in host.form
    host.generate("a green circle", seed=4)
    assert host.summary()["graph_calls"] == 4


def test_unknown_signature_falls_back_to_torch_and_is_counted(lowered):
    from neoc.targets.hexagon.host import host_pipeline

    pipeline, work, entries = lowered
    host = host_pipeline(pipeline, work, entries, threads="auto")
    decoder = host.hosts["vae_decoder"]
    latents = torch.randn(1, 16, 2, 8, 8)  # two latent frames: the lowered decoder takes one
    with torch.no_grad():
        assert torch.equal(decoder(latents), pipeline.component("vae_decoder")(latents))
    assert decoder.fallback_calls == 1 and decoder.graph_calls == 0


def test_bad_target_folders_are_refused(lowered, tmp_path):
    from neoc.targets.hexagon.host import host_pipeline

    pipeline, work, entries = lowered
    with pytest.raises(InputError, match="no graphs.json"):
        host_pipeline(pipeline, tmp_path)
    with pytest.raises(InputError, match="missing; rebuild the target"):
        host_pipeline(pipeline, work, [{"name": "denoiser_stage0", "role": "denoiser"}])
    with pytest.raises(InputError, match="threads must be"):
        host_pipeline(pipeline, work, entries, threads=0)
