"""mask-value: finite additive masks in the denoiser and T5, same outputs, refusal, run-folder round trip."""

import pytest

import neoc.passes  # noqa: F401
from neoc.deploy.denoiser import DeployDenoiser
from neoc.deploy.probe import denoiser_probe_calls, run_calls
from neoc.deploy.testing import apply_pass, run_through_manager, short_tiny_pipeline
from neoc.deploy.text_encoder import FiniteMaskTextEncoder
from neoc.errors import CheckFailed
from neoc.ir.runfolder import load_pipeline
from neoc.passes.mask_value import encode, text_probe


@pytest.fixture(scope="module")
def base():
    return short_tiny_pipeline()


def test_pass_through_manager_and_run_folder(base, tmp_path):
    out, record, folder = run_through_manager(base.clone(), "mask-value", tmp_path, value=-1.0e4)
    m = record.metrics
    assert record.status == "done" and m["max_abs_diff"] <= 1e-4
    assert m["max_abs_diff_denoiser"] <= 1e-4 and m["max_abs_diff_text_encoder"] <= 1e-4
    assert out.component("denoiser").mask_fill_value == -1.0e4
    assert isinstance(out.component("text_encoder"), FiniteMaskTextEncoder)

    loaded = load_pipeline(folder)
    assert isinstance(loaded.component("denoiser"), DeployDenoiser)
    assert loaded.component("denoiser").mask_fill_value == -1.0e4
    assert loaded.component("text_encoder").mask_value == -1.0e4
    ids, mask = text_probe(base.component("text_encoder"), base.spec.t5_max_length, seed=3)
    ref = encode(base.component("text_encoder"), ids, mask)
    assert (ref - encode(loaded.component("text_encoder"), ids, mask)).abs().max() <= 1e-4
    calls = denoiser_probe_calls(base, base.component("denoiser"), seed=3)
    for a, b in zip(run_calls(base.component("denoiser"), calls), run_calls(loaded.component("denoiser"), calls)):
        assert (a - b).abs().max() <= 1e-4


def test_second_application_refused(base, tmp_path):
    pipe = base.clone()
    apply_pass(pipe, "mask-value", tmp_path)
    with pytest.raises(CheckFailed, match="already in place"):
        apply_pass(pipe, "mask-value", tmp_path)


def test_refuses_without_t5(tmp_path):
    from neoc.testing import toy_pipeline

    with pytest.raises(CheckFailed, match="not a Pyramid MMDiT|not T5-class"):
        apply_pass(toy_pipeline(), "mask-value", tmp_path)
