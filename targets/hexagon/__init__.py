"""``hexagon`` target: QNN HTP context binaries through onnxruntime-qnn (see DESIGN-NOTES environment facts)."""

from neoc.targets.hexagon.target import HexagonTarget  # noqa: F401
