"""Built-in targets. Importing this package registers them."""

from neoc.targets import hexagon, onnx  # noqa: F401
