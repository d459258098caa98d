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


def remove_blocks(denoiser, removed: list[int]) -> None:
    """Drop MMDiT blocks in place. The last block (``context_pre_only``) is never removed: its text stream
    output is discarded, so it has no text score and the model needs it to stay the final block."""
    from torch import nn

    last = len(denoiser.transformer_blocks) - 1
    if last in removed:
        raise ValueError(f"block {last} is the context_pre_only final block and cannot be removed")
    keep = [b for i, b in enumerate(denoiser.transformer_blocks) if i not in set(removed)]
    denoiser.transformer_blocks = nn.ModuleList(keep)
    denoiser.config["num_layers"] = len(keep)


def analysis_blocks(num_layers: int, keep: int) -> list[int]:
    """Blocks removed by ``neoc analyze`` (no importance scores without running): the ones just before the
    final block. Every non-final block has the same size, so counts do not depend on this choice."""
    drop = num_layers - keep
    return list(range(num_layers - 1 - drop, num_layers - 1))


@register_pass
class PruneBlocks(Pass):
    name = "prune-blocks"
    summary = "Score MMDiT blocks (visual/text BI + visual impact), drop the weakest, two-stage finetune"
    paper = "Neodragon §3.3"
    Config = PruneBlocksConfig
    implemented = False

    def analyze(self, pipeline) -> None:
        from neoc.errors import InputError

        denoiser = pipeline.component("denoiser")
        n = len(denoiser.transformer_blocks)
        if not 1 <= self.config.keep <= n:
            raise InputError(f"prune-blocks: keep={self.config.keep} but the denoiser has {n} blocks")
        remove_blocks(denoiser, analysis_blocks(n, self.config.keep))
        pipeline.replace_component("denoiser", denoiser)
