"""Toy-world quality score, shaped like VBench (component-facts.md §7).

    Total = (4 * Quality + Semantic) / 5          (VBench's cal_final_score aggregation)
    Quality  = mean of the quality dimensions     (all weights 1; VBench weighs dynamic_degree 0.5,
                                                   which has no counterpart here)
    Semantic = mean of the semantic dimensions that the prompts name

Every video is scored against its prompt's toy scene. The ground truth for that scene is rendered
on the fly (``neoc.data.toyworld.render``), so quality dimensions compare the generated clip's
statistics with those of the true clip of the same prompt rather than with absolute thresholds.
Free-text prompts of toy form are parsed (``parse_caption``); attributes a prompt does not name are
filled by a seeded draw (``complete_scene``) only to render a reference, and are not scored.

Dimensions (each in [0, 1]; "excess" = max(0, generated - reference); pixel units 0..255):

Semantic (probe = ``neoc.eval.probe.ToyProbe``, VBench uses GRiT/UMT/Tag2Text here):
  object_class  mean probe probability of the prompt's shape.
  color         mean probe probability of the prompt's object colour.
  motion        mean probe probability of the prompt's motion.
  background    mean of probe probabilities of the background kind (solid/gradient/texture) and of
                the background colour, over the ones the prompt names.

Quality:
  temporal_flickering  VBench: (255 - MAE(frame t+1, frame t)) / 255 on static clips. Here clips move,
                       so: exp(-excess_MAE / 6.0). Calibration: i.i.d. pixel noise of std 0.05 (in [-1, 1]
                       units, ~6 grey levels) adds ~6.5 levels of MAE -> ~0.34; a per-frame brightness
                       jitter of 0.03 -> ~0.5; a 49x128x128 uniform-noise clip -> ~0.
  motion_smoothness    VBench: error of AMT frame interpolation. Here: linear interpolation at 64x64,
                       err = mean |f_t - (f_{t-1} + f_{t+1}) / 2|; exp(-excess_err / 3.0).
                       Calibration: pixel noise of std 0.05 -> ~0.37; shuffling the frames of a
                       translating shape -> 0.1-0.3 (slow grow/shrink clips: ~0.7).
  subject_consistency  VBench: mean over t of (cos(d_t, d_0) + cos(d_t, d_{t-1})) / 2 on DINO features.
                       Here the same formula on the probe's per-frame features (standardised by the
                       ground-truth mean/std stored with the probe); score =
                       exp(-max(0, raw_reference - raw_generated) / 0.25). Calibration: ground truth
                       raw ~0.9-1.0; swapping shape+colour, or removing the object, half-way through
                       drops raw by ~0.2 -> ~0.4. Known blind spot (shared with VBench's DINO version):
                       frames of pure noise look alike, so noise is "consistent"; other dims catch it.
  imaging_quality      VBench: MUSIQ. Here: two sharpness/noise statistics of the luma, mean |Laplacian|
                       (fine detail; blur lowers it, noise raises it) and mean |gradient| at half
                       resolution (edges); score = exp(-mean |ln((s_gen + .5) / (s_ref + .5))| / ln 4):
                       a 4x deviation in both statistics gives 1/e.
  fid_probe            Fréchet distance between the probe clip embeddings of the generated set and of
                       the ground-truth clips of the same prompts, in coordinates whitened by the
                       ground-truth eval covariance (so the reference distribution has unit variance
                       in each of its D = 64 directions); score = exp(-FD / D). With fewer than two
                       videos only the mean term is used.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from neoc.data.toyworld import (ATTRIBUTE_CLASSES, BACKGROUND_COLORS, COLORS, MOTIONS, NUM_FRAMES, SHAPES,
                                ToyScene, render_float, sample_scene)
from neoc.errors import InputError

QUALITY_DIMENSIONS = ("subject_consistency", "temporal_flickering", "motion_smoothness", "imaging_quality",
                      "fid_probe")
SEMANTIC_DIMENSIONS = ("object_class", "color", "motion", "background")

FLICKER_SCALE = 6.0         # grey levels of excess mean |frame difference| per e-fold
SMOOTHNESS_SCALE = 3.0      # grey levels of excess interpolation error per e-fold
IMAGING_SCALE = math.log(4.0)
CONSISTENCY_SCALE = 0.25    # deficit in the VBench consistency formula (a cosine mean) per e-fold
SEMANTIC_FIELDS = ("shape", "color", "motion", "background", "background_color")

# --------------------------------------------------------------------------------------------------
# Captions -> (partial) scenes
# --------------------------------------------------------------------------------------------------

_SHAPE_PATTERNS = {
    "circle": r"circles?|discs?|disks?|round dots?|dots?|balls?",
    "square": r"squares?|box(?:es)?|blocks?|cubes?",
    "triangle": r"triangles?|triangular",
    "star": r"stars?|five-pointed",
}
_MOTION_PATTERNS = {
    "left": r"left|leftwards?",
    "right": r"right|rightwards?",
    "up": r"up|upwards?|rises|rising|rise|climbs?|climbing|ascends?|ascending",
    "down": r"down|downwards?|sinks?|sinking|falls?|falling|descends?|descending",
    "grow": r"grows?|growing|larger|bigger|expands?|expanding|swells?|swelling|enlarges?",
    "shrink": r"shrinks?|shrinking|smaller|contracts?|contracting|dwindles?|dwindling",
    "rotate": r"rotates?|rotating|spins?|spinning|turns?|turning|clockwise",
    "still": r"still|motionless|in place|static|stationary|does not move|doesn't move",
}
_BACKGROUND_PATTERNS = {
    "gradient": r"gradients?",
    "texture": r"textured?|photographic",
    "solid": r"plain|solid|flat|uniform",
}


def _find(patterns: Mapping[str, str], text: str) -> list[str]:
    """Keys whose pattern occurs as whole words, in order of first occurrence."""
    hits = []
    for key, pattern in patterns.items():
        match = re.search(rf"\b(?:{pattern})\b", text)
        if match:
            hits.append((match.start(), key))
    return [key for _, key in sorted(hits)]


def parse_caption(text: str) -> dict[str, str]:
    """Toy attributes named in a free-text prompt: a partial scene {field: value}.

    Fields: shape, color, motion, background, background_color. A field is left out when the text
    names none or conflicting values (e.g. "left" and "up"). Object vs background colour: colour
    names of the two palettes are disjoint (toyworld.COLORS vs BACKGROUND_COLORS); a ``COLORS`` name
    directly before "gradient"/"background"/"texture"/"backdrop" is not taken as the object colour.
    """
    lowered = " ".join(text.lower().replace("-", " - ").split()).replace(" - ", "-")
    partial: dict[str, str] = {}
    shapes = _find(_SHAPE_PATTERNS, lowered)
    if len(shapes) == 1:
        partial["shape"] = shapes[0]
    background_words = r"(?:gradient|background|backdrop|texture|textured)"
    object_colours = [c for c in COLORS
                      if re.search(rf"\b{c}\b(?!\s+(?:color\s+|colour\s+)?{background_words})", lowered)]
    if len(object_colours) == 1:
        partial["color"] = object_colours[0]
    motions = _find(_MOTION_PATTERNS, lowered)
    motions = [m for m in motions if not (m == "still" and len(motions) > 1)]  # "...still..." + a verb
    if len(motions) == 1:
        partial["motion"] = motions[0]
    backgrounds = _find(_BACKGROUND_PATTERNS, lowered)
    backgrounds = [b for b in backgrounds if not (b == "solid" and len(backgrounds) > 1)]
    if len(backgrounds) == 1:
        partial["background"] = backgrounds[0]
    elif not backgrounds and re.search(r"\b(?:background|backdrop)\b", lowered):
        partial["background"] = "solid"
    background_colours = [c for c in BACKGROUND_COLORS if re.search(rf"\b{c}\b", lowered)]
    if len(background_colours) == 1:
        partial["background_color"] = background_colours[0]
    return partial


def complete_scene(partial: Mapping[str, Any], seed_text: str = "") -> ToyScene:
    """A full scene that agrees with ``partial``; missing fields drawn with a seed from ``seed_text``."""
    seed = int(hashlib.sha1((seed_text or repr(sorted(partial.items()))).encode()).hexdigest()[:8], 16)
    return sample_scene(np.random.default_rng(seed), **dict(partial))


def _as_target(item: ToyScene | str | Mapping[str, Any], index: int) -> tuple[ToyScene, dict[str, str]]:
    """(reference scene to render, attributes to score) for one prompt item."""
    if isinstance(item, ToyScene):
        return item, {field: getattr(item, field) for field in SEMANTIC_FIELDS}
    if isinstance(item, str):
        partial = parse_caption(item)
        return complete_scene(partial, seed_text=item), partial
    if isinstance(item, Mapping):
        partial = {k: v for k, v in item.items() if k in SEMANTIC_FIELDS}
        try:
            return complete_scene(item, seed_text=repr(sorted(item.items()))), partial
        except (ValueError, TypeError) as err:
            raise InputError(f"scenes[{index}]: not a valid toy scene ({err})") from err
    raise InputError(f"scenes[{index}]: expected a ToyScene, a prompt string or a dict, got {type(item).__name__}")


# --------------------------------------------------------------------------------------------------
# Pixel statistics
# --------------------------------------------------------------------------------------------------

def _to_255(video: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1] -> float 0..255."""
    return (video.float().clamp(-1, 1) + 1) * 127.5


