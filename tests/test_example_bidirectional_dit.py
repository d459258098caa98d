"""examples/bidirectional-dit: a custom pass list for a non-pyramidal DiT family runs end to end (CI).

The passes that apply run (with tiny budgets); the Pyramid-MMDiT-only ones refuse with their precondition
message, recorded as status "skipped" + reason in the report, never a traceback.
"""

import json
from pathlib import Path

import pytest

from neoc.errors import CheckFailed
from neoc.runner import run_recipe

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bidirectional-dit" / "recipe.yaml"
APPLIES = {"replace-text-encoder", "swap-decoder", "t5-fp16-rescale", "quantize-w8a16"}
REFUSES = {"prune-blocks": "not an MMDiT", "distill-steps": "Pyramidal DMD", "static-shape": "not a Pyramid MMDiT",
           "precompute-inputs": "not a Pyramid MMDiT", "rope-rank-reduction": "not a Pyramid MMDiT",
           "mask-value": "not a Pyramid MMDiT"}
CI_BUDGETS = ("passes.replace-text-encoder.dt5_steps=4", "passes.replace-text-encoder.steps=4",
              "passes.swap-decoder.steps=2")


def test_example_runs_and_reports_which_passes_apply(tmp_path):
    out = run_recipe(str(EXAMPLE), out=str(tmp_path / "run"), sets=CI_BUDGETS, quiet=True)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete"
    by_name = {p["name"]: p for p in report["passes"]}
    assert set(by_name) == APPLIES | set(REFUSES)
    for name in APPLIES:
        assert by_name[name]["status"] in ("done", "skipped") and "reason" not in by_name[name], by_name[name]
    assert by_name["replace-text-encoder"]["status"] == "done"
    assert by_name["swap-decoder"]["status"] == "done"
    assert by_name["quantize-w8a16"]["metrics"]["sqnr_db"]
    for name, words in REFUSES.items():
        entry = by_name[name]
        assert entry["status"] == "skipped" and words in entry["reason"], entry
        assert "Traceback" not in entry["reason"]
    # the quality instrument is not applied to an untrained, non-toy-world model; the report says why
    assert report["quality"]["before"] is None and "num_videos is 0" in report["quality"]["note"]
    assert report["latency"]["before_seconds"] > 0 and report["latency"]["after_seconds"] > 0
    md = (out / "report.md").read_text()
    assert "preconditions do not hold: distill-steps: Pyramidal DMD" in md
    assert (out / "pipeline" / "manifest.json").is_file()


def test_refusal_without_skip_stops_with_the_reason(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: builtin:bidit-tiny\neval:\n  num_videos: 0\npasses:\n  - name: distill-steps\n")
    with pytest.raises(CheckFailed, match="Pyramidal DMD distils a pyramidal, frame-autoregressive sampler"):
        run_recipe(str(recipe), out=str(tmp_path / "run"), quiet=True)
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def test_on_refuse_must_be_fail_or_skip(tmp_path):
    from neoc.errors import InputError
    from neoc.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: builtin:bidit-tiny\non_refuse: maybe\npasses: []\n")
    with pytest.raises(InputError, match=r"r.yaml:2: 'on_refuse' must be one of fail, skip"):
        load_recipe(recipe)
    assert load_recipe(EXAMPLE).on_refuse == "skip"
