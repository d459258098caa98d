"""The ``neoc`` command line (CONTRACT "CLI"). Exit codes: 0 success, 2 bad input, 1 anything else."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import typer

from neoc import __version__
from neoc.errors import InputError, NeocError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="neoc: compile pyramidal text-to-video diffusion pipelines for the Snapdragon NPU.")


def _fail(exc: BaseException) -> None:
    if isinstance(exc, InputError):
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    if isinstance(exc, NeocError):
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    if isinstance(exc, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)
    typer.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
    if "--debug" in sys.argv or __import__("os").environ.get("NEOC_DEBUG"):
        traceback.print_exc()
    raise typer.Exit(1)


def _guard(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except BaseException as exc:  # noqa: BLE001 - mapped to exit codes
            _fail(exc)

    return wrapper


def _quiet(quiet: bool) -> None:
    from neoc.progress import set_quiet

    set_quiet(quiet)


@app.command()
@_guard
def run(recipe: str = typer.Argument(..., help="Recipe YAML file"),
        model: Optional[str] = typer.Option(None, "--model", help="Model source (overrides the recipe's model:)"),
        out: Optional[str] = typer.Option(None, "--out", help="Run folder (default runs/<recipe name>)"),
        resume: bool = typer.Option(False, "--resume", help="Continue a run folder, reusing finished passes"),
        set_: List[str] = typer.Option([], "--set", help="Override a recipe value: a.b=v (repeatable)"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars")):
    """Run a recipe's passes in order, then its target; write report.json/md/html and pipeline/."""
    from neoc.recipe import check_implemented, load_recipe

    _quiet(quiet)
    # Bad input fails here, before anything is written; recipe errors in well under a second (no torch import).
    parsed = load_recipe(recipe, model=model, overrides=tuple(set_))
    check_implemented(parsed)
    _check_model_source(parsed.model, parsed.where("model"))
    from neoc.runner import run_recipe

    out_dir = run_recipe(recipe, model=model, out=out, resume=resume, sets=tuple(set_), quiet=quiet)
    typer.echo(f"run complete: {out_dir}/report.md")


def _check_model_source(source: str, where: str) -> None:
    """Refuse an unknown model source, naming where it was given (``--model``, ``recipe.yaml:1``)."""
    from neoc import sources

    try:
        sources.classify(source)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


@app.command()
@_guard
def passes(as_json: bool = typer.Option(False, "--json", help="Machine-readable output")):
    """List registered passes with a one-line summary each."""
    from neoc import registry
    from neoc.config import describe_params

    rows = []
    for name, cls in registry.passes().items():
        summary = cls.summary + ("" if cls.implemented else " [not implemented]")
        rows.append({"name": name, "summary": summary, "params": describe_params(cls.Config),
                     "implemented": cls.implemented})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        typer.echo(f"{r['name']:<{width}}  {r['summary']}")


@app.command()
@_guard
def explain(recipe: str = typer.Argument(..., help="Recipe YAML file"),
            model: Optional[str] = typer.Option(None, "--model"),
            set_: List[str] = typer.Option([], "--set")):
    """Print the resolved pass order, configs and checks, without running anything."""
    from neoc import registry
    from neoc.config import config_to_dict
    from neoc.recipe import load_recipe

    r = load_recipe(recipe, model=model, overrides=tuple(set_), check_eval_paths=False)
    typer.echo(f"recipe  {r.path}")
    typer.echo(f"model   {r.model}   seed {r.seed}   profile {r.profile or '-'}")
    typer.echo(f"eval    prompts={r.eval_prompts or '-'}  videos={r.eval_videos or '-'}  "
               f"num_videos={r.eval_num_videos}")
    refusal = "is skipped, with its reason" if r.on_refuse == "skip" else "stops the run"
    typer.echo(f"refusal on_refuse={r.on_refuse} (a pass whose preconditions fail {refusal})")
    typer.echo("passes (in order):")
    for i, entry in enumerate(r.passes, 1):
        cls = registry.get_pass(entry.name)
        flags = []
        if not cls.implemented:
            flags.append("NOT IMPLEMENTED")
        if cls.semantics_preserving:
            flags.append("checks max_abs_diff")
        typer.echo(f"  {i:>2}. {entry.name}  [{cls.paper}]  config {entry.config_hash}"
                   + (f"  ({', '.join(flags)})" if flags else ""))
        for k, v in config_to_dict(entry.config).items():
            origin = r.param_origin(i - 1, k)
            typer.echo(f"        {k}: {v}" + (f"    <- {origin}" if origin else ""))
        rules = []
        if cls.requires:
            rules.append("requires " + ", ".join(cls.requires))
        if cls.runs_after:
            rules.append("after " + ", ".join(cls.runs_after))
        if cls.forbids_after:
            rules.append("nothing later from " + ", ".join(cls.forbids_after))
        for rule in rules:
            typer.echo(f"        rule: {rule}")
    if r.target is not None:
        tcls = registry.get_target(r.target.name)
        typer.echo(f"target  {r.target.name}{'' if tcls.implemented else '  (NOT IMPLEMENTED)'}")
        for k, v in config_to_dict(r.target.config).items():
            typer.echo(f"        {k}: {v}")
    typer.echo("order rules: ok")


