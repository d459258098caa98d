"""``t5-fp16-rescale``: scale T5's residual/FF adds so activations stay in FP16 range (Neodragon §4.1)."""

from __future__ import annotations

import attrs

from neoc.config import in_range
from neoc.pass_api import Pass
from neoc.passes.static_shape import TRAINING
from neoc.registry import register_pass


@attrs.frozen
class T5Fp16RescaleConfig:
    target_max: float = attrs.field(default=3.0e4, validator=in_range(1.0, 65504.0))
    tolerance: float = 1e-4


@register_pass
class T5Fp16Rescale(Pass):
    name = "t5-fp16-rescale"
    summary = "Rescale T5 residual and feed-forward adds so activations fit FP16, functionally equivalent"
    paper = "Neodragon §4.1"
    Config = T5Fp16RescaleConfig
    implemented = False
    semantics_preserving = True
    forbids_after = TRAINING
