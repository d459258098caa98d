"""Run the real VBench (PyPI ``vbench``) when it and its weights are present; never fake a score.

Facts (component-facts.md §7): the wheel ships no weights; each dimension loads its model from the
VBench cache (``$VBENCH_CACHE_DIR``, default ``~/.cache/vbench``) when called with ``local=True``,
and otherwise downloads it (wget / git clone / torch.hub) — impossible without internet. With
non-VBench prompts only "custom_input" mode works, which supports the quality dimensions below.

``vbench_status(dimensions)`` says whether a run is possible and, if not, why (package missing,
weight files missing — listed by path). ``run_vbench(videos, dimensions)`` writes the videos as mp4,
runs VBench offline and aggregates like VBench's ``cal_final_score`` (min-max normalisation, then
weighted mean; dynamic_degree weight 0.5). Only the Quality group can be computed in custom mode,
so the result carries ``quality`` and the per-dimension scores, not a Total.

Not verified here: ``vbench`` is not installed on the dev machine (and pins transformers==4.33.2 /
numpy<2, which conflict with neoc's environment), so the run path below has not been executed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch

# Weight files (relative to the VBench cache) each custom-mode dimension needs (component-facts.md §7).
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "subject_consistency": ("dino_model/dino_vitbase16_pretrain.pth", "dino_model/facebookresearch_dino_main"),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
}
CUSTOM_MODE_DIMENSIONS = tuple(REQUIRED_FILES)
# cal_final_score normalisation (Min, Max); others 0..1. dynamic_degree weighs 0.5, the rest 1.
NORMALISATION = {"subject_consistency": (0.1462, 1.0), "background_consistency": (0.2615, 1.0),
                 "motion_smoothness": (0.706, 0.9975), "temporal_flickering": (0.6293, 1.0)}
DIMENSION_WEIGHT = {"dynamic_degree": 0.5}


def vbench_cache_dir() -> Path:
    return Path(os.environ.get("VBENCH_CACHE_DIR", Path.home() / ".cache" / "vbench"))


def vbench_status(dimensions: Sequence[str] = CUSTOM_MODE_DIMENSIONS) -> tuple[bool, str]:
    """(True, "ok") when VBench can run offline for ``dimensions``; else (False, the reason)."""
    unknown = [d for d in dimensions if d not in REQUIRED_FILES]
    if unknown:
        return False, (f"dimensions {unknown} are not computable in VBench custom_input mode "
                       f"(supported: {list(CUSTOM_MODE_DIMENSIONS)})")
    if importlib.util.find_spec("vbench") is None:
        return False, "vbench not installed (pip install vbench; it also needs detectron2, pyiqa, openai-clip)"
    cache = vbench_cache_dir()
    missing = [str(cache / rel) for d in dimensions for rel in REQUIRED_FILES[d] if not (cache / rel).exists()]
    if missing:
        return False, ("VBench weights missing (needs internet to fetch DINO/CLIP/MUSIQ/AMT/RAFT weights, "
                       "or place them in $VBENCH_CACHE_DIR): " + ", ".join(missing))
    return True, "ok"


def aggregate_quality(raw_scores: dict[str, float]) -> float:
    """VBench cal_final_score for the Quality group: normalise each raw score, weighted mean."""
    weighted, weights = 0.0, 0.0
    for name, raw in raw_scores.items():
        low, high = NORMALISATION.get(name, (0.0, 1.0))
        weight = DIMENSION_WEIGHT.get(name, 1.0)
        weighted += weight * (raw - low) / (high - low)
        weights += weight
    return weighted / weights


def run_vbench(videos: torch.Tensor, dimensions: Sequence[str] = CUSTOM_MODE_DIMENSIONS,
               device: str | None = None, fps: float = 24.0) -> dict:
    """Score videos [N, 3, F, H, W] in [-1, 1] with real VBench, or explain why not.

    Returns {"available": False, "reason": ...} or
    {"available": True, "quality": float, "dimensions": {name: normalised score}, "raw": {name: raw}}.
    """
    available, reason = vbench_status(dimensions)
    if not available:
        return {"available": False, "reason": reason}
    from vbench import VBench  # noqa: PLC0415 (optional dependency)

    from neoc.data.videos import write_mp4

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="neoc-vbench-") as work:
        video_dir = Path(work) / "videos"
        for index, video in enumerate(videos):
            write_mp4(video, video_dir / f"sample_{index:04d}.mp4", fps=fps)
        output_dir = Path(work) / "results"
        bench = VBench(device, None, str(output_dir))
        bench.evaluate(videos_path=str(video_dir), name="neoc", dimension_list=list(dimensions),
                       local=True, mode="custom_input")
        results = json.loads((output_dir / "neoc_eval_results.json").read_text())
    raw = {name: float(results[name][0]) for name in dimensions}
    normalised = {}
    for name, value in raw.items():
        low, high = NORMALISATION.get(name, (0.0, 1.0))
        normalised[name] = min(1.0, max(0.0, (value - low) / (high - low)))
    return {"available": True, "quality": aggregate_quality(raw), "dimensions": normalised, "raw": raw}