def frame_difference_mae(video: torch.Tensor) -> float:
    """Mean |f_{t+1} - f_t| over pixels, channels and t, in grey levels."""
    pixels = _to_255(video)
    return float((pixels[:, 1:] - pixels[:, :-1]).abs().mean())


def interpolation_error(video: torch.Tensor) -> float:
    """Mean |f_t - (f_{t-1} + f_{t+1}) / 2| at 64x64 (area-resized), in grey levels."""
    pixels = _to_255(video)
    channels, frames, height, width = pixels.shape
    if height > 64:
        pixels = F.interpolate(pixels.transpose(0, 1), size=(64, 64), mode="area").transpose(0, 1)
    middle = (pixels[:, :-2] + pixels[:, 2:]) / 2
    return float((pixels[:, 1:-1] - middle).abs().mean())


def sharpness_statistics(video: torch.Tensor) -> tuple[float, float]:
    """(mean |Laplacian| of luma at full size, mean |gradient| of luma at half size), grey levels."""
    luma = _to_255(video).mean(0)  # [F, H, W]
    laplacian = (4 * luma[:, 1:-1, 1:-1] - luma[:, :-2, 1:-1] - luma[:, 2:, 1:-1]
                 - luma[:, 1:-1, :-2] - luma[:, 1:-1, 2:])
    half = F.avg_pool2d(luma[:, None], 2)[:, 0]
    gradient = torch.sqrt((half[:, 1:, :-1] - half[:, :-1, :-1]) ** 2 + (half[:, :-1, 1:] - half[:, :-1, :-1]) ** 2)
    return float(laplacian.abs().mean()), float(gradient.mean())


