"""Calibration data: the real inputs each component receives while the pipeline generates videos.

Post-training quantisation calibrates activation ranges on representative inputs (Neodragon §4.2 uses 50-500
samples per module). Random tensors are not representative — a denoiser sees noisy latents at specific
timesteps, a decoder sees denoised latents — so neoc records what every component is actually called with:
forward pre-hooks on the pipeline's components while :meth:`Pipeline.generate` runs toy prompts with the run's
seed. Each recorded :class:`ComponentCall` keeps its positional and keyword inputs (detached copies) and, for
the denoiser, the metadata of the graph node that made the call (unit, stage, step, timestep), matched by call
order: fx runs the unrolled graph's nodes in order, so the k-th denoiser call is the k-th denoiser node.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import attrs
import torch

from neoc.errors import InputError


def _copy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


@attrs.define
class ComponentCall:
    """One recorded call: ``role``, inputs, and (denoiser) the graph node's metadata."""

    role: str
    args: tuple
    kwargs: dict
    meta: dict = attrs.field(factory=dict)
    prompt_index: int = 0

    @property
    def stage(self) -> int | None:
        return self.meta.get("stage")


def called_roles(pipeline) -> list[str]:
    """Components the pipeline graph calls (``call_module`` nodes), in data-flow order."""
    targets = {n.target for n in pipeline.graph_module.graph.nodes if n.op == "call_module"}
    return [role for role in pipeline.components if role in targets]


class CallRecorder:
    """Context manager recording every call of the given component roles of ``pipeline``."""

    def __init__(self, pipeline, roles: Iterable[str]):
        self.pipeline = pipeline
        self.roles = list(roles)
        self.calls: dict[str, list[ComponentCall]] = {role: [] for role in self.roles}
        self.prompt_index = 0
        self._handles = []
        self._denoiser_meta: list[dict] = []
        self._counter: dict[str, int] = {}

    def __enter__(self) -> "CallRecorder":
        self._denoiser_meta = [dict(n.meta) for n in self.pipeline.denoiser_nodes()]
        for role in self.roles:
            module = self.pipeline.component(role)
            self._handles.append(module.register_forward_pre_hook(self._hook(role), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def next_prompt(self, index: int) -> None:
        """Call before each generation: resets the per-run call counters."""
        self.prompt_index = index
        self._counter = {}

    def _hook(self, role: str):
        def record(module, args, kwargs):
            count = self._counter.get(role, 0)
            self._counter[role] = count + 1
            meta = {}
            if role == "denoiser" and self._denoiser_meta:
                node_meta = self._denoiser_meta[count % len(self._denoiser_meta)]
                meta = {k: node_meta[k] for k in ("unit", "stage", "step", "timestep", "signature") if k in node_meta}
            self.calls[role].append(ComponentCall(role, _copy(tuple(args)), _copy(dict(kwargs)), meta,
                                                  self.prompt_index))
            return None

        return record


def calibration_prompts(count: int, seed: int, split: str = "train") -> list[str]:
    """``count`` toy-world captions of ``split`` (``train`` for calibration, ``eval`` for held-out checks)."""
    from neoc.data.toyworld import ToyWorldDataset

    data = ToyWorldDataset(split, max(count, 1), seed)
    return [data.scene_and_caption(i)[1] for i in range(count)]


@torch.no_grad()
def record_calls(pipeline, roles: Sequence[str], prompts: Sequence[str], seed: int,
                 enough=None, progress=None) -> dict[str, list[ComponentCall]]:
    """Generate ``prompts`` (seeds ``seed + i``) and record the inputs of ``roles``. ``enough(calls)`` may stop
    early once every component has what it needs; ``progress`` wraps the prompt iterable (tqdm-like)."""
    if pipeline.prompt_encoder is None:
        raise InputError("calibration needs a pipeline with tokenizers (it generates prompts)")
    recorder = CallRecorder(pipeline, roles)
    items = list(enumerate(prompts))
    with recorder:
        for index, prompt in (progress(items) if progress is not None else items):
            recorder.next_prompt(index)
            pipeline.generate(prompt, seed=seed + index)
            if enough is not None and enough(recorder.calls):
                break
    return recorder.calls


def evenly_spaced(calls: list[ComponentCall], count: int) -> list[ComponentCall]:
    """``count`` calls spread over the whole list (all of them when there are fewer)."""
    if len(calls) <= count:
        return list(calls)
    step = len(calls) / count
    return [calls[math.floor(i * step)] for i in range(count)]


def flat_tensors(value) -> list[torch.Tensor]:
    """Every tensor inside nested lists / tuples / dicts, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flat_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flat_tensors(v)]
    return []


def describe_calls(calls: list[ComponentCall]) -> dict[str, Any]:
    """A JSON-able summary of recorded calls (count, input shapes of the first)."""
    if not calls:
        return {"count": 0}
    first = calls[0]
    return {"count": len(calls), "input_shapes": [list(t.shape) for t in flat_tensors((first.args, first.kwargs))]}
