"""The graphs neoc quantises: each a module with flat positional tensor inputs, as a deployed graph has.

``QuantizationSimModel`` traces its model with one example input and wraps its layers; the deployed graphs are
per component (Neodragon Table 9), and for the denoiser per pyramid stage: the three DiT graphs of §4.1. A
:class:`QuantGraph` names one of them and turns recorded :class:`~neoc.quant.calibration.ComponentCall`\\ s into
its positional inputs:

* ``denoiser/stage{s}`` — :class:`DenoiserStageGraph` over the (deployment-wrapped) denoiser, called the way the
  pipeline graph calls it at stage ``s``. After ``precompute-inputs`` the graph is the DiT body only, with inputs
  ``(*clips, context, temb, attention_mask[, rope], *positions)``; otherwise the whole denoiser call
  ``(*clips, context, text_mask, pooled, timestep[, frame_valid, frame_time])`` (its timestep MLP, mask and RoPE
  table construction included).
* every other component — :class:`ComponentGraph`: the component called with the recorded positional and
  keyword tensors, flattened in order.

Module names inside these wrappers (``denoiser.mmdit.transformer_blocks.0.attn.to_q``, ``component.conv_in``
...) are the keys of the AIMET encodings; :func:`build_graph` rebuilds the same wrapper from the pipeline, so
recorded encodings load back into a fresh sim (``neoc.quant.sim.load_sim``).
"""

from __future__ import annotations

from typing import Sequence

import attrs
import torch
from torch import nn

from neoc.quant.calibration import ComponentCall

DENOISER_STANDARD_TAIL = ("encoder_hidden_states", "encoder_attention_mask", "pooled_projections", "timestep_ratio")
# static-shape padding inputs of a DeployDenoiser call
DENOISER_PADDING_TAIL = ("frame_valid", "frame_time")


def _first_output(out) -> torch.Tensor:
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out


class DenoiserStageGraph(nn.Module):
    """One pyramid stage's DiT graph: ``forward(*inputs) -> prediction [B, C, T, H, W]``.

    ``form`` is ``"precomputed"`` (inputs ``*clips, context, temb, attention_mask, [rope,] *positions``) or
    ``"standard"`` (inputs ``*clips`` then the keyword inputs named in ``tail`` — those of
    ``encoder_hidden_states, encoder_attention_mask, pooled_projections, timestep_ratio, frame_valid, frame_time``
    the pipeline passes as tensors; the others are None). The number of clips follows from the number of inputs,
    so one graph serves every history length of a stage.
    """

    def __init__(self, denoiser: nn.Module, form: str, has_rope: bool = True, tail: Sequence[str] = ()):
        super().__init__()
        if form not in ("precomputed", "standard"):
            raise ValueError(f"unknown denoiser graph form {form!r}")
        self.denoiser = denoiser
        self.form = form
        self.has_rope = has_rope
        self.tail = tuple(tail)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.form == "precomputed":
            fixed = 3 + int(self.has_rope)  # context, temb, attention_mask[, rope]
            clips_count = (len(inputs) - fixed) // 2
            clips = list(inputs[:clips_count])
            context, temb, attention_mask = inputs[clips_count:clips_count + 3]
            rope = inputs[clips_count + 3] if self.has_rope else None
            positions = list(inputs[clips_count + fixed:])
            return self.denoiser.forward_precomputed([clips], context, temb, rope, attention_mask, positions)
        clips = list(inputs[:len(inputs) - len(self.tail)])
        named = {name: None for name in DENOISER_STANDARD_TAIL}
        named.update(zip(self.tail, inputs[len(inputs) - len(self.tail):]))
        return _first_output(self.denoiser(sample=[clips], **named))

    @staticmethod
    def inputs_of(call: ComponentCall, form: str, has_rope: bool, tail: Sequence[str]) -> tuple[torch.Tensor, ...]:
        kwargs = call.kwargs
        clips = tuple(kwargs["sample"][0])
        if form == "precomputed":
            rope = (kwargs["rope"],) if has_rope else ()
            return (*clips, kwargs["encoder_hidden_states"], kwargs["temb"], kwargs["attention_mask"], *rope,
                    *kwargs["positions"])
        return (*clips, *(kwargs[name] for name in tail))

    @staticmethod
    def tail_of(call: ComponentCall) -> tuple[str, ...]:
        """The standard-form keyword inputs a recorded call passes as tensors, in graph-input order."""
        return tuple(name for name in DENOISER_STANDARD_TAIL + DENOISER_PADDING_TAIL
                     if isinstance(call.kwargs.get(name), torch.Tensor))


