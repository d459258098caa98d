"""QNN HTP context binaries per SoC through onnxruntime-qnn (CPU fallback disabled, context embed mode 0).

For each graph and SoC a QNN session prepares the legalised (optionally QDQ) ONNX graph for the SoC's HTP
and writes an EPContext model ``<graph>_ctx.onnx`` whose node points at the context binary ``*_qnn.bin`` beside
it (embed mode 0: the binary is a separate file an app can map). ``session.disable_cpu_ep_fallback=1`` makes
any node the HTP cannot take an error instead of a silent CPU island; the number of nodes onnxruntime placed
elsewhere is read back from its graph-assignment record and must be 0.

Weight sharing: onnxruntime-qnn's ``ep.share_ep_contexts`` puts the graphs of consecutive sessions into one
QNN context, so the 3 denoiser stage graphs (same weights, different shapes) land in one binary holding the
weights once; ``ep.stop_share_ep_contexts`` on the last session writes it. Each stage keeps its own
``*_ctx.onnx`` pointing at the shared binary. (That binary is for the device: the x86-64 HTP simulator cannot
load multi-graph binaries, see :func:`compile_group`.)
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import attrs

from neoc.errors import CheckFailed
from neoc.targets.hexagon import qnn


@attrs.define
class CompiledGraph:
    name: str
    soc: str
    context_model: Path  # EPContext ONNX model (what an app / the simulator loads)
    binary: Path  # the QNN context binary it references
    prepare_seconds: float
    cpu_fallback_nodes: int
    qnn_nodes: int
    shared_with: list[str] = attrs.field(factory=list)  # graphs whose weights live in the same binary
    precision: str = "fp16"
    session: object = attrs.field(default=None, repr=False, eq=False)  # the live compile session, when kept


def _binary_of(context_model: Path) -> Path:
    import onnx

    model = onnx.load(str(context_model), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "EPContext":
            for attr in node.attribute:
                if attr.name == "ep_cache_context":
                    return context_model.parent / attr.s.decode()
    raise CheckFailed(f"{context_model}: no EPContext node (the QNN EP did not take the graph)")


_UNSUPPORTED = re.compile(r"Unsupported nodes in QNN EP: \{ name: (?P<node>[^,]+), type: (?P<op>[^ }]+) \}")


def compile_graph(model_path: Path, name: str, soc: str, out_dir: Path, precision: str = "fp16",
                  share: bool = False, last_shared: bool = False, keep_session: bool = False) -> CompiledGraph:
    """Prepare ``model_path`` for ``soc`` and write ``out_dir/<name>_ctx.onnx`` + its binary. With
    ``keep_session`` the compile session (which runs the prepared graph in HTP simulation) is returned too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    context_model = out_dir / f"{name}_ctx.onnx"
    context_model.unlink(missing_ok=True)
    plan = qnn.SessionPlan(soc, fp16=precision == "fp16", context_path=str(context_model), share_contexts=share,
                           last_shared=last_shared, allow_cpu_fallback=False)
    start = time.perf_counter()
    with qnn.captured_stderr() as log:
        try:
            session = qnn.create_session(model_path, plan)
        except Exception as exc:
            session, error = None, exc
    seconds = time.perf_counter() - start
    if session is None:
        rejected = sorted({(m.group("node"), m.group("op")) for m in _UNSUPPORTED.finditer(log[0])})
        named = "; ".join(f"{op} at node {node}" for node, op in rejected[:8])
        raise CheckFailed(f"hexagon: QNN HTP compile of '{name}' for {soc} failed"
                          f"{': rejected ' + named if named else ''}: {str(error).strip()[:400]}")
    fallback = qnn.cpu_nodes(session)
    on_qnn = len(qnn.assignment(session)) - len(fallback)
    binary = _binary_of(context_model) if (not share or last_shared) else None
    return CompiledGraph(name, soc, context_model, binary if binary is not None else Path(), seconds,
                         len(fallback), on_qnn, precision=precision, session=session if keep_session else None)


def compile_group(models: list[tuple[str, Path, str]], soc: str, out_dir: Path,
                  weight_sharing: bool) -> list[CompiledGraph]:
    """Compile graphs that share weights (e.g. the denoiser stages): one binary when ``weight_sharing``.

    The x86-64 HTP simulator refuses to load a weight-shared (multi-graph) binary
    (``contextCreateFromBinary``: QNN_COMMON_ERROR_NOT_SUPPORTED; a crash in some orders), so shared graphs
    keep their compile sessions — the same prepared graphs, running in HTP simulation — for the numerics check."""
    share = weight_sharing and len(models) > 1
    compiled = []
    for number, (name, path, precision) in enumerate(models):
        compiled.append(compile_graph(path, name, soc, out_dir, precision, share=share,
                                      last_shared=share and number == len(models) - 1, keep_session=share))
    if share:
        binary = _binary_of(compiled[0].context_model)
        names = [c.name for c in compiled]
        for graph in compiled:
            graph.binary = binary
            graph.shared_with = [n for n in names if n != graph.name]
    return compiled


def copy_compiled(graph: CompiledGraph, dest: Path) -> CompiledGraph:
    """Copy a context model and its binary into ``dest`` (the bundle folder)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(graph.context_model, dest / graph.context_model.name)
    if not (dest / graph.binary.name).exists():
        shutil.copy2(graph.binary, dest / graph.binary.name)
    return attrs.evolve(graph, context_model=dest / graph.context_model.name, binary=dest / graph.binary.name,
                        session=None)
