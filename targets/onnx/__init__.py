"""``onnx`` target: export each deployable graph to ONNX."""

from neoc.targets.onnx.target import OnnxTarget  # noqa: F401
