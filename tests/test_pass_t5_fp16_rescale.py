"""t5-fp16-rescale: an overflowing T5 is brought under FP16 range with unchanged outputs; no-op when it fits."""

import pytest
import torch

import neoc.passes  # noqa: F401
from neoc.deploy.testing import apply_pass, run_through_manager, short_tiny_pipeline
from neoc.deploy.text_encoder import t5_of
from neoc.errors import CheckFailed
from neoc.ir.runfolder import load_pipeline
from neoc.passes.t5_fp16_rescale import power_of_two_scale


@pytest.fixture(scope="module")
def base():
    return short_tiny_pipeline()


def overflowing(base):
    """The tiny T5 with its embedding scaled up 1e5x: residual-stream activations far beyond 65504."""
    pipe = base.clone()
    with torch.no_grad():
        t5_of(pipe.component("text_encoder")).t5.encoder.embed_tokens.weight.mul_(1.0e5)
    return pipe


def tokens(pipe):
    t = pipe.prompt_encoder.encode(["a red ball", "a timelapse of clouds over mountains at dawn"])
    return t["t5_ids"], t["t5_mask"]


def test_scale_by_hand():
    assert power_of_two_scale(10.0, 3.0e4) == 1.0
    assert power_of_two_scale(4.0e5, 3.0e4) == 16.0  # 4e5 / 3e4 = 13.3 -> 2**4
    assert power_of_two_scale(6.0e4, 3.0e4) == 2.0


def test_overflow_removed_outputs_unchanged_and_run_folder(base, tmp_path):
    pipe = overflowing(base)
    ids, mask = tokens(pipe)
    with torch.no_grad():
        reference = pipe.component("text_encoder")(ids, mask)
    out, record, folder = run_through_manager(pipe, "t5-fp16-rescale", tmp_path)
    m = record.metrics
    assert record.status == "done"
    assert m["overflow_fp16_before"] > 0 and m["max_activation_before"] > 65504
    assert m["overflow_fp16_after"] == 0 and m["max_activation_after"] <= 3.0e4
    assert m["scale"] >= 2 and m["max_abs_diff"] <= 1e-4

    loaded = load_pipeline(folder)
    t5 = t5_of(loaded.component("text_encoder")).t5
    assert t5.config.layer_norm_epsilon == pytest.approx(1e-6 / m["scale"] ** 2)
    with torch.no_grad():
        again = loaded.component("text_encoder")(ids, mask)
    assert (again - reference).abs().max() <= 1e-4 * max(1.0, float(reference.abs().max()))


def test_second_application_is_a_no_op(base, tmp_path):
    pipe = overflowing(base)
    apply_pass(pipe, "t5-fp16-rescale", tmp_path)
    result = apply_pass(pipe, "t5-fp16-rescale", tmp_path)
    assert not result.modified and result.metrics["scale"] == 1.0


def test_refuses_without_t5(tmp_path):
    from neoc.testing import toy_pipeline

    with pytest.raises(CheckFailed, match="not T5-class"):
        apply_pass(toy_pipeline(), "t5-fp16-rescale", tmp_path)