def consistency_raw(frame_features: torch.Tensor) -> float:
    """VBench subject-consistency formula on [T, D] standardised features."""
    normed = F.normalize(frame_features, dim=-1)
    to_first = (normed[1:] * normed[:1]).sum(-1)
    to_previous = (normed[1:] * normed[:-1]).sum(-1)
    return float(((to_first + to_previous) / 2).mean())


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two [N, D] feature sets (covariances dropped if N < 2).

    tr((S_a S_b)^1/2) is computed as the sum of sqrt(eigenvalues) of S_a^1/2 S_b S_a^1/2 (symmetric PSD).
    """
    a, b = features_a.double(), features_b.double()
    mean_term = float(((a.mean(0) - b.mean(0)) ** 2).sum())
    if a.shape[0] < 2 or b.shape[0] < 2:
        return mean_term
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    eigval_a, eigvec_a = torch.linalg.eigh(cov_a)
    sqrt_a = eigvec_a @ torch.diag(eigval_a.clamp_min(0).sqrt()) @ eigvec_a.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = float(torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum())
    return max(0.0, mean_term + float(torch.trace(cov_a) + torch.trace(cov_b)) - 2 * trace_sqrt)


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------

def _whitener(probe) -> torch.Tensor:
    """Matrix W with W^T Cov_ref W = I (ground-truth eval covariance stored with the probe)."""
    eigval, eigvec = torch.linalg.eigh(probe.reference_cov.double())
    return eigvec @ torch.diag(eigval.clamp_min(1e-6).rsqrt())


@torch.no_grad()
def _probe_outputs(probe, videos: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
    outputs: dict[str, list[torch.Tensor]] = {}
    for start in range(0, videos.shape[0], batch_size):
        batch = probe(videos[start:start + batch_size].float())
        for key, value in batch.items():
            outputs.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in outputs.items()}


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


class QualityScorer:
    """Scores generated toy-world videos against their prompts (see module docstring)."""

    def __init__(self, probe=None):
        if probe is None:
            from neoc.eval.probe import load_probe
            probe = load_probe()
        self.probe = probe.eval()

    def score(self, videos: torch.Tensor, scenes: Sequence[ToyScene | str | Mapping[str, Any]]) -> dict:
        videos = torch.as_tensor(videos)
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise InputError(f"videos: expected [N, 3, F, H, W] in [-1, 1], got {tuple(videos.shape)}")
        if videos.shape[2] < 3:
            raise InputError(f"videos: need at least 3 frames to score temporal dimensions, got {videos.shape[2]}")
        if len(scenes) != videos.shape[0]:
            raise InputError(f"scenes: {len(scenes)} prompts/scenes for {videos.shape[0]} videos")
        targets = [_as_target(item, i) for i, item in enumerate(scenes)]
        if not any(attributes for _, attributes in targets):
            raise InputError("prompts name no toy-world attribute (shape, colour, motion, background); "
                             "toy-world scoring needs toy prompts")
        height, width = videos.shape[-2:]
        references = torch.stack([render_float(scene, NUM_FRAMES, 128) for scene, _ in targets])
        if videos.shape[2] != NUM_FRAMES or (height, width) != (128, 128):
            references = _match_layout(references, videos.shape[2], height, width)

        generated_out = _probe_outputs(self.probe, videos)
        reference_out = _probe_outputs(self.probe, references)

        semantic = self._semantic(generated_out, [attrs for _, attrs in targets])
        quality = self._quality(videos, references, generated_out, reference_out)
        quality_score = _mean(list(quality.values()))
        semantic_score = _mean(list(semantic.values()))
        total = (4 * quality_score + semantic_score) / 5
        dimensions = {**quality, **semantic}
        return {"total": _unit(total), "quality": _unit(quality_score), "semantic": _unit(semantic_score),
                "dimensions": {name: _unit(value) for name, value in dimensions.items()}}

    def _semantic(self, outputs: dict[str, torch.Tensor], attributes: list[dict[str, str]]) -> dict[str, float]:
        probabilities = {head: outputs[head].float().softmax(-1) for head in ATTRIBUTE_CLASSES}
        per_dimension: dict[str, list[float]] = {name: [] for name in SEMANTIC_DIMENSIONS}
        for index, named in enumerate(attributes):
            def prob(field: str) -> float:
                return float(probabilities[field][index, list(ATTRIBUTE_CLASSES[field]).index(named[field])])

            if "shape" in named:
                per_dimension["object_class"].append(prob("shape"))
            if "color" in named:
                per_dimension["color"].append(prob("color"))
            if "motion" in named:
                per_dimension["motion"].append(prob("motion"))
            background_probs = [prob(f) for f in ("background", "background_color") if f in named]
            if background_probs:
                per_dimension["background"].append(_mean(background_probs))
        return {name: _mean(values) for name, values in per_dimension.items() if values}

    def _quality(self, videos, references, generated_out, reference_out) -> dict[str, float]:
        flicker, smoothness, consistency, imaging = [], [], [], []
        feature_mean = self.probe.frame_feature_mean
        feature_std = self.probe.frame_feature_std
        for index in range(videos.shape[0]):
            video, reference = videos[index], references[index]
            excess = max(0.0, frame_difference_mae(video) - frame_difference_mae(reference))
            flicker.append(math.exp(-excess / FLICKER_SCALE))
            excess = max(0.0, interpolation_error(video) - interpolation_error(reference))
            smoothness.append(math.exp(-excess / SMOOTHNESS_SCALE))
            gen_features = (generated_out["frame_features"][index] - feature_mean) / feature_std
            ref_features = (reference_out["frame_features"][index] - feature_mean) / feature_std
            raw_generated, raw_reference = consistency_raw(gen_features), consistency_raw(ref_features)
            consistency.append(math.exp(-max(0.0, raw_reference - raw_generated) / CONSISTENCY_SCALE))
            gen_stats, ref_stats = sharpness_statistics(video), sharpness_statistics(reference)
            deviation = _mean([abs(math.log((g + 0.5) / (r + 0.5))) for g, r in zip(gen_stats, ref_stats)])
            imaging.append(math.exp(-deviation / IMAGING_SCALE))
        whitener = _whitener(self.probe)
        centre = self.probe.reference_mean.double()
        gen_white = (generated_out["embedding"].double() - centre) @ whitener
        ref_white = (reference_out["embedding"].double() - centre) @ whitener
        distance = frechet_distance(gen_white, ref_white)
        return {
            "subject_consistency": _mean(consistency),
            "temporal_flickering": _mean(flicker),
            "motion_smoothness": _mean(smoothness),
            "imaging_quality": _mean(imaging),
            "fid_probe": math.exp(-distance / whitener.shape[0]),
        }


def _match_layout(references: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """Resample ground-truth clips [N, 3, 49, 128, 128] to the generated videos' frame count and size."""
    frame_ids = torch.linspace(0, references.shape[2] - 1, frames).round().long()
    picked = references[:, :, frame_ids]
    batch = picked.shape[0]
    flat = picked.transpose(1, 2).reshape(batch * frames, 3, 128, 128)
    flat = F.interpolate(flat, size=(height, width), mode="area" if height <= 128 else "bilinear")
    return flat.reshape(batch, frames, 3, height, width).transpose(1, 2)


def _unit(value: float) -> float:
    return float(min(1.0, max(0.0, value)))


def score_videos(videos: torch.Tensor, scenes: Sequence[ToyScene | str | Mapping[str, Any]], probe=None) -> dict:
    """Score generated videos [N, 3, F, H, W] in [-1, 1] against their scenes or toy prompts.

    Returns {"total", "quality", "semantic", "dimensions": {name: score}}, every value in [0, 1].
    Semantic dimensions that no prompt names are left out of ``dimensions`` and of the Semantic mean.
    """
    return QualityScorer(probe).score(videos, scenes)
