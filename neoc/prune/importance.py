"""Block importance of an MMDiT, for visual and text tokens separately (Neodragon §3.3, eqs. 14-16, Fig. 7)::

    z_{k+1}, t_{k+1} = D_k(z_k, t_k, c)
    BI_k^v = 1 - E[cos(z_k, z_{k+1})]        BI_k^t = 1 - E[cos(t_k, t_{k+1})]

measured with forward hooks on every block while the pipeline generates calibration prompts: every denoising
step of every stage and latent frame, both CFG passes. The expectation is over denoiser calls and tokens: each
call contributes the token-mean cosine of every batch row (visual: all video tokens, history included; text: the
valid T5 tokens, padding excluded). CFG calls carry rows ``[negative, positive]`` (the pipeline's layout), a call
without CFG one positive row; scores are kept per branch (Fig. 7's blue/orange text curves) and ``text`` /
``visual`` average the two branches. The last block is ``context_pre_only``: its text output is discarded, so it
has no text score (``None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

BRANCHES = ("negative", "positive")


@dataclass
class BlockImportance:
    """Scores per block (index = original block id). ``text[-1]`` is None (the final block has no text output)."""

    visual: list[float]
    text: list[float | None]
    visual_by_branch: dict[str, list[float]] = field(default_factory=dict)
    text_by_branch: dict[str, list[float | None]] = field(default_factory=dict)
    calls: int = 0                 # denoiser calls probed
    videos: int = 0                # videos generated

    @property
    def num_blocks(self) -> int:
        return len(self.visual)

    def average(self, index: int) -> float:
        """(BI^v + BI^t) / 2, or BI^v where there is no text score."""
        text = self.text[index]
        return self.visual[index] if text is None else 0.5 * (self.visual[index] + text)

    def rows(self) -> list[dict]:
        """CONTRACT ``importance``: ``[{"block", "visual", "text"}]`` plus the per-branch text scores."""
        out = []
        for k in range(self.num_blocks):
            row = {"block": k, "visual": self.visual[k], "text": self.text[k]}
            for branch, values in self.text_by_branch.items():
                row[f"text_{branch}"] = values[k]
            out.append(row)
        return out

    def to_dict(self) -> dict:
        return {"visual": self.visual, "text": self.text, "visual_by_branch": self.visual_by_branch,
                "text_by_branch": self.text_by_branch, "calls": self.calls, "videos": self.videos}

    @classmethod
    def from_dict(cls, data: dict) -> "BlockImportance":
        return cls(list(data["visual"]), list(data["text"]), dict(data.get("visual_by_branch", {})),
                   dict(data.get("text_by_branch", {})), int(data.get("calls", 0)), int(data.get("videos", 0)))


def token_cosine(before: torch.Tensor, after: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of cos(before, after) per batch row: [B, L, D] x2 (+ optional [B, L] mask) -> [B]."""
    cos = F.cosine_similarity(before.float(), after.float(), dim=-1, eps=1e-8)  # [B, L]
    if mask is None:
        return cos.mean(dim=1)
    weight = mask.to(cos.dtype)
    return (cos * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


class _Accumulator:
    def __init__(self, count: int):
        self.sums = {b: torch.zeros(count, dtype=torch.float64) for b in BRANCHES}
        self.counts = {b: torch.zeros(count, dtype=torch.float64) for b in BRANCHES}

    def add(self, block: int, per_row: torch.Tensor) -> None:
        branches = BRANCHES if per_row.shape[0] == 2 else ("positive",) * per_row.shape[0]
        for branch, value in zip(branches, per_row.detach().double().cpu().tolist()):
            self.sums[branch][block] += value
            self.counts[branch][block] += 1

    def scores(self, branch: str | None = None) -> list[float | None]:
        """1 - mean cosine per block (None where nothing was recorded), one branch or both pooled."""
        if branch is None:
            sums = sum(self.sums.values())
            counts = sum(self.counts.values())
        else:
            sums, counts = self.sums[branch], self.counts[branch]
        return [None if c == 0 else float(1.0 - s / c) for s, c in zip(sums.tolist(), counts.tolist())]

    def branches(self) -> list[str]:
        return [b for b in BRANCHES if float(self.counts[b].sum()) > 0]


class BlockProbe:
    """Forward hooks on every block of an MMDiT (and a pre-hook on the denoiser for the T5 padding mask).

    ``with BlockProbe(denoiser) as probe: ...generate...``; then :meth:`result`. Blocks are called as
    ``block(image, text, temb, mask, rope) -> (text_out | None, image_out)``.
    """

    def __init__(self, denoiser: nn.Module):
        if not hasattr(denoiser, "transformer_blocks"):
            raise TypeError(f"{type(denoiser).__name__} has no transformer_blocks (not an MMDiT)")
        self.denoiser = denoiser
        self.count = len(denoiser.transformer_blocks)
        self.visual = _Accumulator(self.count)
        self.text = _Accumulator(self.count)
        self.calls = 0
        self._mask: torch.Tensor | None = None
        self._handles: list = []

    def _pre_denoiser(self, _module, args, kwargs):
        self.calls += 1
        mask = kwargs.get("encoder_attention_mask", args[2] if len(args) > 2 else None)
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _hook(self, index: int):
        def hook(_module, args, kwargs, output):
            image_in = kwargs.get("image", args[0] if args else None)
            text_in = kwargs.get("text", args[1] if len(args) > 1 else None)
            text_out, image_out = output
            self.visual.add(index, token_cosine(image_in, image_out))
            if text_out is not None and text_in is not None:
                mask = self._mask
                if mask is not None and mask.shape != text_in.shape[:2]:
                    mask = None  # a multi-stage call lays rows out differently: pool every token
                self.text.add(index, token_cosine(text_in, text_out, mask))
        return hook

    def __enter__(self) -> "BlockProbe":
        self._handles.append(self.denoiser.register_forward_pre_hook(self._pre_denoiser, with_kwargs=True))
        for index, block in enumerate(self.denoiser.transformer_blocks):
            self._handles.append(block.register_forward_hook(self._hook(index), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def result(self, videos: int = 0) -> BlockImportance:
        visual = [v if v is not None else float("nan") for v in self.visual.scores()]
        text = self.text.scores()
        text[-1] = None  # the final block's text stream is discarded
        return BlockImportance(
            visual=visual, text=text,
            visual_by_branch={b: self.visual.scores(b) for b in self.visual.branches()},
            text_by_branch={b: self.text.scores(b)[:-1] + [None] for b in self.text.branches()},
            calls=self.calls, videos=videos)


@torch.no_grad()
def block_importance(pipeline, prompts: Sequence[str], samples_per_prompt: int = 1, seed: int = 0,
                     progress: Callable[[Iterable], Iterable] | None = None) -> BlockImportance:
    """Generate every prompt ``samples_per_prompt`` times (seeds ``seed + i * samples + j``) with the block
    probe attached to the pipeline's denoiser."""
    denoiser = pipeline.component("denoiser")
    jobs = [(p, seed + i * samples_per_prompt + j) for i, p in enumerate(prompts) for j in range(samples_per_prompt)]
    with BlockProbe(denoiser) as probe:
        for prompt, sample_seed in (progress(jobs) if progress is not None else jobs):
            pipeline.generate(prompt, seed=sample_seed)
    return probe.result(videos=len(jobs))
