"""precompute-inputs: DiT inputs computed outside the DiT, same video, shared nodes, run-folder round trip."""

import pytest
import torch

import neoc.passes  # noqa: F401
from neoc.deploy import precompute as pre
from neoc.deploy.denoiser import DeployDenoiser
from neoc.deploy.probe import denoiser_probe_calls
from neoc.deploy.testing import CFG_SCHEDULE, apply_pass, run_through_manager, short_tiny_pipeline
from neoc.errors import CheckFailed
from neoc.ir.runfolder import load_pipeline

PROMPT = "a green triangle moves up"


@pytest.fixture(scope="module")
def base():
    return short_tiny_pipeline(frames=9)  # 2 latent frames, 1-1-1 steps, no CFG


def test_call_layout_and_mask_by_hand():
    # history clip of 2 frames at 4x4 latents + current frame at 4x4, patch 2 -> 4 tokens per frame
    layout = pre.call_layout([(2, 4, 4), (1, 4, 4)], patch_size=2)
    assert layout == pre.CallLayout((0.0, 1.0, 2.0), (1.0, 1.0, 1.0), (4, 4, 4))
    # one text token (valid) and frames of one token each; frame 0 padding, frame 1 real (time 0), current (time 1)
    tiny = pre.call_layout([(2, 2, 2), (1, 2, 2)], 2, frame_time=(0.0, 0.0, 1.0), frame_valid=(0.0, 1.0, 1.0))
    mask = pre.joint_attention_mask(torch.ones(1, 1), tiny, causal=True, fill_value=None)[0, 0]
    expected = torch.tensor([  # rows: queries [text, pad, real0, current]; True = attend
        [1, 0, 1, 0],  # valid text: valid text and the time-0 frame
        [0, 1, 0, 0],  # padding sees padding only (time 0 >= 0)
        [1, 0, 1, 0],  # real frame at time 0: text and itself
        [1, 0, 1, 1],  # current frame: everything valid with time <= 1
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)
    additive = pre.joint_attention_mask(torch.ones(1, 1), tiny, causal=True, fill_value=-1e4)[0, 0]
    assert torch.equal(additive, torch.where(expected, 0.0, -1e4))


def test_precomputed_call_matches_standard_call(base):
    pipe = base.clone()
    denoiser = DeployDenoiser(pipe.component("denoiser")).eval()
    denoiser.reduce_rope_rank()
    denoiser.set_mask_fill_value(-1e4)
    with torch.no_grad():
        for call in denoiser_probe_calls(pipe, denoiser.mmdit, seed=0):
            standard = denoiser(**call)[0]
            precomputed = denoiser(**pre.precompute_call(denoiser, call))[0]
            assert torch.equal(standard, precomputed)


def test_pass_through_manager_same_video_and_run_folder(base, tmp_path):
    out, record, folder = run_through_manager(base.clone(), "precompute-inputs", tmp_path, check_frames=9)
    assert record.status == "done" and record.metrics["max_abs_diff"] <= 1e-4
    counts = record.metrics["precomputed"]
    # 2 latent frames x 3 stages = 6 DiT calls; 1 step per stage and the same timesteps for every latent frame:
    # one timestep embedding per stage, shared by the 2 latent frames
    assert counts["denoiser_calls"] == 6 and counts["timestep_embeddings"] == 3
    assert all(n.kwargs["temb"] is not None and n.kwargs["timestep_ratio"] is None for n in out.denoiser_nodes())

    inputs = base.prepare_inputs(PROMPT, seed=0)
    reference = base.run_graph(inputs)
    assert (out.run_graph(inputs) - reference).abs().max() <= 1e-4
    loaded = load_pipeline(folder)
    assert loaded.component("denoiser").precomputed
    assert (loaded.run_graph(inputs) - reference).abs().max() <= 1e-4


def test_after_static_shape_with_cfg(tmp_path):
    pipe = short_tiny_pipeline(frames=9, schedule=CFG_SCHEDULE)  # 2 latent frames: padded history at unit 0
    reference = pipe.clone()
    apply_pass(pipe, "static-shape", tmp_path)
    result = apply_pass(pipe, "precompute-inputs", tmp_path, check_frames=9)
    assert result.metrics["max_abs_diff"] <= 1e-4
    assert all(len(s) == 1 for s in pipe.stage_signatures().values())  # still one graph per stage
    inputs = reference.prepare_inputs(PROMPT, seed=1)
    assert (pipe.run_graph(inputs) - reference.run_graph(inputs)).abs().max() <= 1e-4


def test_second_application_refused(base, tmp_path):
    pipe = base.clone()
    apply_pass(pipe, "precompute-inputs", tmp_path, check_frames=9)
    with pytest.raises(CheckFailed, match="already takes precomputed"):
        apply_pass(pipe, "precompute-inputs", tmp_path)
