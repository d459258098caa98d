"""The joint (non-autoregressive) schedule and the Wan/LTX-style bidirectional DiT of builtin:bidit-tiny."""

import torch

from neoc.ir.runfolder import load_pipeline, pipeline_hash, save_pipeline
from neoc.ir.schedule import Schedule
from neoc.models.bidirectional_dit import BidirectionalVideoDiT
from neoc.testing import toy_pipeline


def test_joint_schedule_counts_one_unit():
    s = Schedule(num_stages=1, first_frame_steps=(5,), video_steps=(3,), guidance_scale=4.0,
                 video_guidance_scale=2.0, temporal="joint")
    assert s.units(7) == 1 and s.nfe(7) == 3 * 2


def test_dit_is_bidirectional_and_keeps_shape():
    torch.manual_seed(0)
    dit = BidirectionalVideoDiT(dim=32, heads=2, num_layers=1, context_dim=16).eval()
    x = torch.randn(2, 16, 3, 4, 4)
    ctx, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.long)
    t = torch.tensor([500.0, 500.0])
    out = dit(sample=[[x]], encoder_hidden_states=ctx, encoder_attention_mask=mask, timestep_ratio=t)[0]
    assert out.shape == x.shape
    x2 = x.clone()
    x2[:, :, -1] += 1.0  # a change in the last frame reaches the first: no causal mask
    out2 = dit(sample=[[x2]], encoder_hidden_states=ctx, encoder_attention_mask=mask, timestep_ratio=t)[0]
    assert (out2[:, :, 0] - out[:, :, 0]).abs().max() > 1e-6


def test_joint_pipeline_graph_and_runfolder_roundtrip(tmp_path):
    pipe = toy_pipeline()
    joint = Schedule(num_stages=1, first_frame_steps=(2,), video_steps=(2,), guidance_scale=3.0,
                     video_guidance_scale=3.0, temporal="joint")
    dit = BidirectionalVideoDiT(dim=16, heads=2, num_layers=1, context_dim=8)
    pipe.replace_component("denoiser", dit)
    pipe.with_schedule(joint)
    assert pipe.nfe() == 4 and len(pipe.denoiser_nodes()) == 2
    (sig,) = {n.meta["signature"] for n in pipe.denoiser_nodes()}
    assert sig == ((), (pipe.spec.latent_frames, 8, 8), 2)
    video = pipe.generate("a red ball", seed=0)
    assert video.shape == (1, 3, pipe.spec.frames, 64, 64)
    save_pipeline(pipe, tmp_path / "p")
    loaded = load_pipeline(tmp_path / "p")
    assert loaded.schedule.temporal == "joint"
    assert torch.equal(loaded.generate("a red ball", seed=0), video)


def test_default_schedule_keeps_its_content_hash_form():
    # temporal: autoregressive is left out of manifests, so existing run folders keep their hashes and caches
    from neoc.ir.runfolder import pipeline_manifest

    assert "temporal" not in pipeline_manifest(toy_pipeline())["schedule"]
    assert isinstance(pipeline_hash(toy_pipeline()), str)
