"""Latency / NFE / parameters after every pass of a run (the report's trajectory plot and table).

Each point is a pipeline the run already saved (``passes/NN-name/pipeline``): the baseline, then the output of
every pass that changed the pipeline. A skipped pass repeats the previous point. Seconds are one timed
generation (same prompt, same seed) per distinct pipeline, in this process, after the runner's warm-up.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from neoc.eval.cost import analyze_pipeline
from neoc.ir.runfolder import is_pipeline_folder, load_pipeline

log = logging.getLogger("neoc")

#: components that run when a video is generated (the VAE encoder only serves training passes)
GENERATION_ROLES = ("text_encoder", "clip_encoders", "context_embedder", "context_adapter", "first_frame",
                    "denoiser", "vae_decoder", "upsampler")


def generation_params(pipeline) -> int:
    return sum(n for role, n in pipeline.params().items() if role in GENERATION_ROLES)


@torch.no_grad()
def point(label: str, pipeline, prompt: str, seed: int, time_it: bool = True) -> dict:
    cost = analyze_pipeline(pipeline)
    flops = sum(c.get("flops_per_video") or 0.0 for c in cost["components"].values())
    seconds = None
    if time_it:
        start = time.perf_counter()
        pipeline.generate(prompt, seed=seed)
        seconds = time.perf_counter() - start
    return {"stage": label, "params": generation_params(pipeline), "nfe": cost["nfe"], "flops_per_video": flops,
            "seconds": seconds,
            "components": {role: n for role, n in pipeline.params().items() if role in GENERATION_ROLES}}


def measure_trajectory(run_dir: Path, records: list, baseline, prompt: str, seed: int = 0,
                       time_it: bool = True) -> list[dict]:
    points = [point("baseline", baseline, prompt, seed, time_it)]
    for index, record in enumerate(records):
        folder = Path(run_dir) / "passes" / f"{index:02d}-{record.name}" / "pipeline"
        if record.status != "done" or not is_pipeline_folder(folder):
            points.append({**points[-1], "stage": record.name, "skipped": True})
            continue
        try:
            pipe = load_pipeline(folder)
        except Exception as exc:  # a snapshot that cannot load is reported, not fatal to the report
            log.warning("trajectory: cannot load %s (%s)", folder, exc)
            points.append({**points[-1], "stage": record.name, "note": f"snapshot unreadable: {exc}"})
            continue
        points.append(point(record.name, pipe, prompt, seed, time_it))
        del pipe
    return points
