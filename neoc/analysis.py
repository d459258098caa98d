"""``neoc analyze``: the cost model at any scale on the meta device, before and after a recipe's
architectural changes (blocks removed, encoder/decoder replaced, schedule changed) — without training."""

from __future__ import annotations

import attrs

from neoc import registry, sources
from neoc.errors import InputError
from neoc.eval.cost import analyze_pipeline
from neoc.ir.pipeline import Pipeline
from neoc.recipe import load_recipe


def _resize(pipe: Pipeline, frames: int | None, height: int | None, width: int | None) -> Pipeline:
    changes = {k: v for k, v in (("frames", frames), ("height", height), ("width", width)) if v is not None}
    if not changes:
        return pipe
    try:
        spec = attrs.evolve(pipe.spec, **changes)
    except ValueError as exc:
        raise InputError(f"--frames/--height/--width: {exc}") from None
    return Pipeline(spec, pipe.schedule, dict(pipe.components), pipe.prompt_encoder, pipe.source, pipe.info)


def analyze_source(model: str, recipe: str | None = None, frames: int | None = None, height: int | None = None,
                   width: int | None = None, sets: tuple[str, ...] = ()) -> dict:
    parsed = load_recipe(recipe, model=model, overrides=sets, check_eval_paths=False) if recipe else None
    pipe = _resize(sources.load_source(model, device="meta"), frames, height, width)
    result = {"model": model, "frames": pipe.spec.frames, "height": pipe.spec.height, "width": pipe.spec.width,
              "before": analyze_pipeline(pipe)}
    if parsed is not None:
        applied = []
        for entry in parsed.passes:
            instance = registry.get_pass(entry.name)(entry.config)
            instance.analyze(pipe)
            applied.append(entry.name)
        result["recipe"] = parsed.path
        result["passes"] = applied
        result["after"] = analyze_pipeline(pipe)
    return result


def format_analysis(result: dict) -> str:
    lines = [f"{result['model']}: {result['frames']} frames {result['height']}x{result['width']}"]
    for phase in ("before", "after"):
        if phase not in result:
            continue
        block = result[phase]
        lines.append(f"{phase}: NFE {block['nfe']}, {block['flops_per_frame'] / 1e12:.2f} TFLOPs/frame")
        for name, c in block["components"].items():
            flops = c["flops_per_video"]
            lines.append(f"  {name:<17} {c['params']:>15,} params  "
                         f"{'-' if flops is None else f'{flops / 1e12:,.2f}'} TFLOPs/video")
    return "\n".join(lines)
