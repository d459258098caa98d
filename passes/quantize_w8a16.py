"""``quantize-w8a16``: AIMET W8A16 post-training quantisation per component (Neodragon §4.2, Table 9)."""

from __future__ import annotations

import attrs

from neoc.config import in_range
from neoc.pass_api import Pass
from neoc.registry import register_pass

ALL_OTHERS = ("replace-text-encoder", "swap-decoder", "prune-blocks", "distill-steps", "static-shape",
              "precompute-inputs", "rope-rank-reduction", "mask-value", "t5-fp16-rescale")


@attrs.frozen
class QuantizeW8A16Config:
    param_bw: int = attrs.field(default=8, validator=in_range(4, 16))
    output_bw: int = attrs.field(default=16, validator=in_range(8, 16))
    calib_denoiser: int = attrs.field(default=300, validator=in_range(1))
    calib_vae_decoder: int = attrs.field(default=50, validator=in_range(1))
    calib_first_frame: int = attrs.field(default=500, validator=in_range(1))
    calib_upsampler: int = attrs.field(default=500, validator=in_range(1))
    adaround_upsampler: bool = True
    fp16_text_encoders: bool = True


@register_pass
class QuantizeW8A16(Pass):
    name = "quantize-w8a16"
    summary = "AIMET W8A16 simulation + encodings per component (FP16 text encoders, AdaRound upsampler)"
    paper = "Neodragon §4.2, Table 9"
    Config = QuantizeW8A16Config
    implemented = False
    forbids_after = ALL_OTHERS
