"""Run a pipeline as deployed: W8A16 components through their AIMET sims, FP16 components in half precision.

:func:`simulated` is a context manager that temporarily replaces the ``forward`` of the pipeline's components
(instance attributes; the float modules, their weights and the pipeline graph are untouched and restored on
exit), so ``pipeline.generate`` / ``evaluate_pipeline`` measure the quantised pipeline's videos:

* a W8A16 component runs its graph's ``sim.model`` on the same inputs (the denoiser the sim of the stage the
  call belongs to, found from the current clip's latent size);
* an FP16 component runs a half-precision copy on half-precision inputs and returns float32.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from typing import Callable

import torch
from torch import nn

from neoc.quant.calibration import ComponentCall
from neoc.quant.graphs import QuantGraph


def stage_of(pipeline, current: torch.Tensor) -> int:
    """The pyramid stage whose latent size is ``current``'s (H, W)."""
    S = pipeline.schedule.num_stages
    for stage in range(S):
        if tuple(current.shape[-2:]) == tuple(pipeline.spec.latent_size(stage, S)):
            return stage
    raise ValueError(f"no pyramid stage has latents of size {tuple(current.shape[-2:])}")


def _to_half(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.half()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_half(v) for v in value)
    return value


def _to_float(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value


def fp16_runner(module: nn.Module) -> Callable:
    """``(args, kwargs) -> output`` of a half-precision copy of ``module`` (float32 outputs)."""
    half = copy.deepcopy(module).half().eval()

    def run(args, kwargs):
        return _to_float(half(*_to_half(args), **_to_half(kwargs)))

    return run


def sim_runner(pipeline, role: str, graphs: dict[str, tuple[QuantGraph, object]]) -> Callable:
    """``(args, kwargs) -> output`` through the sims of ``role``'s graphs (``{name: (graph, sim)}``)."""
    signature = inspect.signature(pipeline.component(role).forward)
    if role == "denoiser":
        by_stage = {graph.structure["stage"]: (graph, sim) for graph, sim in graphs.values()}

        def run_denoiser(args, kwargs):
            bound = signature.bind(*args, **kwargs)
            call = ComponentCall(role, (), dict(bound.arguments))
            graph, sim = by_stage[stage_of(pipeline, call.kwargs["sample"][0][-1])]
            return [graph.run(sim.model, call)]

        return run_denoiser
    (graph, sim), = graphs.values()

    def run_component(args, kwargs):
        return graph.run(sim.model, ComponentCall(role, tuple(args), dict(kwargs)))

    return run_component


@contextlib.contextmanager
def simulated(pipeline, runners: dict[str, Callable]):
    """Within the block, component ``role`` computes ``runners[role](args, kwargs)`` instead of its forward."""
    patched = []
    try:
        for role, runner in runners.items():
            module = pipeline.component(role)
            module.forward = (lambda r: (lambda *args, **kwargs: r(args, kwargs)))(runner)
            patched.append(module)
        yield pipeline
    finally:
        for module in patched:
            del module.forward
