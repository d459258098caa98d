"""``prune-blocks``: MMDiT block importance and two-stage finetune (Neodragon §3.3, Fig. 7).

``BI_k = 1 - E[cos(z_k, z_{k+1})]`` for visual and text tokens, plus an automated visual-impact probe (drop
each block alone); remove the least important blocks, then Stage 1 (flow-matching finetune) and Stage 2
(full-teacher feature distillation).
"""

from __future__ import annotations

from typing import Literal

import attrs

from neoc.config import in_range
from neoc.pass_api import Pass
from neoc.registry import register_pass


@attrs.frozen
class PruneBlocksConfig:
    keep: int = attrs.field(default=18, validator=in_range(1))
    policy: Literal["visual", "text", "average", "combined"] = "combined"
    calib_prompts: int = attrs.field(default=100, validator=in_range(1))
    samples_per_prompt: int = attrs.field(default=5, validator=in_range(1))
    stage1_steps: int = attrs.field(default=300, validator=in_range(0))
    stage1_lr: float = attrs.field(default=3e-5, validator=in_range(0.0))
    stage2_steps: int = attrs.field(default=300, validator=in_range(0))
    stage2_lr: float = attrs.field(default=3e-5, validator=in_range(0.0))
    mapping: Literal["simple", "next-block"] = "next-block"


@register_pass
class PruneBlocks(Pass):
    name = "prune-blocks"
    summary = "Score MMDiT blocks (visual/text BI + visual impact), drop the weakest, two-stage finetune"
    paper = "Neodragon §3.3"
    Config = PruneBlocksConfig
    implemented = False
