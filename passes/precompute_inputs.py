"""``precompute-inputs``: timestep embeddings and per-stage constants precomputed (Neodragon §4.1)."""

from __future__ import annotations

import attrs

from neoc.pass_api import Pass
from neoc.passes.static_shape import TRAINING
from neoc.registry import register_pass


@attrs.frozen
class PrecomputeInputsConfig:
    tolerance: float = 1e-4


@register_pass
class PrecomputeInputs(Pass):
    name = "precompute-inputs"
    summary = "Fold timestep embeddings and per-stage constants into graph inputs/constants"
    paper = "Neodragon §4.1"
    Config = PrecomputeInputsConfig
    implemented = False
    semantics_preserving = True
    forbids_after = TRAINING
