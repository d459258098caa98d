"""Generation latency, baseline vs compiled, measured the same way in ``neoc run`` and ``bench/latency.py``.

Both pipelines generate the same prompts with the same seeds on the same machine in the same process; each is
warmed up once, then the timed generations alternate (baseline, compiled, baseline, ...) so that a change in the
machine's load during the measurement hits both alike. The figure per pipeline is the median seconds per video.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def device_name() -> str:
    return (f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()})")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


@torch.no_grad()
def _time_one(pipeline, prompt: str, seed: int) -> float:
    start = time.perf_counter()
    pipeline.generate(prompt, seed=seed)
    return time.perf_counter() - start


def compare_latency(baseline, compiled, prompts: list[str], seed: int = 0, warmup: int = 1,
                    others: dict | None = None) -> dict:
    """``{"before_seconds", "after_seconds", "ratio", "device", ...}``: median seconds per video.

    ``others`` (name -> pipeline) are timed in the same alternation (e.g. the compiled pipeline in another
    runtime); each lands under ``result["others"][name]`` with its own ratio to the baseline.
    """
    if not prompts:
        raise ValueError("compare_latency needs at least one prompt")
    others = dict(others or {})
    load_start = load_average()
    pipelines = [baseline, compiled, *others.values()]
    for pipe in pipelines:
        for i in range(warmup):
            _time_one(pipe, prompts[i % len(prompts)], seed + i)
    runs: list[list[float]] = [[] for _ in pipelines]
    for i, prompt in enumerate(prompts):
        for pipe, times in zip(pipelines, runs):
            times.append(_time_one(pipe, prompt, seed + i))
    before, after = runs[0], runs[1]
    b, a = statistics.median(before), statistics.median(after)
    extra = {}
    for name, times in zip(others, runs[2:]):
        m = statistics.median(times)
        extra[name] = {"after_seconds": m, "ratio": b / m if m > 0 else None, "after_runs": times}
    return {"before_seconds": b, "after_seconds": a, "ratio": b / a if a > 0 else None,
            "device": device_name(), "method": "median seconds per video, same prompts and seeds, "
            f"{warmup} warm-up each, timed generations alternating baseline/compiled"
            + "".join(f"/{name}" for name in others),
            "before_runs": before, "after_runs": after, "prompts": len(prompts),
            "nfe_before": baseline.nfe(), "nfe_after": compiled.nfe(),
            "load_average": {"start": load_start, "end": load_average()}, **({"others": extra} if extra else {})}


def compare_host_latency(baseline, compiled, host, prompts: list[str], seed: int = 0) -> dict:
    """:func:`compare_latency` with ``host`` (the target's graphs run on this machine, e.g.
    :class:`neoc.targets.hexagon.host.HostPipeline`) as the compiled pipeline and the torch ``compiled`` timed
    alongside (``others.torch``); ``host`` adds the host's summary and how far its video of the first prompt is from
    the torch pipeline's (``video_max_abs_diff_vs_torch``)."""
    result = compare_latency(baseline, host, prompts, seed=seed, others={"torch": compiled})
    with torch.no_grad():
        diff = float((host.generate(prompts[0], seed) - compiled.generate(prompts[0], seed)).abs().max())
    result["host"] = {**host.summary(), "video_max_abs_diff_vs_torch": diff}
    return result
