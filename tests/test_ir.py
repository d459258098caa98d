"""The pipeline IR on a toy graph: emission, NFE from the graph, re-emission, replacement, views, run folders."""

import torch
from torch import nn

from neoc.ir import Schedule
from neoc.ir.pipeline import history_clips
from neoc.ir.runfolder import load_pipeline, pipeline_hash, save_pipeline
from neoc.ir.schedule import PipelineSpec
from neoc.testing import toy_pipeline


def test_nfe_counted_from_graph_and_reemitted():
    pipe = toy_pipeline(frames=17)  # 3 latent frames; first (2,2,2) with CFG, video (1,1,1) with CFG
    assert pipe.nfe() == 2 * 6 + 2 * 2 * 3
    assert pipe.nfe() == pipe.schedule.nfe(pipe.spec.latent_frames)
    native = Schedule()  # [20,20,20] / [10,10,10], CFG 7 / 5 -> 480 for 7 latent frames
    assert native.nfe(7) == 480
    pipe.with_schedule(Schedule(first_frame_steps=(1, 1, 1), video_steps=(1, 1, 1), guidance_scale=1.0,
                                video_guidance_scale=1.0, label="1-1-1"))
    assert pipe.nfe() == 3 * 3  # one batch-1 evaluation per stage per latent frame
    assert len(pipe.denoiser_nodes()) == 9


def test_history_clips_follow_the_temporal_pyramid():
    # level 0 = full, 1 = half, 2 = quarter; stage 2 is the top stage
    assert history_clips(0, 2, 3) == []
    assert history_clips(1, 2, 3) == [(0, 0, 1)]
    assert history_clips(3, 2, 3) == [(2, 0, 1), (1, 1, 2), (0, 2, 3)]
    assert history_clips(6, 2, 3) == [(2, 0, 4), (1, 4, 5), (0, 5, 6)]
    assert history_clips(6, 1, 3) == [(2, 0, 5), (1, 5, 6)]
    assert history_clips(6, 0, 3) == [(2, 0, 6)]


def test_image_token_counts_match_the_reference_table():
    # 384p table (facts §4.4): unit 6 has 420 / 780 / 2400 image tokens at stages 0 / 1 / 2
    spec = PipelineSpec("sd3", frames=49, height=384, width=640)
    from neoc.ir.pipeline import Pipeline

    class D(nn.Module):
        inner_dim = 8

        def forward(self, sample, **kw):
            return [sample[0][-1]]

    pipe = Pipeline(spec, Schedule(), {"text_encoder": nn.Identity(), "denoiser": D(), "vae_decoder": nn.Identity()})
    tokens = {(n.meta["unit"], n.meta["stage"]): n.meta["image_tokens"] for n in pipe.denoiser_nodes()}
    assert [tokens[(6, s)] for s in range(3)] == [420, 780, 2400]
    assert [tokens[(1, s)] for s in range(3)] == [120, 480, 1920]
    assert [tokens[(2, s)] for s in range(3)] == [180, 540, 2160]
    assert tokens[(0, 2)] == 960


def test_graph_runs_and_is_deterministic():
    pipe = toy_pipeline(frames=17)
    a = pipe.generate("a red circle moves left", seed=3)
    b = pipe.generate("a red circle moves left", seed=3)
    c = pipe.generate("a red circle moves left", seed=4)
    assert a.shape == (1, 3, 17, 64, 64)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_replace_component_reemits_graph():
    pipe = toy_pipeline()
    before = pipe.generate("x", seed=0)
    pipe.replace_component("context_embedder", None)
    pipe.replace_component("context_adapter", _Adapter())
    targets = [n.target for n in pipe.graph_module.graph.nodes if n.op == "call_module"]
    assert "context_embedder" not in targets and "context_adapter" in targets
    assert not torch.equal(before, pipe.generate("x", seed=0))


class _Adapter(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 8)

    def forward(self, hidden, mask):
        return self.proj(hidden)


def test_rewrite_component_fx_graph():
    pipe = toy_pipeline()

    def double_output(gm):
        out = [n for n in gm.graph.nodes if n.op == "output"][0]
        with gm.graph.inserting_before(out):
            doubled = gm.graph.call_function(torch.mul, (out.args[0], 2.0))
        out.args = (doubled,)
        gm.recompile()
        return gm

    x = torch.randn(1, 16, 1, 2, 2)
    ref = pipe.component("vae_decoder")(x)
    pipe.rewrite_component("vae_decoder", double_output)
    assert torch.allclose(pipe.component("vae_decoder")(x), 2 * ref)


def test_networkx_view_and_describe():
    pipe = toy_pipeline()
    g = pipe.to_networkx()
    import networkx as nx

    assert nx.is_directed_acyclic_graph(g)
    denoisers = [n for n, d in g.nodes(data=True) if d.get("role") == "denoiser"]
    assert len(denoisers) == len(pipe.denoiser_nodes())
    text = pipe.describe()
    assert "denoiser" in text and f"NFE {pipe.nfe()}" in text


def test_stage_signatures_group_denoiser_calls():
    pipe = toy_pipeline(frames=25)  # 4 latent frames
    sigs = pipe.stage_signatures()
    assert sorted(sigs) == [0, 1, 2]
    assert all(len(v) == 4 for v in sigs.values())  # one history length per latent frame


def test_run_folder_roundtrip(tmp_path):
    pipe = toy_pipeline()
    save_pipeline(pipe, tmp_path / "pipeline")
    assert (tmp_path / "pipeline" / "manifest.json").is_file()
    assert not list(tmp_path.glob("*.tmp"))
    loaded = load_pipeline(tmp_path / "pipeline")
    assert pipeline_hash(loaded) == pipeline_hash(pipe)
    assert torch.equal(loaded.generate("a cat", seed=1), pipe.generate("a cat", seed=1))


def test_run_folder_detects_corruption(tmp_path):
    import pytest
    from safetensors.torch import load_file, save_file

    from neoc.errors import InputError

    pipe = toy_pipeline()
    folder = save_pipeline(pipe, tmp_path / "pipeline")
    weights = folder / "denoiser.safetensors"
    state = load_file(str(weights))
    key = sorted(state)[0]
    state[key] = state[key] + 1
    save_file(state, str(weights))
    with pytest.raises(InputError, match="content hash"):
        load_pipeline(folder)