@app.command()
@_guard
def analyze(model: str = typer.Option(..., "--model", help="Model source"),
            recipe: Optional[str] = typer.Option(None, "--recipe", help="Apply the recipe's architectural changes"),
            frames: Optional[int] = typer.Option(None, "--frames"),
            height: Optional[int] = typer.Option(None, "--height"),
            width: Optional[int] = typer.Option(None, "--width"),
            set_: List[str] = typer.Option([], "--set"),
            as_json: bool = typer.Option(False, "--json")):
    """Cost model on the meta device: params, FLOPs per video, NFE — before and after a recipe."""
    from neoc.analysis import analyze_source

    _check_model_source(model, "--model")
    result = analyze_source(model, recipe=recipe, frames=frames, height=height, width=width, sets=tuple(set_))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from neoc.analysis import format_analysis

    typer.echo(format_analysis(result))


@app.command("eval")
@_guard
def eval_(model: str = typer.Option("builtin:pyramid-tiny", "--model"),
          random_init: bool = typer.Option(False, "--random-init", help="Same architecture, random weights"),
          prompts: Optional[str] = typer.Option(None, "--prompts", help="Prompt file (toy-world captions)"),
          num: int = typer.Option(8, "--num", help="Number of prompts to score"),
          seed: int = typer.Option(0, "--seed"),
          as_json: bool = typer.Option(False, "--json")):
    """Toy-world quality score (VBench-shaped): total, quality, semantic, dimensions."""
    from neoc.eval.pipeline_quality import evaluate_source

    _check_model_source(model, "--model")
    result = evaluate_source(model, random_init=random_init, prompts=prompts, num=num, seed=seed)
    typer.echo(json.dumps(result, indent=2) if as_json else
               f"total {result['total']:.4f}  quality {result['quality']:.4f}  semantic {result['semantic']:.4f}")


@app.command()
@_guard
def generate(model: str = typer.Option("builtin:pyramid-tiny", "--model"),
             prompt: str = typer.Option(..., "--prompt"),
             out: str = typer.Option(..., "--out", help="Output .mp4"),
             seed: int = typer.Option(0, "--seed"),
             scale: int = typer.Option(1, "--scale", min=1, max=16,
                                       help="Nearest-neighbour enlargement of the written mp4 (toy videos are 64x64)")):
    """Generate one video."""
    from neoc import sources
    from neoc.data.videos import write_mp4

    if not out.endswith(".mp4"):
        raise InputError(f"--out {out}: expected a .mp4 path")
    _check_model_source(model, "--model")
    pipe = sources.load_source(model)
    video = pipe.generate(prompt, seed=seed)
    if scale > 1:  # [1, 3, F, H, W]: enlarge H and W only
        video = video.repeat_interleave(scale, dim=3).repeat_interleave(scale, dim=4)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_mp4(video[0], out, fps=pipe.spec.fps)
    typer.echo(f"wrote {out} ({video.shape[2]} frames {video.shape[3]}x{video.shape[4]})")


@app.command()
def version():
    """Print the neoc version."""
    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
