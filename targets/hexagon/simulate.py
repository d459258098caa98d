"""Run compiled context binaries in HTP simulation and measure SQNR against the float torch graph.

The QNN HTP backend shipped with onnxruntime-qnn for x86-64 executes a context binary in its simulator, so the
numbers here are what the SoC's HTP computes (fp16 or W8A16 arithmetic), not a CPU re-run of the ONNX graph.
SQNR (Neodragon Table 9) over all calibration calls and outputs:

    SQNR_dB = 10 log10( sum ref^2 / sum (ref - htp)^2 )

with ``ref`` the float32 torch outputs of the same captured inputs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from neoc.targets.hexagon import qnn


def sqnr_db(reference: Sequence[np.ndarray], measured: Sequence[np.ndarray]) -> float:
    signal = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in reference)
    noise = sum(float(np.sum(np.square(r.astype(np.float64) - m.astype(np.float64))))
                for r, m in zip(reference, measured, strict=True))
    if not all(np.all(np.isfinite(m)) for m in measured):
        return float("-inf")
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


def feeds(session, inputs: Sequence[torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    """Session feeds from torch/numpy inputs in graph-input order, cast to the graph's (legalised) dtypes."""
    out = {}
    for meta, tensor in zip(session.get_inputs(), inputs, strict=True):
        array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
        wanted = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32,
                  "tensor(float16)": np.float16, "tensor(bool)": np.bool_}.get(meta.type)
        out[meta.name] = array.astype(wanted) if wanted is not None else array
    return out


def load_context(context_model: Path, soc: str, precision: str = "fp16", shared: bool = False):
    """A session on a compiled EPContext model (loads the context binary into the HTP simulator)."""
    plan = qnn.SessionPlan(soc, fp16=precision == "fp16", share_contexts=shared, allow_cpu_fallback=False)
    with qnn.captured_stderr():
        return qnn.create_session(context_model, plan)


def simulate(context_model: Path, soc: str, calibration: Sequence[Sequence[torch.Tensor]],
             references: Sequence[Sequence[torch.Tensor]], precision: str = "fp16") -> dict:
    """Load the context binary and run every calibration call; SQNR vs ``references`` and the fallback count."""
    session = load_context(context_model, soc, precision)
    result = run_session(session, calibration, references)
    del session
    return {**result, "loaded_from": "context binary"}


def run_session(session, calibration: Sequence[Sequence[torch.Tensor]],
                references: Sequence[Sequence[torch.Tensor]]) -> dict:
    """Run the calibration calls through a QNN session (a loaded binary or a live compile session)."""
    fallback = len(qnn.cpu_nodes(session))
    measured, expected = [], []
    for inputs, reference in zip(calibration, references, strict=True):
        outputs = session.run(None, feeds(session, inputs))
        measured.extend(np.asarray(o, dtype=np.float32) for o in outputs)
        expected.extend(r.detach().cpu().numpy().astype(np.float32) for r in reference)
    return {"sqnr_db": sqnr_db(expected, measured), "calls": len(calibration), "cpu_fallback_nodes": fallback}
