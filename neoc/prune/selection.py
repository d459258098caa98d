"""Which blocks to remove: ``keep`` blocks stay, the rest are the least important under a ``policy``.

Scores are "importance" (higher = keep), over the removable blocks only (never the final block):

* ``visual``   BI^v (visual-token block importance)
* ``text``     BI^t (text-token block importance, both CFG branches)
* ``average``  (BI^v + BI^t) / 2 — Fig. 9's "average of the two scores"
* ``impact``   the automated visual impact alone: the mean of the min-max normalised LPIPS, PSNR deficit and
               quality drop of dropping the block (whichever were measured)
* ``combined`` the paper's choice, automated: ``(1 - w) * minmax(average) + w * impact`` with
               ``w = visual_weight`` — block importance *and* visual impact (Fig. 8 + Fig. 9)

The lowest-scoring blocks go; ties go to the later block (deterministic).
"""

from __future__ import annotations

from typing import Sequence

from neoc.prune.importance import BlockImportance
from neoc.prune.surgery import removable_blocks
from neoc.prune.visual import VisualImpact

POLICIES = ("visual", "text", "average", "combined", "impact")
NEEDS_IMPACT = ("combined", "impact")


def minmax(values: dict[int, float]) -> dict[int, float]:
    """Rescale to [0, 1] (all 0.5 when every value is the same)."""
    if not values:
        return {}
    low, high = min(values.values()), max(values.values())
    if high - low <= 1e-12:
        return {k: 0.5 for k in values}
    return {k: (v - low) / (high - low) for k, v in values.items()}


def impact_scores(impact: VisualImpact, candidates: Sequence[int]) -> dict[int, float]:
    """Per block, the mean of the min-max normalised impact measures (higher = removing it changes more)."""
    by_block = impact.by_block()
    missing = [k for k in candidates if k not in by_block]
    if missing:
        raise ValueError(f"no visual impact measured for block(s) {missing}")
    parts = [minmax({k: -by_block[k].psnr_db for k in candidates})]
    if all(by_block[k].lpips is not None for k in candidates):
        parts.append(minmax({k: by_block[k].lpips for k in candidates}))
    if all(by_block[k].quality_drop is not None for k in candidates):
        parts.append(minmax({k: by_block[k].quality_drop for k in candidates}))
    return {k: sum(p[k] for p in parts) / len(parts) for k in candidates}


def block_scores(importance: BlockImportance, policy: str, impact: VisualImpact | None = None,
                 visual_weight: float = 0.5) -> dict[int, float]:
    """Importance of each removable block under ``policy`` (higher = more important)."""
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r}: expected one of {', '.join(POLICIES)}")
    candidates = removable_blocks(importance.num_blocks)
    if policy in NEEDS_IMPACT and impact is None:
        raise ValueError(f"policy {policy!r} needs the visual impact of every block")
    if policy == "visual":
        return {k: importance.visual[k] for k in candidates}
    if policy == "text":
        return {k: importance.text[k] for k in candidates}
    average = {k: importance.average(k) for k in candidates}
    if policy == "average":
        return average
    visual = impact_scores(impact, candidates)
    if policy == "impact":
        return visual
    bi = minmax(average)
    return {k: (1.0 - visual_weight) * bi[k] + visual_weight * visual[k] for k in candidates}


def select_removed(scores: dict[int, float], num_blocks: int, keep: int) -> list[int]:
    """The ``num_blocks - keep`` lowest-scoring blocks (sorted), from the removable ones."""
    drop = num_blocks - keep
    if not 1 <= keep <= num_blocks:
        raise ValueError(f"keep={keep} but the denoiser has {num_blocks} blocks")
    if drop > len(scores):
        raise ValueError(f"keep={keep}: only {len(scores)} of {num_blocks} blocks are removable (never the last)")
    ranked = sorted(scores, key=lambda k: (scores[k], -k))
    return sorted(ranked[:drop])


def choose_blocks(importance: BlockImportance, keep: int, policy: str, impact: VisualImpact | None = None,
                  visual_weight: float = 0.5) -> tuple[list[int], dict[int, float]]:
    scores = block_scores(importance, policy, impact, visual_weight)
    return select_removed(scores, importance.num_blocks, keep), scores
