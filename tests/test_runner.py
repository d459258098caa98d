"""`neoc run` end to end on a toy pipeline saved as a run folder (model source kind 'run')."""

import json

import pytest
import torch

from neoc.errors import InputError
from neoc.ir.runfolder import load_pipeline, save_pipeline
from neoc.runner import run_recipe
from neoc.testing import toy_pipeline
import tests.test_manager  # noqa: F401  (registers the toy passes)


@pytest.fixture()
def toy_source(tmp_path):
    folder = tmp_path / "toy-model"
    save_pipeline(toy_pipeline(), folder / "pipeline")
    return folder


def write_recipe(tmp_path, source, passes="  - name: test-scale-decoder\n    factor: 3.0\n"):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model: {source}\nseed: 1\npasses:\n{passes}")
    return path


def test_run_writes_contract_report(tmp_path, toy_source):
    recipe = write_recipe(tmp_path, toy_source)
    out = run_recipe(str(recipe), out=str(tmp_path / "run"), quiet=True)
    report = json.loads((out / "report.json").read_text())
    assert {"recipe", "model", "passes", "target", "quality", "cost", "latency"} <= set(report)
    assert report["status"] == "complete"
    p = report["passes"][0]
    assert p["name"] == "test-scale-decoder" and p["status"] == "done" and p["metrics"] == {"factor": 3.0}
    assert isinstance(p["seconds"], float)
    assert {"before", "after"} <= set(report["cost"]) and report["cost"]["before"]["nfe"] == 24
    assert report["lineage"][0]["pass"] == "test-scale-decoder"
    for name in ("report.md", "report.html", "run.log", "status.json"):
        assert (out / name).is_file()
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    # the run folder is itself a model source holding the transformed pipeline
    loaded = load_pipeline(out / "pipeline")
    ref = toy_pipeline().component("vae_decoder").proj.weight * 3.0
    assert torch.allclose(loaded.component("vae_decoder").proj.weight, ref)


def test_rerun_needs_resume_and_resume_uses_cache(tmp_path, toy_source):
    recipe = write_recipe(tmp_path, toy_source)
    out = run_recipe(str(recipe), out=str(tmp_path / "run"), quiet=True)
    with pytest.raises(InputError, match="--resume"):
        run_recipe(str(recipe), out=str(out), quiet=True)
    run_recipe(str(recipe), out=str(out), resume=True, quiet=True)
    report = json.loads((out / "report.json").read_text())
    assert report["passes"][0]["cached"] is True


def test_failed_run_never_looks_complete(tmp_path, toy_source):
    import tests.test_manager as tm

    tm.CALLS["crash"] = 0
    recipe = write_recipe(tmp_path, toy_source, "  - name: test-scale-decoder\n  - name: test-crash-once\n")
    with pytest.raises(KeyboardInterrupt):
        run_recipe(str(recipe), out=str(tmp_path / "run"), quiet=True)
    out = tmp_path / "run"
    assert not (out / "report.json").exists() and not (out / "pipeline").exists()
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
    assert json.loads((out / "report.partial.json").read_text())["status"] == "failed"
    run_recipe(str(recipe), out=str(out), resume=True, quiet=True)  # the killed run resumes
    report = json.loads((out / "report.json").read_text())
    assert [p["cached"] for p in report["passes"]] == [True, False]


def test_same_recipe_seed_inputs_same_artifacts(tmp_path, toy_source):
    recipe = write_recipe(tmp_path, toy_source)
    a = run_recipe(str(recipe), out=str(tmp_path / "a"), quiet=True)
    b = run_recipe(str(recipe), out=str(tmp_path / "b"), quiet=True)
    ma = json.loads((a / "pipeline" / "manifest.json").read_text())["components"]
    mb = json.loads((b / "pipeline" / "manifest.json").read_text())["components"]
    assert {k: v["sha256"] for k, v in ma.items()} == {k: v["sha256"] for k, v in mb.items()}
