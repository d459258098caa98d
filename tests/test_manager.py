"""Pass infrastructure on a toy graph: order rules, typed configs, cache hit/miss, resume, lineage."""

import json

import attrs
import pytest
import torch

from neoc import registry
from neoc.config import build_config
from neoc.errors import CheckFailed, InputError
from neoc.ir.runfolder import pipeline_hash
from neoc.manager import PassManager
from neoc.pass_api import Pass, PassResult
from neoc.recipe import PassEntry, validate_order
from neoc.testing import toy_pipeline

CALLS = {"scale": 0, "crash": 0}


@attrs.frozen
class ScaleConfig:
    factor: float = 2.0


@registry.register_pass
class ScaleDecoder(Pass):
    """Toy pass: multiply the decoder's projection weights."""

    name = "test-scale-decoder"
    summary = "toy"
    Config = ScaleConfig

    def run(self, pipeline, ctx):
        CALLS["scale"] += 1
        with torch.no_grad():
            pipeline.component("vae_decoder").proj.weight.mul_(self.config.factor)
        path = ctx.artifact("note.txt")
        path.write_text("scaled")
        return PassResult(pipeline, True, {"factor": self.config.factor}, {"note": str(path)})


@registry.register_pass
class CrashOnce(Pass):
    name = "test-crash-once"
    summary = "toy: fails the first time (an interrupted run)"

    def run(self, pipeline, ctx):
        CALLS["crash"] += 1
        if CALLS["crash"] == 1:
            raise KeyboardInterrupt("killed")
        return PassResult(pipeline, False)


@registry.register_pass
class Liar(Pass):
    name = "test-liar"
    summary = "toy: claims no change but changes the pipeline"

    def run(self, pipeline, ctx):
        with torch.no_grad():
            pipeline.component("denoiser").ctx.bias.add_(1.0)
        return PassResult(pipeline, False)


@registry.register_pass
class MustComeLast(Pass):
    name = "test-last"
    summary = "toy: nothing structural may follow"
    forbids_after = ("test-scale-decoder",)


@registry.register_pass
class NeedsScale(Pass):
    name = "test-needs-scale"
    summary = "toy: requires test-scale-decoder earlier"
    requires = ("test-scale-decoder",)

    def run(self, pipeline, ctx):
        return PassResult(pipeline, False)


def entry(name, **params):
    cls = registry.get_pass(name)
    return PassEntry(name, build_config(cls.Config, params, name))


def test_order_rules_rejected_before_running(tmp_path):
    CALLS["scale"] = 0
    with pytest.raises(InputError, match="may not follow"):
        PassManager([entry("test-last"), entry("test-scale-decoder")], tmp_path)
    with pytest.raises(InputError, match="requires 'test-scale-decoder'"):
        validate_order(["test-needs-scale", "test-scale-decoder"])
    with pytest.raises(InputError, match="must run after 'prune-blocks'"):
        validate_order(["distill-steps", "prune-blocks"])
    with pytest.raises(InputError, match="may not follow"):
        validate_order(["quantize-w8a16", "static-shape"])
    assert CALLS["scale"] == 0  # nothing ran
    assert not (tmp_path / "passes").exists()


def test_unknown_config_key_names_it():
    with pytest.raises(InputError, match="unknown key 'factr'"):
        build_config(ScaleConfig, {"factr": 3}, "recipe.yaml:4 test-scale-decoder")
    with pytest.raises(InputError, match="expected a number"):
        build_config(ScaleConfig, {"factor": "big"}, "x")


def test_cache_hit_miss_and_lineage(tmp_path):
    CALLS["scale"] = 0
    pipe = toy_pipeline()
    h0 = pipeline_hash(pipe)
    m1 = PassManager([entry("test-scale-decoder", factor=2.0), entry("test-needs-scale")], tmp_path)
    out = m1.run(pipe)
    assert CALLS["scale"] == 1
    rec = m1.records[0]
    assert rec.input_hash == h0 and rec.output_hash == pipeline_hash(out) != h0
    assert rec.artifacts["note"].endswith("note.txt")
    assert out.info["lineage"][0]["pass"] == "test-scale-decoder"
    assert [r.status for r in m1.records] == ["done", "skipped"]
    marker = json.loads((tmp_path / "passes" / "00-test-scale-decoder" / "pass.json").read_text())
    assert marker["cache_key"] == rec.cache_key

    # same inputs + resume: cache hit, the pass does not run again, same result
    m2 = PassManager([entry("test-scale-decoder", factor=2.0), entry("test-needs-scale")], tmp_path, resume=True)
    out2 = m2.run(toy_pipeline())
    assert CALLS["scale"] == 1 and m2.records[0].cached
    assert pipeline_hash(out2) == pipeline_hash(out)

    # different config: cache miss
    m3 = PassManager([entry("test-scale-decoder", factor=3.0)], tmp_path, resume=True)
    m3.run(toy_pipeline())
    assert CALLS["scale"] == 2 and not m3.records[0].cached

    # different input pipeline: cache miss
    m4 = PassManager([entry("test-scale-decoder", factor=3.0)], tmp_path, resume=True)
    m4.run(toy_pipeline(seed=1))
    assert CALLS["scale"] == 3


def test_resume_after_interrupted_run(tmp_path):
    CALLS["scale"] = CALLS["crash"] = 0
    entries = [entry("test-scale-decoder"), entry("test-crash-once")]
    with pytest.raises(KeyboardInterrupt):
        PassManager(entries, tmp_path).run(toy_pipeline())
    assert CALLS == {"scale": 1, "crash": 1}
    assert not (tmp_path / "passes" / "01-test-crash-once" / "pass.json").exists()
    m = PassManager(entries, tmp_path, resume=True)
    m.run(toy_pipeline())
    assert CALLS == {"scale": 1, "crash": 2}  # finished pass reused, interrupted one re-run
    assert m.records[0].cached and not m.records[1].cached


def test_modified_flag_is_checked(tmp_path):
    with pytest.raises(CheckFailed, match="modified=False"):
        PassManager([entry("test-liar")], tmp_path).run(toy_pipeline())


def test_contract_passes_registered_and_unimplemented_refuse(tmp_path):
    names = set(registry.passes())
    contract = {"replace-text-encoder", "swap-decoder", "prune-blocks", "distill-steps", "static-shape",
                "precompute-inputs", "rope-rank-reduction", "mask-value", "t5-fp16-rescale", "quantize-w8a16"}
    assert contract <= names
    assert {"hexagon", "onnx"} <= set(registry.targets())