class ComponentGraph(nn.Module):
    """A component called with flat inputs: the first ``num_args`` positionally, the rest as ``kwarg_names``."""

    def __init__(self, component: nn.Module, num_args: int, kwarg_names: Sequence[str] = ()):
        super().__init__()
        self.component = component
        self.num_args = num_args
        self.kwarg_names = tuple(kwarg_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        args, rest = inputs[:self.num_args], inputs[self.num_args:]
        return _first_output(self.component(*args, **dict(zip(self.kwarg_names, rest))))

    @staticmethod
    def signature_of(call: ComponentCall) -> tuple[int, tuple[str, ...]]:
        args = [a for a in call.args if isinstance(a, torch.Tensor)]
        if len(args) != len(call.args):
            raise ValueError(f"{call.role}: non-tensor positional inputs cannot be graph inputs")
        return len(args), tuple(k for k, v in call.kwargs.items() if isinstance(v, torch.Tensor))


@attrs.define
class QuantGraph:
    """A quantisable graph: ``name`` (``denoiser/stage1``, ``vae_decoder`` ...), its component ``role``, the
    wrapper ``module`` and how recorded calls become its inputs (``structure``, JSON-able)."""

    name: str
    role: str
    module: nn.Module
    structure: dict

    def inputs(self, call: ComponentCall) -> tuple[torch.Tensor, ...]:
        s = self.structure
        if s["kind"] == "denoiser_stage":
            return DenoiserStageGraph.inputs_of(call, s["form"], s["has_rope"], s["tail"])
        return (*call.args, *(call.kwargs[k] for k in s["kwarg_names"]))

    def run(self, module: nn.Module, call: ComponentCall) -> torch.Tensor:
        return module(*self.inputs(call))


def denoiser_structure(pipeline, stage: int, call: ComponentCall) -> dict:
    """How the pipeline calls its denoiser at ``stage`` (precomputed or standard form), from a recorded call."""
    precomputed = isinstance(call.kwargs.get("temb"), torch.Tensor)
    return {"kind": "denoiser_stage", "stage": stage, "form": "precomputed" if precomputed else "standard",
            "has_rope": isinstance(call.kwargs.get("rope"), torch.Tensor),
            "tail": [] if precomputed else list(DenoiserStageGraph.tail_of(call))}


def build_graph(pipeline, name: str, structure: dict) -> QuantGraph:
    """The wrapper of graph ``name`` around the pipeline's (float) component — shared weights, not a copy."""
    if structure["kind"] == "denoiser_stage":
        module = DenoiserStageGraph(pipeline.component("denoiser"), structure["form"], structure["has_rope"],
                                    structure["tail"])
        return QuantGraph(name, "denoiser", module.eval(), structure)
    role = structure["role"]
    module = ComponentGraph(pipeline.component(role), structure["num_args"], structure["kwarg_names"])
    return QuantGraph(name, role, module.eval(), structure)


def component_structure(role: str, call: ComponentCall) -> dict:
    num_args, kwarg_names = ComponentGraph.signature_of(call)
    return {"kind": "component", "role": role, "num_args": num_args, "kwarg_names": list(kwarg_names)}
