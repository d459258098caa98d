"""Bad input never crashes (issue 2): every malformed recipe, flag or model source exits 2 through the real CLI
with one ``error:`` line naming the file:line or the key at fault, no Python traceback, and nothing written —
no ``--out`` folder, nothing in the working directory, nothing beside the recipe.

Each case runs ``neoc run RECIPE --out OUT`` in-process (typer's CliRunner); a representative subset also runs
as a real ``python -m neoc`` subprocess, the most faithful check that no traceback reaches the terminal.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from neoc.errors import InputError
from neoc.recipe import load_recipe, parse_set

# (id, recipe text, extra CLI args, regexes the single error line must match). ``{R}`` is the recipe's file
# name, so ``{R}:3:`` asserts that the message names line 3 of the recipe.
CASES = [
    # --- not a recipe at all
    ("yaml-syntax", """\
        seed: 0
        passes:
          - name: prune-blocks
           keep: 4
        """, [], [r"{R}:4: invalid YAML"]),
    ("yaml-unclosed-flow", "passes: [\n", [], [r"{R}:2: invalid YAML"]),
    ("yaml-tab-indent", "passes:\n\t- name: prune-blocks\n", [], [r"{R}:2: invalid YAML"]),
    ("yaml-two-documents", "seed: 0\n---\nseed: 1\n", [], [r"{R}:2: invalid YAML.*single document"]),
    ("empty-file", "", [], [r"{R}: the recipe is empty"]),
    ("comments-only", "# a recipe\n# with nothing in it\n", [], [r"{R}: the recipe is empty"]),
    ("top-level-list", "- name: prune-blocks\n", [], [r"{R}:1: a recipe must be a mapping", r"got a list"]),
    ("top-level-scalar", "prune-blocks\n", [], [r"{R}:1: a recipe must be a mapping", r"got a str"]),
    ("not-utf8", b"passes:\n  - name: \xff\xfe\n", [], [r"{R}: cannot read recipe"]),
    ("non-scalar-key", "? [a, b]\n: 1\n", [], [r"{R}:1: mapping keys must be plain scalars"]),
    ("duplicate-key", """\
        passes:
          - name: prune-blocks
            keep: 4
            keep: 5
        """, [], [r"{R}:4: duplicate key 'keep' \(first at line 3\)"]),
    ("duplicate-top-level-key", "seed: 0\nseed: 1\n", [], [r"{R}:2: duplicate key 'seed'"]),
    ("python-tag-apply", 'model: !!python/object/apply:os.system ["touch PWNED"]\n', [],
     [r"{R}:1: YAML tag '!!python/object/apply:os.system' is not allowed"]),
    ("python-tag-name", "passes:\n  - name: !!python/name:os.system\n", [],
     [r"{R}:2: YAML tag '!!python/name:os.system' is not allowed"]),
    ("custom-tag", "seed: !env SEED\n", [], [r"{R}:1: YAML tag '!env' is not allowed"]),
    # --- top level
    ("unknown-top-level-key", "seed: 0\npases: []\n", [],
     [r"{R}:2: unknown top-level key 'pases' \(did you mean 'passes'\?\)"]),
    ("model-not-string", "model: 5\npasses: []\n", [], [r"{R}:1: 'model' must be a model source string"]),
    ("seed-string", "seed: abc\npasses: []\n", [], [r"{R}:1: 'seed' must be a non-negative integer, got 'abc'"]),
    ("seed-negative", "passes: []\nseed: -1\n", [], [r"{R}:2: 'seed' must be a non-negative integer"]),
    ("seed-bool", "seed: true\n", [], [r"{R}:1: 'seed'.*got True"]),
    ("seed-float", "seed: 1.5\n", [], [r"{R}:1: 'seed'.*got 1.5"]),
    # --- passes
    ("passes-not-list", "passes: prune-blocks\n", [], [r"{R}:1: 'passes' must be a list"]),
    ("passes-mapping", "passes: {name: prune-blocks}\n", [], [r"{R}:1: 'passes' must be a list"]),
    ("unknown-pass", "passes:\n  - name: prune-block\n", [],
     [r"{R}:2: unknown pass 'prune-block' \(did you mean 'prune-blocks'\?\)"]),
    ("pass-without-name", "passes:\n  - keep: 4\n", [], [r"{R}:2: pass entry has no 'name'"]),
    ("pass-entry-string", "passes:\n  - prune-blocks\n", [],
     [r"{R}:2: each pass must be a mapping", r"write '- name: prune-blocks'"]),
    ("pass-entry-list", "passes:\n  - [prune-blocks]\n", [], [r"{R}:2: each pass must be a mapping"]),
    ("pass-name-not-string", "passes:\n  - name: 5\n", [], [r"{R}:2: pass name must be a string"]),
    ("unknown-param", """\
        passes:
          - name: prune-blocks
            policy: combined
            kepp: 4
        """, [], [r"{R}:4: pass 'prune-blocks': unknown key 'kepp' \(did you mean 'keep'\?\)", r"known keys: "]),
    ("string-for-int", "passes:\n  - name: prune-blocks\n    keep: '4'\n", [],
     [r"{R}:3: pass 'prune-blocks': keep: expected an integer, got '4' \(a string\)"]),
    ("bool-for-int", "passes:\n  - name: prune-blocks\n    keep: true\n", [],
     [r"{R}:3: pass 'prune-blocks': keep: expected an integer, got True"]),
    ("float-for-int", "passes:\n  - name: prune-blocks\n    keep: 4.0\n", [],
     [r"{R}:3: pass 'prune-blocks': keep: expected an integer, got 4.0 \(a float\)"]),
    ("list-for-scalar", "passes:\n  - name: prune-blocks\n    policy: [combined]\n", [],
     [r"{R}:3: pass 'prune-blocks': policy: must be one of"]),
    ("string-for-float", "passes:\n  - name: prune-blocks\n    stage1_lr: fast\n", [],
     [r"{R}:3: pass 'prune-blocks': stage1_lr: expected a number, got 'fast'"]),
    ("nan-for-float", "passes:\n  - name: prune-blocks\n    stage1_lr: .nan\n", [],
     [r"{R}:3: pass 'prune-blocks': stage1_lr: expected a finite number"]),
    ("out-of-range-keep-0", "passes:\n  - name: prune-blocks\n    policy: visual\n    keep: 0\n", [],
     [r"{R}:4: pass 'prune-blocks': keep must be >= 1, got 0"]),
    ("negative-lr", "passes:\n  - name: prune-blocks\n    keep: 4\n    stage1_lr: -1e-4\n", [],
     [r"{R}:4: pass 'prune-blocks': stage1_lr must be >= 0"]),
    ("bad-literal", "passes:\n  - name: replace-text-encoder\n    mode: XX\n", [],
     [r"{R}:3: pass 'replace-text-encoder': mode: must be one of 'RM', 'EM'.*got 'XX'"]),
    ("literal-wrong-case", "passes:\n  - name: replace-text-encoder\n    mode: rm\n", [],
     [r"{R}:3:.*got 'rm' \(did you mean 'RM'\?\)"]),
    ("params-nested-mapping", "passes:\n  - name: prune-blocks\n    params: {keep: 4}\n", [],
     [r"{R}:3: pass 'prune-blocks': unknown key 'params'"]),
    # --- order rules, rejected before running
    ("order-quantize-before-prune", "passes:\n  - name: quantize-w8a16\n  - name: prune-blocks\n", [],
     [r"{R}:2: pass 'prune-blocks' \(line 3\) may not follow 'quantize-w8a16'"]),
    ("order-static-before-distill", "passes:\n  - name: static-shape\n  - name: distill-steps\n", [],
     [r"{R}:2: pass 'distill-steps' \(line 3\) may not follow 'static-shape'"]),
    ("order-distill-before-prune", "passes:\n  - name: distill-steps\n  - name: prune-blocks\n", [],
     [r"{R}:2: pass 'distill-steps' must run after 'prune-blocks', but 'prune-blocks' comes later \(line 3\)"]),
    # --- target
    ("unknown-target", "passes: []\ntarget:\n  name: hexagn\n", [],
     [r"{R}:3: unknown target 'hexagn' \(did you mean 'hexagon'\?\)"]),
    ("target-not-mapping", "passes: []\ntarget: [onnx]\n", [], [r"{R}:2: 'target' must be a mapping with a 'name'"]),
    ("target-without-name", "passes: []\ntarget: {socs: [x-elite]}\n", [], [r"{R}:2: 'target' must be a mapping"]),
    ("bad-soc", "passes: []\ntarget:\n  name: hexagon\n  socs: [x-elit]\n", [],
     [r"{R}:4: target 'hexagon': socs\[0\]: must be one of.*\(did you mean 'x-elite'\?\)"]),
    ("socs-not-list", "passes: []\ntarget:\n  name: hexagon\n  socs: x-elite\n", [],
     [r"{R}:4: target 'hexagon': socs: expected a list"]),
    ("unknown-target-param", "passes: []\ntarget:\n  name: onnx\n  opset_version: 17\n", [],
     [r"{R}:4: target 'onnx': unknown key 'opset_version'"]),
    # --- eval
    ("eval-prompts-missing", "eval:\n  prompts: no-such-prompts.txt\npasses: []\n", [],
     [r"{R}:2: eval.prompts: file not found: .*no-such-prompts.txt"]),
    ("eval-videos-missing", "eval:\n  videos: no-such-clips/\npasses: []\n", [],
     [r"{R}:2: eval.videos: folder not found: .*no-such-clips"]),
    ("eval-prompts-is-folder", "eval:\n  prompts: .\n", [], [r"{R}:2: eval.prompts: is a folder, expected a file"]),
    ("eval-prompts-not-string", "eval:\n  prompts: [a.txt]\n", [], [r"{R}:2: eval.prompts: expected a path"]),
    ("eval-unknown-key", "eval:\n  prompt: p.txt\n", [],
     [r"{R}:2: unknown key 'eval.prompt' \(did you mean 'prompts'\?\)"]),
    ("eval-not-mapping", "eval: prompts.txt\n", [], [r"{R}:1: 'eval' must be a mapping"]),
    # --- profiles
    ("unknown-profile", "profile: huge\nprofiles:\n  tiny: {}\n  real: {}\npasses: []\n", [],
     [r"{R}:1: unknown profile 'huge' \(defined: tiny, real\)"]),
    ("profile-bad-key", """\
        passes:
          - name: prune-blocks
        profiles:
          tiny:
            passes.prune-blocks.kepp: 3
        """, [], [r"{R}:5 \(profile 'tiny'\): pass 'prune-blocks': unknown key 'kepp' \(did you mean 'keep'\?\)"]),
    ("profile-unknown-pass", "passes: []\nprofiles:\n  tiny:\n    passes.prune-blocks.keep: 3\n", [],
     [r"{R}:4 \(profile 'tiny'\): the recipe has no pass named 'prune-blocks'"]),
    ("profile-not-mapping", "passes: []\nprofiles:\n  tiny: [a]\n", [], [r"{R}:3: profile 'tiny' must be a mapping"]),
    ("profiles-not-mapping", "passes: []\nprofiles: [tiny]\n", [], [r"{R}:2: 'profiles' must be a mapping"]),
    # --- flags: --set, --model, --out
    ("set-no-equals", "passes: []\n", ["--set", "seed"], [r"--set 'seed': expected KEY=VALUE"]),
    ("set-empty-key", "passes: []\n", ["--set", "=3"], [r"--set '=3': expected KEY=VALUE"]),
    ("set-unknown-key", "passes: []\n", ["--set", "sede=1"],
     [r"--set sede: unknown key 'sede' \(did you mean 'seed'\?\)"]),
    ("set-unknown-pass", "passes:\n  - name: prune-blocks\n", ["--set", "passes.prune-block.keep=3"],
     [r"--set passes.prune-block.keep: the recipe has no pass named 'prune-block' \(did you mean 'prune-blocks'\?\)"]),
    ("set-pass-absent", "passes:\n  - name: prune-blocks\n", ["--set", "passes.swap-decoder.steps=3"],
     [r"--set passes.swap-decoder.steps: the recipe has no pass named 'swap-decoder' \(its passes: prune-blocks\)"]),
    ("set-unknown-param", "passes:\n  - name: prune-blocks\n", ["--set", "passes.prune-blocks.kepp=3"],
     [r"--set passes.prune-blocks.kepp: pass 'prune-blocks': unknown key 'kepp' \(did you mean 'keep'\?\)"]),
    ("set-float-for-int", "passes:\n  - name: prune-blocks\n", ["--set", "passes.prune-blocks.keep=4.5"],
     [r"--set passes.prune-blocks.keep: pass 'prune-blocks': keep: expected an integer, got 4.5"]),
    ("set-out-of-range", "passes:\n  - name: prune-blocks\n    keep: 4\n", ["--set", "passes.prune-blocks.keep=0"],
     [r"--set passes.prune-blocks.keep: pass 'prune-blocks': keep must be >= 1"]),
    ("set-pass-without-param", "passes:\n  - name: prune-blocks\n", ["--set", "passes.prune-blocks=4"],
     [r"--set passes.prune-blocks: use passes.<name>.<param>=VALUE"]),
    ("set-rename-pass", "passes:\n  - name: prune-blocks\n", ["--set", "passes.prune-blocks.name=x"],
     [r"--set passes.prune-blocks.name: a pass's name cannot be overridden"]),
    ("set-bad-yaml-value", "passes: []\n", ["--set", "seed=[1"], [r"--set 'seed=\[1': the value is not valid YAML"]),
    ("set-python-tag", "passes: []\n", ["--set", "seed=!!python/object/apply:os.system [touch PWNED]"],
     [r"YAML tag '!!python/object/apply:os.system' is not allowed"]),
    ("set-bad-seed", "seed: 0\npasses: []\n", ["--set", "seed=abc"], [r"--set seed: 'seed' must be a non-negative"]),
    ("set-unknown-profile", "passes: []\nprofiles: {tiny: {}}\n", ["--set", "profile=huge"],
     [r"--set profile: unknown profile 'huge'"]),
    ("set-eval-missing", "passes: []\n", ["--set", "eval.videos=no-such-clips"],
     [r"--set eval.videos: eval.videos: folder not found"]),
    ("set-eval-unknown", "passes: []\n", ["--set", "eval.clips=x"], [r"--set eval.clips: unknown key 'eval.clips'"]),
    ("model-builtin-unknown", "passes: []\n", ["--model", "builtin:nope"],
     [r"--model: unknown model source 'builtin:nope'"]),
    ("model-in-recipe-unknown", "seed: 0\nmodel: builtin:nope\npasses: []\n", [],
     [r"{R}:2: unknown model source 'builtin:nope'"]),
    ("model-missing-folder", "passes: []\n", ["--model", "no/such/folder"],
     [r"--model: model source 'no/such/folder': no such folder"]),
    ("model-folder-neither", "passes: []\n", ["--model", "{RECIPES}"],
     [r"--model: model source .*: folder is neither a neoc run folder.*nor a released Pyramid-Flow folder"]),
    ("model-is-file", "passes: []\n", ["--model", "{RECIPES}/bad.yaml"], [r"--model: model source .*is a file"]),
]


def _format(text: str, recipe: Path) -> str:
    return text.replace("{R}", re.escape(recipe.name)).replace("{RECIPES}", str(recipe.parent))


def _assert_clean_failure(exit_code: int, stdout: str, stderr: str, patterns: list[str]) -> None:
    assert exit_code == 2, f"exit {exit_code}\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stderr + stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got: {stderr!r}"
    for pattern in patterns:
        assert re.search(pattern, lines[0]), f"{pattern!r} not found in {lines[0]!r}"
    assert stdout.strip() == ""


def _assert_nothing_written(workdir: Path, recipe_dir: Path, recipe: Path, out: Path) -> None:
    assert not out.exists(), "a bad recipe created the --out folder"
    assert list(workdir.iterdir()) == [], "a bad recipe wrote into the working directory"
    assert [p.name for p in recipe_dir.iterdir()] == [recipe.name], "a bad recipe wrote beside the recipe"


def test_at_least_fifteen_kinds_of_bad_recipe():
    assert len(CASES) >= 15
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("text,args,patterns", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_recipe_exits_2_naming_the_fault(text, args, patterns, invoke, write_recipe, workdir, recipe_dir,
                                             tmp_path):
    recipe = write_recipe(text)
    out = tmp_path / "out"
    result = invoke("run", recipe, "--out", out, *[_format(a, recipe) for a in args])
    _assert_clean_failure(result.exit_code, result.stdout, result.stderr, [_format(p, recipe) for p in patterns])
    assert isinstance(result.exception, SystemExit)  # mapped to an exit code, never escaped
    _assert_nothing_written(workdir, recipe_dir, recipe, out)


@pytest.mark.parametrize("case_id", ["yaml-syntax", "python-tag-apply", "unknown-pass", "float-for-int",
                                     "order-quantize-before-prune", "bad-soc", "set-unknown-param",
                                     "model-builtin-unknown"])
def test_bad_recipe_in_a_real_process(case_id, neoc_subprocess, write_recipe, recipe_dir, tmp_path):
    """The console path: no traceback, one line, exit 2, nothing written (and the os.system tag never ran)."""
    _, text, args, patterns = next(c for c in CASES if c[0] == case_id)
    recipe = write_recipe(text)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    out = tmp_path / "out"
    proc = neoc_subprocess("run", recipe, "--out", out, *[_format(a, recipe) for a in args], cwd=workdir)
    _assert_clean_failure(proc.returncode, proc.stdout, proc.stderr, [_format(p, recipe) for p in patterns])
    _assert_nothing_written(workdir, recipe_dir, recipe, out)


def test_missing_recipe_file(invoke, workdir, tmp_path, neoc_subprocess):
    missing = tmp_path / "nope.yaml"
    result = invoke("run", missing, "--out", tmp_path / "out")
    _assert_clean_failure(result.exit_code, result.stdout, result.stderr, [r"nope.yaml: recipe file not found"])
    proc = neoc_subprocess("explain", missing, cwd=workdir)
    _assert_clean_failure(proc.returncode, proc.stdout, proc.stderr, [r"nope.yaml: recipe file not found"])
    assert not (tmp_path / "out").exists() and list(workdir.iterdir()) == []


def test_recipe_is_a_folder(invoke, recipe_dir, workdir, tmp_path):
    result = invoke("run", recipe_dir, "--out", tmp_path / "out")
    _assert_clean_failure(result.exit_code, result.stdout, result.stderr, [r"is a folder; expected a recipe"])


def test_default_out_not_created_for_a_bad_recipe(invoke, write_recipe, workdir, recipe_dir):
    """Without --out the run folder would be runs/<name> under the working directory: still nothing made."""
    recipe = write_recipe("passes:\n  - name: prune-blocks\n    keep: 0\n")
    result = invoke("run", recipe)
    assert result.exit_code == 2
    assert list(workdir.iterdir()) == []


def test_python_tag_never_executes(invoke, write_recipe, workdir, recipe_dir, tmp_path):
    marker = tmp_path / "PWNED"
    recipe = write_recipe(f'model: !!python/object/apply:os.system ["touch {marker}"]\npasses: []\n')
    for command in (["run", recipe, "--out", tmp_path / "out"], ["explain", recipe]):
        result = invoke(*command)
        assert result.exit_code == 2 and "is not allowed" in result.stderr
    assert not marker.exists()


def test_out_folder_not_empty_without_resume(invoke, write_recipe, workdir, tmp_path):
    recipe = write_recipe("model: builtin:pyramid-tiny\npasses: []\n", name="ok.yaml")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep-me.txt").write_text("precious")
    result = invoke("run", recipe, "--out", out)
    _assert_clean_failure(result.exit_code, result.stdout, result.stderr,
                          [r"--out .*out: folder exists and is not empty; pass --resume"])
    assert [p.name for p in out.iterdir()] == ["keep-me.txt"]
    assert (out / "keep-me.txt").read_text() == "precious"
    assert list(workdir.iterdir()) == []


def test_out_is_a_file(invoke, write_recipe, workdir, tmp_path):
    recipe = write_recipe("passes: []\n", name="ok.yaml")
    out = tmp_path / "out.txt"
    out.write_text("x")
    result = invoke("run", recipe, "--out", out)
    _assert_clean_failure(result.exit_code, result.stdout, result.stderr,
                          [r"--out .*out.txt: exists and is not a folder"])
    assert out.read_text() == "x"


@pytest.mark.parametrize("command", [["explain"], ["analyze", "--model", "builtin:pyramid-tiny", "--recipe"]])
def test_other_commands_reject_bad_recipes_too(command, invoke, write_recipe, workdir):
    recipe = write_recipe("passes:\n  - name: prune-blocks\n    kepp: 4\n")
    result = invoke(*command, recipe)
    _assert_clean_failure(result.exit_code, result.stdout, result.stderr, [r"bad.yaml:3: .*unknown key 'kepp'"])


def test_usage_errors_exit_2_without_traceback(invoke, write_recipe, workdir):
    recipe = write_recipe("passes: []\n", name="ok.yaml")
    for args in (["run"], ["run", recipe, "--no-such-flag"], ["analyze", "--model", "builtin:pyramid-tiny",
                                                            "--frames", "many"], ["no-such-command"]):
        result = invoke(*args)
        assert result.exit_code == 2, args
        assert "Traceback" not in result.stdout + result.stderr


# ----------------------------------------------------------------------------- what a demanding user expects
def test_yaml_1_2_floats_are_numbers(write_recipe):
    """PyYAML alone reads ``1e-4`` as a string; a recipe reads it as the float everyone means."""
    recipe = write_recipe("passes:\n  - name: prune-blocks\n    stage1_lr: 1e-4\n    stage2_lr: 2.5E+3\n",
                          name="ok.yaml")
    config = load_recipe(recipe).passes[0].config
    assert config.stage1_lr == 1e-4 and config.stage2_lr == 2500.0


def test_set_values_parse_as_yaml_scalars():
    parsed = dict(parse_set(["passes.prune-blocks.keep=4", "passes.x.lr=1e-4", "target.socs=[x-elite, 8-elite]",
                             "passes.replace-text-encoder.mode=RM", "target.qai_hub=false", "eval.prompts=",
                             "model=builtin:pyramid-flow-sd3", "passes.distill-steps.schedule=1-1-1"]))
    assert parsed["passes.prune-blocks.keep"] == 4 and type(parsed["passes.prune-blocks.keep"]) is int
    assert parsed["passes.x.lr"] == 1e-4
    assert list(parsed["target.socs"]) == ["x-elite", "8-elite"]
    assert parsed["passes.replace-text-encoder.mode"] == "RM"
    assert parsed["target.qai_hub"] is False
    assert parsed["eval.prompts"] == ""
    assert parsed["model"] == "builtin:pyramid-flow-sd3"
    assert parsed["passes.distill-steps.schedule"] == "1-1-1"


def test_relative_eval_paths_resolve_against_the_recipe_folder(write_recipe, recipe_dir, workdir):
    (recipe_dir / "prompts.txt").write_text("a red ball\n")
    (recipe_dir / "clips").mkdir()
    recipe = write_recipe("eval:\n  prompts: prompts.txt\n  videos: clips\npasses: []\n", name="ok.yaml")
    parsed = load_recipe(recipe)  # the working directory (workdir) holds neither
    assert parsed.eval_prompts == (recipe_dir / "prompts.txt").resolve()
    assert parsed.eval_videos == (recipe_dir / "clips").resolve()


def test_relative_set_eval_paths_resolve_against_the_working_directory(write_recipe, workdir):
    (workdir / "mine.txt").write_text("a blue cube\n")
    recipe = write_recipe("passes: []\n", name="ok.yaml")
    parsed = load_recipe(recipe, overrides=["eval.prompts=mine.txt"])
    assert parsed.eval_prompts == (workdir / "mine.txt").resolve()


def test_set_beats_profile_beats_recipe(write_recipe):
    recipe = write_recipe("""\
        passes:
          - name: prune-blocks
            keep: 10
            policy: visual
        profiles:
          tiny: {passes.prune-blocks.keep: 6, passes.prune-blocks.policy: text}
        """, name="ok.yaml")
    parsed = load_recipe(recipe, overrides=["passes.prune-blocks.keep=3"])
    assert parsed.profile == "tiny"
    assert parsed.passes[0].config.keep == 3 and parsed.passes[0].config.policy == "text"
    assert parsed.param_origin(0, "keep") == "--set passes.prune-blocks.keep"
    assert parsed.param_origin(0, "policy").endswith("ok.yaml:6 (profile 'tiny')")


def test_errors_are_input_errors_in_the_api_too(write_recipe):
    recipe = write_recipe("passes:\n  - name: prune-blocks\n    keep: 4.0\n")
    with pytest.raises(InputError, match=r"bad.yaml:3: pass 'prune-blocks': keep: expected an integer"):
        load_recipe(recipe)
