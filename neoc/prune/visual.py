"""Automated visual impact of each block (the paper's manual "visual guidance", Fig. 8, automated as §3.3 suggests).

For every removable block: drop it alone, generate the same prompts with the same seeds as the full model, and
measure how far the videos move — PSNR and LPIPS (AlexNet, :mod:`neoc.eval.lpips`; skipped when its weights are
not there) of the frames against the full model's, and, when the toy-world instrument applies, the drop of the
quality score. A block whose removal barely changes the videos is a good one to prune.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from neoc.prune.surgery import without_blocks


@dataclass
class BlockImpact:
    block: int
    psnr_db: float                      # mean over videos of the frames' PSNR vs the full model (higher = less impact)
    lpips: float | None = None          # mean over videos and frames (higher = more impact)
    quality_total: float | None = None  # toy-world total of the videos without the block
    quality_drop: float | None = None   # full model's total - quality_total

    def to_dict(self) -> dict:
        return {"block": self.block, "psnr_db": self.psnr_db, "lpips": self.lpips,
                "quality_total": self.quality_total, "quality_drop": self.quality_drop}


@dataclass
class VisualImpact:
    blocks: list[BlockImpact]
    reference_quality: float | None = None
    videos: int = 0
    metrics: list[str] = field(default_factory=list)
    #: the first prompt's middle frame per model ("full" and each dropped block), for the frame grid artifact
    frames: dict[str, torch.Tensor] = field(default_factory=dict)

    def by_block(self) -> dict[int, BlockImpact]:
        return {b.block: b for b in self.blocks}

    def to_dict(self) -> dict:
        return {"blocks": [b.to_dict() for b in self.blocks], "reference_quality": self.reference_quality,
                "videos": self.videos, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, data: dict) -> "VisualImpact":
        return cls([BlockImpact(**b) for b in data["blocks"]], data.get("reference_quality"),
                   int(data.get("videos", 0)), list(data.get("metrics", [])))


def video_psnr(video: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of videos [B, 3, F, H, W] in [-1, 1] (peak-to-peak 2) against references -> [B]; capped at 100."""
    mse = (video.float() - reference.float()).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))).clamp(max=100.0)


def lpips_metric():
    """The shared AlexNet LPIPS, or None when :mod:`neoc.eval.lpips` or its weights are unavailable."""
    try:
        from neoc.eval import lpips
    except Exception:  # noqa: BLE001 - the module may be absent or broken in a partial checkout
        return None
    try:
        return lpips.shared_lpips("alex") if lpips.available("alex") else None
    except Exception:  # noqa: BLE001
        return None


@torch.no_grad()
def _generate(pipeline, prompts: Sequence[str], seed: int) -> torch.Tensor:
    return torch.cat([pipeline.generate(p, seed=seed + i).clamp(-1, 1) for i, p in enumerate(prompts)])


def _middle_frame(video: torch.Tensor) -> torch.Tensor:
    return video[0, :, video.shape[2] // 2].detach().cpu()


@torch.no_grad()
def visual_impact(pipeline, blocks: Sequence[int], prompts: Sequence[str], seed: int = 0,
                  targets: Sequence | None = None, use_lpips: bool = True,
                  progress: Callable[[Iterable], Iterable] | None = None) -> VisualImpact:
    """Drop each of ``blocks`` alone and compare its videos with the full model's (same prompts and seeds).

    ``targets``: the prompts' toy scenes when the toy-world quality score applies (else None: not scored).
    """
    denoiser = pipeline.component("denoiser")
    metric = lpips_metric() if use_lpips else None
    score = None
    if targets is not None:
        from neoc.eval.quality import score_videos

        score = lambda videos: float(score_videos(videos, list(targets))["total"])  # noqa: E731
    reference = _generate(pipeline, prompts, seed)
    reference_quality = score(reference) if score is not None else None
    frames = {"full": _middle_frame(reference)}
    results = []
    for block in (progress(list(blocks)) if progress is not None else blocks):
        with without_blocks(denoiser, [block]):
            videos = _generate(pipeline, prompts, seed)
        impact = BlockImpact(block=int(block), psnr_db=float(video_psnr(videos, reference).mean()))
        if metric is not None:
            from neoc.eval.lpips import video_lpips

            impact.lpips = float(video_lpips(metric, videos, reference).mean())
        if score is not None:
            impact.quality_total = score(videos)
            impact.quality_drop = reference_quality - impact.quality_total
        frames[f"drop {block}"] = _middle_frame(videos)
        results.append(impact)
    names = ["psnr_db"] + (["lpips"] if metric is not None else []) + (["quality_drop"] if score else [])
    out = VisualImpact(results, reference_quality, len(prompts), names, frames)
    for item in results:
        if not math.isfinite(item.psnr_db):
            item.psnr_db = 100.0
    return out
