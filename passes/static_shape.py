"""``static-shape``: one static denoiser graph per pyramid stage (Neodragon §4.1).

History clips are padded to the stage's longest history, with the attention mask and positional embeddings
fixed so that padding contributes nothing: the NPU needs 3 DiT graphs, not one per latent frame.
"""

from __future__ import annotations

import attrs

from neoc.pass_api import Pass
from neoc.registry import register_pass

TRAINING = ("replace-text-encoder", "swap-decoder", "prune-blocks", "distill-steps")


@attrs.frozen
class StaticShapeConfig:
    tolerance: float = 1e-4


@register_pass
class StaticShape(Pass):
    name = "static-shape"
    summary = "Pad each pyramid stage's history to its longest so the denoiser is 3 static graphs"
    paper = "Neodragon §4.1"
    Config = StaticShapeConfig
    implemented = False
    semantics_preserving = True
    forbids_after = TRAINING
