"""Hexagon target: lower each deployable graph to QDQ ONNX, legalise, compile QNN HTP context binaries."""

from __future__ import annotations

from typing import Literal

import attrs

from neoc.registry import register_target
from neoc.target_api import Target

#: SoC name -> (QNN soc_model id, HTP arch)
SOCS = {"x-elite": (60, 73), "8-elite": (69, 79)}


@attrs.frozen
class HexagonConfig:
    socs: tuple[Literal["x-elite", "8-elite"], ...] = ("x-elite", "8-elite")
    weight_sharing: bool = True
    qai_hub: bool = True


@register_target
class HexagonTarget(Target):
    name = "hexagon"
    summary = "QNN HTP context binaries per SoC (onnxruntime-qnn), checked in HTP simulation"
    Config = HexagonConfig
    implemented = False
