"""``rope-rank-reduction``: the temporal RoPE's 6D tensors rewritten as <=4D ops (Neodragon §4.1)."""

from __future__ import annotations

import attrs

from neoc.config import in_range
from neoc.pass_api import Pass
from neoc.passes.static_shape import TRAINING
from neoc.registry import register_pass


@attrs.frozen
class RopeRankReductionConfig:
    max_rank: int = attrs.field(default=4, validator=in_range(2, 5))
    tolerance: float = 1e-4


@register_pass
class RopeRankReduction(Pass):
    name = "rope-rank-reduction"
    summary = "Rewrite the 6D temporal-RoPE tensors into <=4D ops (fold sin/cos and broadcast dims)"
    paper = "Neodragon §4.1"
    Config = RopeRankReductionConfig
    implemented = False
    semantics_preserving = True
    forbids_after = TRAINING
