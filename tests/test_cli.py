"""The command line (CONTRACT "CLI"): ``passes --json``, ``explain`` with profiles and ``--set``, refusing
unimplemented passes, and ``--help`` on every command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import attrs
import pytest

from neoc import registry
from neoc.cli import app
from neoc.pass_api import Pass
from neoc.target_api import Target

REPO_ROOT = Path(__file__).resolve().parents[1]
NEODRAGON = REPO_ROOT / "recipes" / "neodragon.yaml"
CONTRACT_PASSES = ("replace-text-encoder", "swap-decoder", "prune-blocks", "distill-steps", "static-shape",
                   "precompute-inputs", "rope-rank-reduction", "mask-value", "t5-fp16-rescale", "quantize-w8a16")
NEODRAGON_ORDER = CONTRACT_PASSES  # the paper's order, as the recipe lists it


def explained_passes(text: str) -> dict[str, dict[str, str]]:
    """``neoc explain`` output -> {pass name: {param: printed value}}, in printed order."""
    passes: dict[str, dict[str, str]] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"^\s+\d+\. (\S+)", line)
        if head:
            current = passes.setdefault(head.group(1), {})
            continue
        if line.startswith(("target", "order rules")):
            current = None
            continue
        param = re.match(r"^\s{8}(\w+): (.*?)(\s+<- .*)?$", line)
        if current is not None and param and param.group(1) != "rule":
            current[param.group(1)] = param.group(2)
    return passes


# ----------------------------------------------------------------------------- neoc passes
def test_passes_json_lists_the_ten_contract_passes(neoc_subprocess):
    proc = neoc_subprocess("passes", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    by_name = {row["name"]: row for row in rows}
    assert set(CONTRACT_PASSES) <= set(by_name)
    for name in CONTRACT_PASSES:
        row = by_name[name]
        assert isinstance(row["summary"], str) and row["summary"].strip(), name
        assert isinstance(row["params"], dict), name
        for param, spec in row["params"].items():
            assert "type" in spec and "default" in spec, (name, param)
    prune = by_name["prune-blocks"]["params"]
    assert prune["keep"]["type"] == "int" and prune["keep"]["default"] == 18
    assert "'combined'" in prune["policy"]["type"]
    assert by_name["replace-text-encoder"]["params"]["mode"]["default"] == "RM"


def test_passes_text_lists_one_line_per_pass(invoke):
    result = invoke("passes")
    assert result.exit_code == 0
    for name in CONTRACT_PASSES:
        assert re.search(rf"^{re.escape(name)}\s+\S", result.stdout, re.M), name


# ----------------------------------------------------------------------------- neoc explain
def test_explain_prints_order_and_tiny_profile(invoke):
    result = invoke("explain", NEODRAGON)
    assert result.exit_code == 0, result.stderr
    assert "profile tiny" in result.stdout
    passes = explained_passes(result.stdout)
    assert tuple(passes) == NEODRAGON_ORDER
    assert passes["prune-blocks"]["keep"] == "6"  # profiles.tiny, not the recipe's 18
    assert passes["prune-blocks"]["calib_prompts"] == "8"
    assert passes["replace-text-encoder"]["mode"] == "RM"
    assert re.search(r"keep: 6\s+<- .*neodragon.yaml:\d+ \(profile 'tiny'\)", result.stdout)
    assert "target  hexagon" in result.stdout and "order rules: ok" in result.stdout


def test_explain_set_profile_real_switches(invoke):
    result = invoke("explain", NEODRAGON, "--set", "profile=real")
    assert result.exit_code == 0, result.stderr
    assert "profile real" in result.stdout
    passes = explained_passes(result.stdout)
    assert passes["prune-blocks"]["keep"] == "18"
    assert passes["prune-blocks"]["calib_prompts"] == "100"
    assert passes["distill-steps"]["steps"] == "5000"


def test_explain_real_model_picks_real_profile(invoke):
    result = invoke("explain", NEODRAGON, "--model", "builtin:pyramid-flow-sd3")
    assert result.exit_code == 0, result.stderr
    assert "model   builtin:pyramid-flow-sd3" in result.stdout and "profile real" in result.stdout


def test_explain_shows_set_overrides(invoke):
    result = invoke("explain", NEODRAGON, "--set", "passes.prune-blocks.keep=4",
                    "--set", "passes.prune-blocks.stage1_lr=1e-4", "--set", "seed=7")
    assert result.exit_code == 0, result.stderr
    passes = explained_passes(result.stdout)
    assert passes["prune-blocks"]["keep"] == "4"
    assert passes["prune-blocks"]["stage1_lr"] == "0.0001"
    assert "seed 7" in result.stdout
    assert re.search(r"keep: 4\s+<- --set passes.prune-blocks.keep", result.stdout)


def test_explain_in_a_real_process(neoc_subprocess):
    proc = neoc_subprocess("explain", "recipes/neodragon.yaml", "--set", "passes.prune-blocks.keep=4")
    assert proc.returncode == 0, proc.stderr
    assert explained_passes(proc.stdout)["prune-blocks"]["keep"] == "4"


# ----------------------------------------------------------------------------- unimplemented passes
@attrs.frozen
class _NoParams:
    pass


@pytest.fixture
def unbuilt_pass_and_target():
    """A registered pass and target whose algorithms are not built (like the contract passes at first)."""

    class UnbuiltPass(Pass):
        name = "test-unbuilt-pass"
        summary = "toy: registered, not implemented"
        Config = _NoParams
        implemented = False

    class UnbuiltTarget(Target):
        name = "test-unbuilt-target"
        summary = "toy: registered, not implemented"
        implemented = False

    registry.register_pass(UnbuiltPass)
    registry.register_target(UnbuiltTarget)
    yield
    registry._PASSES.pop(UnbuiltPass.name, None)
    registry._TARGETS.pop(UnbuiltTarget.name, None)


@pytest.mark.parametrize("text,message", [
    ("passes:\n  - name: test-unbuilt-pass\n", r"ok.yaml:2: pass 'test-unbuilt-pass' is not implemented yet"),
    ("passes: []\ntarget: {name: test-unbuilt-target}\n",
     r"ok.yaml:2: target 'test-unbuilt-target' is not implemented yet"),
])
def test_run_refuses_unimplemented(text, message, unbuilt_pass_and_target, invoke, write_recipe, workdir, tmp_path):
    recipe = write_recipe(text, name="ok.yaml")
    out = tmp_path / "out"
    result = invoke("run", recipe, "--out", out)
    assert result.exit_code == 2
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (out / "report.json").exists() and not out.exists()
    assert list(workdir.iterdir()) == []


def test_explain_flags_unimplemented_without_failing(unbuilt_pass_and_target, invoke, write_recipe):
    recipe = write_recipe("passes:\n  - name: test-unbuilt-pass\n", name="ok.yaml")
    result = invoke("explain", recipe)
    assert result.exit_code == 0 and "NOT IMPLEMENTED" in result.stdout


# ----------------------------------------------------------------------------- --help
def _command_names() -> list[str]:
    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_every_contract_command_exists():
    assert {"run", "passes", "analyze", "eval", "generate", "explain"} <= set(_command_names())


@pytest.mark.parametrize("command", [[]] + [[name] for name in _command_names()], ids=lambda c: c[0] if c else "neoc")
def test_help_works_on_every_command(command, invoke):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Usage:" in result.stdout and "--help" in result.stdout


def test_help_in_a_real_process(neoc_subprocess):
    proc = neoc_subprocess("--help")
    assert proc.returncode == 0 and "run" in proc.stdout and "explain" in proc.stdout
    proc = neoc_subprocess("run", "--help")
    assert proc.returncode == 0 and "--resume" in proc.stdout and "--set" in proc.stdout
