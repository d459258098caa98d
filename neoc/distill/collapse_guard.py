"""Collapse guard for step distillation: stop the run with a clear message instead of writing a broken student.

DMD-style distillation fails in recognisable ways (the FastVideo / DMD2 issue trackers): NaNs, mode collapse to
flat frames, and colour saturation. The guard compares videos the student generates (through the pipeline with
the student schedule) with reference videos of the data (decoded training latents):

* **non-finite**: any NaN / inf in the video;
* **frame variance**: the mean per-frame spatial pixel variance falls below ``min_variance_ratio`` x the
  reference's (frames collapsed towards a constant colour);
* **colour histogram**: the L1 distance between the per-channel colour histograms (``bins`` bins over [-1, 1],
  pooled over the videos) of student and reference exceeds ``max_histogram_l1`` (0 = identical, 2 = disjoint;
  saturation pushes mass into the extreme bins).

:class:`CollapseError` is a :class:`neoc.errors.CheckFailed`, so a pass that hits it fails with its message and
the run folder gets no student.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neoc.errors import CheckFailed


class CollapseError(CheckFailed):
    """The student collapsed (NaN, flat frames or colour drift)."""


def frame_variance(video: torch.Tensor) -> float:
    """Mean over videos and frames of the spatial pixel variance (channels pooled); video [B, 3, F, H, W]."""
    v = video.float()
    return float(v.flatten(3).var(dim=3).mean())


def colour_histogram(video: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """Per-channel normalised histograms [3, bins] of pixels in [-1, 1] (clamped), pooled over the batch."""
    v = video.float().clamp(-1, 1).transpose(0, 1).reshape(3, -1)
    hist = torch.stack([torch.histc(c, bins=bins, min=-1.0, max=1.0) for c in v])
    return hist / hist.sum(dim=1, keepdim=True).clamp_min(1.0)


def histogram_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over channels of the L1 distance between two normalised histograms (0..2)."""
    return float((a - b).abs().sum(dim=1).mean())


@dataclass
class GuardReport:
    step: int
    frame_variance: float
    reference_variance: float
    histogram_l1: float

    def as_dict(self) -> dict:
        return {"step": self.step, "frame_variance": self.frame_variance,
                "reference_variance": self.reference_variance, "histogram_l1": self.histogram_l1}


class CollapseGuard:
    def __init__(self, reference: torch.Tensor, min_variance_ratio: float = 0.1, max_histogram_l1: float = 1.5,
                 bins: int = 16):
        if not torch.isfinite(reference).all():
            raise ValueError("collapse guard: the reference videos are not finite")
        self.reference_variance = frame_variance(reference)
        self.reference_histogram = colour_histogram(reference, bins)
        self.min_variance_ratio = float(min_variance_ratio)
        self.max_histogram_l1 = float(max_histogram_l1)
        self.bins = bins
        self.reports: list[GuardReport] = []

    def check(self, video: torch.Tensor, step: int, what: str = "student") -> GuardReport:
        """Raise :class:`CollapseError` when ``video`` [B, 3, F, H, W] shows a collapse; else record stats."""
        where = f"distill-steps: the {what} collapsed at training step {step}"
        if not torch.isfinite(video).all():
            bad = int((~torch.isfinite(video)).sum())
            raise CollapseError(f"{where}: {bad} non-finite (NaN/inf) pixels in its videos; stopping without "
                                "writing it (lower lr / fake_lr, or raise fake_updates_per_student)")
        variance = frame_variance(video)
        distance = histogram_l1(colour_histogram(video, self.bins), self.reference_histogram)
        report = GuardReport(step, variance, self.reference_variance, distance)
        self.reports.append(report)
        if variance < self.min_variance_ratio * self.reference_variance:
            raise CollapseError(
                f"{where}: frame variance {variance:.3g} < {self.min_variance_ratio:g} x the data's "
                f"{self.reference_variance:.3g} (frames collapsed towards a flat colour); stopping without writing it")
        if distance > self.max_histogram_l1:
            raise CollapseError(
                f"{where}: colour histogram L1 distance to the data {distance:.3f} > {self.max_histogram_l1:g} "
                "(colour saturation / drift); stopping without writing it")
        return report
