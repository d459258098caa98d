"""ONNX target: export each deployable graph (denoiser stage graphs, text side, decoder, upsampler)."""

from __future__ import annotations

import attrs

from neoc.config import in_range
from neoc.registry import register_target
from neoc.target_api import Target


@attrs.frozen
class OnnxConfig:
    opset: int = attrs.field(default=17, validator=in_range(13, 23))


@register_target
class OnnxTarget(Target):
    name = "onnx"
    summary = "Export the deployable graphs to ONNX"
    Config = OnnxConfig
    implemented = False
