"""rope-rank-reduction: the 4D RoPE equals the 6D one, ranks 6 -> 4 measured, refusal, run-folder round trip."""

import math

import pytest
import torch

import neoc.passes  # noqa: F401  (registers the passes)
from neoc.deploy.denoiser import DeployDenoiser
from neoc.deploy.probe import denoiser_probe_calls, run_calls
from neoc.deploy.rope import ApplyRoPE4D, TemporalRoPE4D
from neoc.deploy.testing import apply_pass, run_through_manager, short_tiny_pipeline
from neoc.errors import CheckFailed
from neoc.ir.runfolder import load_pipeline
from neoc.models.mmdit import ApplyRoPE6D, TemporalRoPE


@pytest.fixture(scope="module")
def base():
    return short_tiny_pipeline()


def test_rotation_by_hand():
    # head_dim 2, time 1: angle 1 rad; (1, 0) -> (cos 1, sin 1), (0, 1) -> (-sin 1, cos 1)
    table = TemporalRoPE4D(2)(torch.tensor([[1.0]]))  # [1, 1, 2, 2]
    x = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # [B=1, L=1, H=2, Dh=2]
    out = ApplyRoPE4D.rotate(x, table)
    c, s = math.cos(1.0), math.sin(1.0)
    assert torch.allclose(out, torch.tensor([[[[c, s], [-s, c]]]]), atol=1e-7)


def test_4d_matches_6d_exactly():
    gen = torch.Generator().manual_seed(0)
    time_ids = torch.randint(0, 7, (2, 5), generator=gen).float()
    q = torch.randn(2, 5, 3, 8, generator=gen)
    k = torch.randn(2, 5, 3, 8, generator=gen)
    ref = ApplyRoPE6D()(q, k, TemporalRoPE(8)(time_ids))
    new = ApplyRoPE4D()(q, k, TemporalRoPE4D(8)(time_ids))
    assert torch.equal(ref[0], new[0]) and torch.equal(ref[1], new[1])


def test_pass_through_manager_and_run_folder(base, tmp_path):
    pipe = base.clone()
    out, record, folder = run_through_manager(pipe, "rope-rank-reduction", tmp_path)
    m = record.metrics
    assert record.status == "done"
    assert m["max_abs_diff"] <= 1e-4
    assert m["max_rank_before"] == 6 and m["max_rank_after"] <= 4
    denoiser = out.component("denoiser")
    assert isinstance(denoiser, DeployDenoiser) and denoiser.rope_form == "4d"

    loaded = load_pipeline(folder)
    assert loaded.component("denoiser").rope_form == "4d"
    calls = denoiser_probe_calls(base, base.component("denoiser"), seed=1)
    reference = run_calls(base.component("denoiser"), calls)
    for a, b in zip(reference, run_calls(loaded.component("denoiser").eval(), calls)):
        assert (a - b).abs().max() <= 1e-4


def test_second_application_refused(base, tmp_path):
    pipe = base.clone()
    apply_pass(pipe, "rope-rank-reduction", tmp_path)
    with pytest.raises(CheckFailed, match="already reduced"):
        apply_pass(pipe, "rope-rank-reduction", tmp_path)


def test_refuses_a_non_mmdit_denoiser(tmp_path):
    from neoc.testing import toy_pipeline

    with pytest.raises(CheckFailed, match="not a Pyramid MMDiT"):
        apply_pass(toy_pipeline(), "rope-rank-reduction", tmp_path)
