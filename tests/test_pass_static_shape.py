"""static-shape: one denoiser signature per stage, padding contributes nothing, same video, run-folder round trip."""

import pytest
import torch

import neoc.passes  # noqa: F401
from neoc.deploy.denoiser import DeployDenoiser, padded_frame_values, stage_layout
from neoc.deploy.testing import CFG_SCHEDULE, apply_pass, run_through_manager, short_tiny_pipeline
from neoc.errors import CheckFailed
from neoc.ir.runfolder import load_pipeline
from neoc.passes.static_shape import call_pairs, static_layouts


@pytest.fixture(scope="module")
def base():
    return short_tiny_pipeline()  # 17 frames = 3 latent frames, 1-1-1 steps, no CFG


def test_layout_and_frame_values_by_hand(base):
    # top stage (2) of 3 latent frames: the last frame's history is frame 0 at half res, frame 1 at full res
    assert stage_layout(base.spec, 2, 3) == [(1, 1, 4, 4), (0, 1, 8, 8)]  # 64x64 frames -> 8x8 latents
    layout = stage_layout(base.spec, 2, 3)
    # latent frame 1: its one history frame is 1 back -> full res; the half-res slot is padding
    assert padded_frame_values(layout, 1, 2, 3)[1:] == ((0.0, 1.0, 1.0), (0.0, 0.0, 1.0))
    # latent frame 0: no history at all
    assert padded_frame_values(layout, 0, 2, 3)[1:] == ((0.0, 0.0, 1.0), (0.0, 0.0, 0.0))
    assert padded_frame_values(layout, 2, 2, 3)[1:] == ((1.0, 1.0, 1.0), (0.0, 1.0, 2.0))


def test_padding_content_is_ignored(base):
    pipe = base.clone()
    denoiser = DeployDenoiser(pipe.component("denoiser")).eval()
    (reference, padded), = [p for p in call_pairs(pipe, denoiser.mmdit, static_layouts(pipe), 0)
                            if p[1]["frame_valid"].min() == 0][:1]
    garbage = dict(padded)
    valid = padded["frame_valid"]
    clips = [c.clone() for c in padded["sample"][0]]
    start = 0
    for clip in clips[:-1]:  # overwrite every padded frame with large noise
        for t in range(clip.shape[2]):
            if valid[start + t] == 0:
                clip[:, :, t] = 100 * torch.randn_like(clip[:, :, t])
        start += clip.shape[2]
    garbage["sample"] = [clips]
    with torch.no_grad():
        a = denoiser(**reference)[0]
        b = denoiser(**garbage)[0]
    assert (a - b).abs().max() <= 1e-4


def test_pass_through_manager_same_video_and_run_folder(base, tmp_path):
    assert all(len(s) > 1 for s in base.stage_signatures().values())
    out, record, folder = run_through_manager(base.clone(), "static-shape", tmp_path)
    assert record.status == "done" and record.metrics["max_abs_diff"] <= 1e-4
    assert all(len(s) == 1 for s in out.stage_signatures().values())
    assert len({n.meta["signature"] for n in out.denoiser_nodes()}) == 3

    inputs = base.prepare_inputs("a red ball rolls to the left", seed=0)
    reference = base.run_graph(inputs)
    assert (out.run_graph(inputs) - reference).abs().max() <= 1e-4
    loaded = load_pipeline(folder)
    assert all(len(s) == 1 for s in loaded.stage_signatures().values())
    assert (loaded.run_graph(inputs) - reference).abs().max() <= 1e-4


def test_cfg_schedule(base, tmp_path):
    pipe, reference = base.clone(), base.clone()
    pipe.with_schedule(CFG_SCHEDULE)
    reference.with_schedule(CFG_SCHEDULE)
    result = apply_pass(pipe, "static-shape", tmp_path)
    assert result.metrics["max_abs_diff"] <= 1e-4
    assert all(len(s) == 1 for s in pipe.stage_signatures().values())
    inputs = reference.prepare_inputs("a blue square", seed=1)
    assert (pipe.run_graph(inputs) - reference.run_graph(inputs)).abs().max() <= 1e-4


def test_second_application_refused(base, tmp_path):
    pipe = base.clone()
    apply_pass(pipe, "static-shape", tmp_path)
    with pytest.raises(CheckFailed, match="already runs static"):
        apply_pass(pipe, "static-shape", tmp_path)
