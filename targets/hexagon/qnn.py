"""onnxruntime-qnn plumbing shared by the support report, the compiler and the HTP simulation.

The calls are the ones checked on this machine kind (shared/DESIGN-NOTES.md, "Environment facts"):

* ``onnxruntime.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())``
  once per process;
* the QNN device from ``onnxruntime.get_ep_devices()``, added with ``SessionOptions.add_provider_for_devices``
  and ``backend_path = onnxruntime_qnn.get_qnn_htp_path()``, ``soc_model`` and ``htp_arch`` per SoC;
* ``ep.context_*`` session entries to write a context binary, ``session.disable_cpu_ep_fallback=1`` to refuse
  CPU fallback, ``session.record_ep_graph_assignment_info=1`` to read back which EP got each node.

The HTP backend library runs the graph in its x86-64 simulator, so a session created here both prepares
(compiles) the graph for the SoC and executes it. onnxruntime and the QNN backend log from C++ to file
descriptor 2; :func:`captured_stderr` collects that text so reports can quote the backend's own reasons.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

import attrs

#: SoC name -> (QNN soc_model id, HTP arch). 60 = Snapdragon X Elite (v73), 69 = Snapdragon 8 Elite (v79).
SOCS: dict[str, tuple[int, int]] = {"x-elite": (60, 73), "8-elite": (69, 79)}

#: AI Hub device names of the same SoCs (used by the optional qai-hub jobs).
HUB_DEVICES: dict[str, str] = {"x-elite": "Snapdragon X Elite CRD", "8-elite": "Samsung Galaxy S25 (Family)"}

EP_NAME = "QNNExecutionProvider"
_registered = False


def soc_ids(soc: str) -> tuple[int, int]:
    from neoc.errors import InputError

    if soc not in SOCS:
        raise InputError(f"target.socs: unknown SoC {soc!r} (known: {', '.join(SOCS)})")
    return SOCS[soc]


def register() -> None:
    """Register the QNN EP library with onnxruntime (once per process)."""
    global _registered
    if _registered:
        return
    import onnxruntime as ort
    import onnxruntime_qnn

    try:
        ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
    except Exception as exc:  # registered by someone else in this process
        if "already" not in str(exc).lower():
            raise
    _registered = True


def qnn_device():
    import onnxruntime as ort

    register()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise RuntimeError("onnxruntime lists no QNNExecutionProvider device after registering onnxruntime-qnn")
    return devices[0]


@attrs.frozen
class SessionPlan:
    """What one QNN session does: the SoC, precision, context-binary output and fallback policy."""

    soc: str
    fp16: bool = True  # float graphs run in HTP fp16; QDQ graphs run quantised either way
    context_path: str | None = None  # write an EPContext model here (binary beside it, embed mode 0)
    share_contexts: bool = False  # ep.share_ep_contexts: graphs of consecutive sessions go into one binary
    last_shared: bool = False  # ep.stop_share_ep_contexts on the last session of a shared group
    allow_cpu_fallback: bool = False
    record_assignment: bool = True
    log_severity: int = 3  # 0 verbose (per-node validation reasons) .. 3 errors
    prepare_only: bool = False  # compile the context binary without executing anything


def provider_options(soc: str, fp16: bool = True) -> dict[str, str]:
    import onnxruntime_qnn

    soc_model, htp_arch = soc_ids(soc)
    options = {"backend_path": onnxruntime_qnn.get_qnn_htp_path(), "soc_model": str(soc_model),
               "htp_arch": str(htp_arch)}
    if fp16:
        options["enable_htp_fp16_precision"] = "1"
    return options


def session_options(plan: SessionPlan):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = plan.log_severity
    if plan.log_severity == 0:
        so.log_verbosity_level = 0
    if plan.record_assignment:
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if not plan.allow_cpu_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if plan.context_path is not None:
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_file_path", str(plan.context_path))
        so.add_session_config_entry("ep.context_embed_mode", "0")
    if plan.share_contexts:
        so.add_session_config_entry("ep.share_ep_contexts", "1")
        if plan.last_shared:
            so.add_session_config_entry("ep.stop_share_ep_contexts", "1")
    options = provider_options(plan.soc, plan.fp16)
    if plan.prepare_only:
        options["enable_htp_prepare_only"] = "1"
    so.add_provider_for_devices([qnn_device()], options)
    return so


def create_session(model_path, plan: SessionPlan):
    """An onnxruntime session on the QNN HTP backend (prepares the graph; raises on failure)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(model_path), session_options(plan))


def assignment(session) -> list[tuple[str, str, str]]:
    """``(ep_name, node_name, op_type)`` for every node of the session's graph, from onnxruntime's record."""
    rows = []
    for subgraph in session.get_provider_graph_assignment_info() or []:
        for node in subgraph.get_nodes():
            rows.append((subgraph.ep_name, node.name, node.op_type))
    return rows


def cpu_nodes(session) -> list[tuple[str, str]]:
    """``(node_name, op_type)`` of the nodes onnxruntime placed outside the QNN EP (CPU fallback)."""
    return [(name, op) for ep, name, op in assignment(session) if ep != EP_NAME]


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what C++ code writes to file descriptor 2 while the block runs; the text lands in ``out[0]``."""
    out: list[str] = [""]
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            out[0] = sink.read().decode("utf-8", errors="replace")


def tool_versions() -> dict[str, str]:
    """Versions an app needs to match the context binaries (onnxruntime, onnxruntime-qnn, QNN SDK)."""
    from importlib import metadata

    versions = {}
    for package in ("onnxruntime", "onnxruntime-qnn", "onnx", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        import onnxruntime_qnn

        versions["qnn_sdk"] = str(getattr(onnxruntime_qnn.build_and_package_info, "qnn_version", "unknown"))
    except ImportError:
        pass
    return versions
