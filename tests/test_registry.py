"""Third parties add passes and targets through entry points, without editing neoc."""

from importlib import metadata

import attrs
import pytest

from neoc import registry
from neoc.errors import InputError
from neoc.pass_api import Pass, PassResult
from neoc.target_api import Target, TargetResult


class PluginPass(Pass):
    name = "plugin-pass"
    summary = "a pass shipped by another package"

    def run(self, pipeline, ctx):
        return PassResult(pipeline, False, {"plugin": True})


@attrs.frozen
class PluginTargetConfig:
    level: int = 1


class PluginTarget(Target):
    name = "plugin-target"
    summary = "a target shipped by another package"
    Config = PluginTargetConfig

    def build(self, pipeline, ctx):
        return TargetResult()


def _fake_entry_points(extra):
    real = metadata.entry_points

    def entry_points(group=None, **kw):
        found = [ep for ep in extra if ep.group == group]
        return found + list(real(group=group, **kw)) if group else real(**kw)

    return entry_points


@pytest.fixture()
def plugins(monkeypatch):
    eps = [metadata.EntryPoint("plugin-pass", f"{__name__}:PluginPass", "neoc.passes"),
           metadata.EntryPoint("plugin-target", f"{__name__}:PluginTarget", "neoc.targets")]
    monkeypatch.setattr(metadata, "entry_points", _fake_entry_points(eps))
    monkeypatch.setattr(registry, "_loaded", False)
    yield
    registry._PASSES.pop("plugin-pass", None)
    registry._TARGETS.pop("plugin-target", None)
    registry._loaded = False


def test_entry_point_pass_and_target_are_usable_in_recipes(plugins, tmp_path):
    from neoc.recipe import load_recipe

    assert registry.get_pass("plugin-pass") is PluginPass
    assert registry.get_target("plugin-target") is PluginTarget
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - name: plugin-pass\ntarget:\n  name: plugin-target\n  level: 3\n")
    r = load_recipe(recipe)
    assert r.passes[0].name == "plugin-pass" and r.target.config.level == 3


def test_broken_entry_point_is_a_clear_error(monkeypatch):
    eps = [metadata.EntryPoint("broken", "no_such_module_xyz:Thing", "neoc.passes")]
    monkeypatch.setattr(metadata, "entry_points", _fake_entry_points(eps))
    monkeypatch.setattr(registry, "_loaded", False)
    with pytest.raises(InputError, match="broken"):
        registry.passes()
    monkeypatch.setattr(registry, "_loaded", False)
