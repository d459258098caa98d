"""Quality of a pipeline: generate videos for toy-world eval prompts and score them with the instrument.

``neoc eval`` and every pass that reports quality call :func:`evaluate_pipeline`, so "quality before/after"
always means the same prompts, seeds and instrument.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from neoc.errors import InputError, NeocError
from neoc.progress import progress


def eval_prompts(num: int, seed: int = 0, prompts_file: str | Path | None = None) -> list[tuple[str, object]]:
    """``[(prompt, target)]``: toy-world eval-split scenes (never trained on) or lines of a prompt file
    (free-text toy prompts, scored on the attributes they name)."""
    if prompts_file is not None:
        from neoc.data.prompts import read_prompts

        lines = read_prompts(prompts_file)[:num]
        return [(line, line) for line in lines]
    from neoc.data.toyworld import ToyWorldDataset

    data = ToyWorldDataset("eval", num, seed)
    out = []
    for i in range(num):
        scene, text = data.scene_and_caption(i)
        out.append((text, scene))
    return out


def quality_skip_reason(pipeline, num_videos: int) -> str | None:
    """Why a pass does not score toy-world quality for ``pipeline`` (None: it does)."""
    from neoc.eval.probe import probe_available

    if num_videos == 0:
        return "quality_videos is 0"
    if pipeline.spec.name != "pyramid-tiny":
        return f"the toy-world instrument scores pipelines derived from builtin:pyramid-tiny, not {pipeline.spec.name}"
    if "random init" in pipeline.source or "weights" not in pipeline.info:
        return "randomly initialised pipeline (no trained weights): quality would not mean anything"
    if not probe_available():
        return "quality probe weights missing"
    return None


@torch.no_grad()
def generate_videos(pipeline, prompts: list[str], seed: int = 0, quiet: bool = False) -> torch.Tensor:
    videos = []
    for i, prompt in enumerate(progress(prompts, desc="generate", quiet=quiet)):
        videos.append(pipeline.generate(prompt, seed=seed + i).clamp(-1, 1))
    return torch.cat(videos)


def evaluate_pipeline(pipeline, num: int = 8, seed: int = 0, prompts_file: str | Path | None = None,
                      quiet: bool = False, return_videos: bool = False) -> dict:
    from neoc.eval.probe import PROBE_WEIGHTS, probe_available
    from neoc.eval.quality import score_videos

    if not probe_available():
        raise NeocError(f"quality probe weights missing ({PROBE_WEIGHTS}); rebuild with "
                        "`python -m neoc.eval.train_probe`")
    items = eval_prompts(num, seed, prompts_file)
    if not items:
        raise InputError(f"{prompts_file}: no prompts to evaluate")
    start = time.perf_counter()
    videos = generate_videos(pipeline, [p for p, _ in items], seed, quiet)
    seconds = time.perf_counter() - start
    result = score_videos(videos, [t for _, t in items])
    result["num_videos"] = len(items)
    result["seconds_per_video"] = seconds / len(items)
    result["seed"] = seed
    if return_videos:
        result["_videos"] = videos
        result["_prompts"] = [p for p, _ in items]
    return result


def evaluate_source(model: str, random_init: bool = False, prompts: str | None = None, num: int = 8,
                    seed: int = 0) -> dict:
    from neoc import sources
    from neoc.eval.vbench_adapter import vbench_status

    if num < 1:
        raise InputError(f"--num must be >= 1, got {num}")
    pipeline = sources.load_source(model, random_init=random_init)
    result = evaluate_pipeline(pipeline, num=num, seed=seed, prompts_file=prompts)
    result["model"] = pipeline.source
    available, reason = vbench_status()
    result["vbench"] = {"available": available, "reason": reason}
    return result
