"""``mask-value``: finite, fp16-safe attention mask values in T5 and the denoiser (Neodragon §4.1)."""

from __future__ import annotations

import attrs

from neoc.config import in_range
from neoc.pass_api import Pass
from neoc.passes.static_shape import TRAINING
from neoc.registry import register_pass


@attrs.frozen
class MaskValueConfig:
    value: float = attrs.field(default=-1.0e4, validator=in_range(-65504.0, -1.0))
    tolerance: float = 1e-4


@register_pass
class MaskValue(Pass):
    name = "mask-value"
    summary = "Replace -inf / dtype-min attention mask values by a finite fp16-safe constant"
    paper = "Neodragon §4.1"
    Config = MaskValueConfig
    implemented = False
    semantics_preserving = True
    forbids_after = TRAINING
