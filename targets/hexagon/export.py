"""Per-graph ONNX export with static shapes (the first step of the hexagon and onnx targets).

Each :class:`~neoc.targets.hexagon.graphs.DeployGraph` is exported at the shapes of its captured example call,
with no dynamic axes, so every shape is a constant and the shape arithmetic folds away in legalisation.

The exporter is ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript): static shapes, attention
decomposed into MatMul/Softmax/MatMul, exact GELU as ``Gelu`` (opset >= 20). Some modules (e.g. HF T5's
non-contiguous ``view``) fail its decompositions; those fall back to the TorchScript exporter at opset 17 and are
converted to the requested opset. Graphs whose weights exceed ``external_data_mb`` are written with external
data (``<name>.onnx.data`` beside the model) so the 2 GB protobuf limit never applies.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import attrs
import onnx
import torch

from neoc.errors import NeocError
from neoc.targets.hexagon.graphs import DeployGraph

log = logging.getLogger("neoc")

DEFAULT_OPSET = 21  # uint16 QuantizeLinear/DequantizeLinear (W8A16) and Gelu need >= 21 / 20
TORCHSCRIPT_OPSET = 17


@attrs.define
class ExportResult:
    path: Path
    exporter: str  # "dynamo" or "torchscript"
    seconds: float
    nodes: int
    external_data: bool


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def save_model(model: onnx.ModelProto, path: Path, external_data_mb: float = 1024.0) -> bool:
    """Save ``model``; weights go to ``<name>.data`` beside it when they exceed ``external_data_mb``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size_mb = sum(len(init.raw_data) for init in model.graph.initializer) / 2**20
    external = size_mb > external_data_mb
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data.name, size_threshold=1024)
    else:
        onnx.save(model, str(path))
    return external


def load_model(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=True)


def _export_dynamo(graph: DeployGraph, path: Path, opset: int) -> None:
    program = torch.onnx.export(graph.module, graph.example, dynamo=True, opset_version=opset,
                                input_names=graph.input_names, output_names=graph.output_names, optimize=True,
                                verbose=False)
    program.save(str(path))


def _export_torchscript(graph: DeployGraph, path: Path, opset: int) -> None:
    torch.onnx.export(graph.module, graph.example, str(path), dynamo=False, opset_version=TORCHSCRIPT_OPSET,
                      input_names=graph.input_names, output_names=graph.output_names, do_constant_folding=True)
    if opset != TORCHSCRIPT_OPSET:
        model = onnx.load(str(path))
        model = onnx.version_converter.convert_version(model, opset)
        onnx.save(model, str(path))


def export_graph(graph: DeployGraph, path: Path, opset: int = DEFAULT_OPSET, external_data_mb: float = 1024.0,
                 exporters: tuple[str, ...] = ("dynamo", "torchscript")) -> ExportResult:
    """Export ``graph`` to ``path`` with static shapes; tries ``exporters`` in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    graph.module.eval()
    errors = []
    start = time.perf_counter()
    for exporter in exporters:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if exporter == "dynamo":
                    _export_dynamo(graph, path, opset)
                else:
                    _export_torchscript(graph, path, opset)
            break
        except Exception as exc:  # the next exporter may manage; all failures are reported together
            first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            errors.append(f"{exporter}: {type(exc).__name__}: {first_line[:400]}")
            log.info("export of %s with %s failed: %s", graph.name, exporter, first_line[:400])
    else:
        raise NeocError(f"could not export graph '{graph.name}' to ONNX: " + " | ".join(errors))
    model = load_model(path)
    external = save_model(model, path, external_data_mb)
    return ExportResult(path, exporter, time.perf_counter() - start, len(model.graph.node), external)
