"""The deployable graphs of a pipeline and their calibration inputs (Neodragon §4, "graphs the NPU runs").

One :class:`DeployGraph` per graph an app loads on the NPU:

* ``text_encoder``, ``clip_encoders``, ``context_embedder``, ``context_adapter``: the text side (T5-class
  encoder, pooled CLIP towers, the context projection / adapter), one call each;
* ``denoiser_stage{s}``: the denoiser at pyramid stage ``s``. After ``static-shape`` every call of a stage has
  one input signature, so the NPU needs 3 graphs (they share all weights); without it each distinct signature
  is its own graph ``denoiser_stage{s}_{k}``;
* ``vae_decoder``, ``upsampler``, ``first_frame``: whatever the pipeline holds.

Calibration inputs are *captured*, not invented: the pipeline's fx graph runs on calibration prompts and
forward pre-hooks record every component's actual call (denoiser calls matched to their graph node by
execution order, so each gets its stage). Each graph is a flat-tensor wrapper around the component so the
exporter sees ``forward(*tensors) -> tensor(s)`` with fixed shapes; non-tensor arguments are baked in.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import attrs
import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from neoc.errors import CheckFailed

#: Components lowered one call each, in pipeline order (the denoiser is handled per stage).
SINGLE_CALL_ROLES = ("text_encoder", "clip_encoders", "context_embedder", "context_adapter", "first_frame",
                     "vae_decoder", "upsampler")
DEFAULT_CALIBRATION_PROMPTS = ("a red ball rolls to the left", "a blue square slides down on a white floor",
                               "two green circles bounce past each other")
#: What the denoiser graph I/O hold (for the bundle manifest); other names are described by shape and dtype.
MEANINGS = {
    "latent": "current noisy latent clip [B, C, T, H, W]",
    "history": "clean history clip (oldest first), zero frames prepended to the stage layout",
    "encoder_hidden_states": "text context tokens",
    "encoder_attention_mask": "text mask, 1 = valid token",
    "pooled_projections": "pooled CLIP-L|G text embedding",
    "timestep_ratio": "timestep on the 0..1000 scale",
    "frame_valid": "per latent frame of the padded clips: 1 real, 0 padding",
    "frame_time": "per latent frame: RoPE / causality time id",
    "velocity": "predicted flow velocity of the current clip",
}


@attrs.define
class DeployGraph:
    """One graph to lower: a flat-tensor module, its I/O names and captured calibration inputs."""

    name: str
    role: str
    module: nn.Module  # forward(*tensors) -> tuple of tensors
    input_names: list[str]
    output_names: list[str]
    calibration: list[tuple[torch.Tensor, ...]]  # captured real inputs, one tuple per call
    share_group: str | None = None  # graphs compiled into one context binary (shared weights)
    layouts: dict[str, str] = attrs.field(factory=dict)  # human-readable meaning of each input/output

    @property
    def example(self) -> tuple[torch.Tensor, ...]:
        return self.calibration[0]

    @torch.no_grad()
    def reference(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The float torch outputs on ``inputs`` (what SQNR is measured against)."""
        self.module.eval()
        return [o.float() for o in self.module(*inputs)]


class CallGraph(nn.Module):
    """Re-issues one captured component call with its tensor leaves as positional inputs.

    ``spec`` is the pytree of the call's ``(args, kwargs)``; tensor leaves are replaced by the inputs in order,
    every other leaf (None, ints, flags) is baked in. Outputs are flattened to a tuple.
    """

    def __init__(self, component: nn.Module, spec, constants: list[Any], tensor_slots: list[int]):
        super().__init__()
        self.component = component
        self.spec = spec
        self.constants = constants
        self.tensor_slots = tensor_slots

    def forward(self, *tensors: torch.Tensor):
        leaves = list(self.constants)
        for slot, tensor in zip(self.tensor_slots, tensors, strict=True):
            leaves[slot] = tensor
        args, kwargs = tree_unflatten(leaves, self.spec)
        out = self.component(*args, **kwargs)
        flat, _ = tree_flatten(out)
        return tuple(t for t in flat if isinstance(t, torch.Tensor))


def call_structure(args: tuple, kwargs: dict):
    """Split a call into (pytree spec, leaves with tensors set to None, tensor slots, tensors, leaf paths)."""
    from torch.utils._pytree import tree_flatten_with_path, keystr

    with_path, spec = tree_flatten_with_path((args, kwargs))
    constants, slots, tensors, paths = [], [], [], []
    for index, (path, leaf) in enumerate(with_path):
        if isinstance(leaf, torch.Tensor):
            slots.append(index)
            tensors.append(leaf)
            paths.append(keystr(path))
            constants.append(None)
        else:
            constants.append(leaf)
    return spec, constants, slots, tensors, paths


def clean_name(path: str, positional: Sequence[str] = ()) -> str:
    """``[1]['encoder_hidden_states']`` -> ``encoder_hidden_states``; ``[0][1]`` -> the forward's second
    parameter name (``positional``), else ``input_1``; nested ``[0][1][2]`` -> ``<name>_2``."""
    keys = re.findall(r"\['([^']+)'\]", path)
    if keys:
        return keys[-1]
    numbers = [int(n) for n in re.findall(r"\[(\d+)\]", path)][1:]  # drop the (args, kwargs) index
    if not numbers:
        return "input"
    head = positional[numbers[0]] if numbers[0] < len(positional) else f"input_{numbers[0]}"
    return "_".join([head, *map(str, numbers[1:])])


def positional_names(component: nn.Module) -> list[str]:
    """Names of the component's ``forward`` parameters, for naming positional graph inputs."""
    import inspect

    try:
        parameters = inspect.signature(component.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def denoiser_input_names(paths: list[str]) -> list[str]:
    """Clips ``sample[0][i]`` are ``history_{i}`` and the last one ``latent``; other kwargs keep their names."""
    clip_paths = [p for p in paths if "['sample']" in p]
    names = []
    for path in paths:
        if "['sample']" in path:
            index = clip_paths.index(path)
            names.append("latent" if index == len(clip_paths) - 1 else f"history_{index}")
        else:
            names.append(clean_name(path))
    return names


def unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_{count}")
    return out


# ----------------------------------------------------------------------------------------------------------
# capture
# ----------------------------------------------------------------------------------------------------------


@attrs.define
class CapturedCall:
    role: str
    args: tuple
    kwargs: dict
    meta: dict = attrs.field(factory=dict)


def _detach(value):
    flat, spec = tree_flatten(value)
    return tree_unflatten([v.detach().clone() if isinstance(v, torch.Tensor) else v for v in flat], spec)


@torch.no_grad()
def capture_calls(pipeline, prompts: Sequence[str], seed: int) -> list[CapturedCall]:
    """Run the pipeline graph on each prompt and record every component call (inputs only)."""
    for module in pipeline.components.values():
        module.eval()
    denoiser_meta = [dict(node.meta) for node in pipeline.denoiser_nodes()]
    calls: list[CapturedCall] = []
    handles = []
    counter = {"denoiser": 0}

    def hook(role):
        def record(module, args, kwargs):
            meta = {}
            if role == "denoiser":
                meta = denoiser_meta[counter["denoiser"] % len(denoiser_meta)]
                counter["denoiser"] += 1
            args, kwargs = _detach((args, kwargs))
            calls.append(CapturedCall(role, args, kwargs, meta))
        return record

    for role, module in pipeline.components.items():
        handles.append(module.register_forward_pre_hook(hook(role), with_kwargs=True))
    try:
        for index, prompt in enumerate(prompts):
            pipeline.run_graph(pipeline.prepare_inputs(prompt, seed=seed + index))
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _signature_key(call: CapturedCall) -> tuple:
    _, constants, _, tensors, _ = call_structure(call.args, call.kwargs)
    return (tuple((tuple(t.shape), str(t.dtype)) for t in tensors), repr(constants))


def _graph_from_calls(name: str, role: str, component: nn.Module, calls: list[CapturedCall],
                      share_group: str | None = None) -> DeployGraph:
    spec, constants, slots, tensors, paths = call_structure(calls[0].args, calls[0].kwargs)
    positional = positional_names(component)
    names = unique(denoiser_input_names(paths) if role == "denoiser" else [clean_name(p, positional) for p in paths])
    calibration = []
    for call in calls:
        _, _, _, call_tensors, _ = call_structure(call.args, call.kwargs)
        # distinct tensor objects per input: the exporter merges inputs that are the same tensor
        calibration.append(tuple(t.clone() for t in call_tensors))
    module = CallGraph(component, spec, constants, slots).eval()
    with torch.no_grad():
        outputs = module(*calibration[0])
    output_names = ["velocity"] if role == "denoiser" else (
        ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))])
    layouts = {n: describe(n, t) for n, t in zip(names, calibration[0])}
    layouts.update({n: describe(n, t) for n, t in zip(output_names, outputs)})
    return DeployGraph(name, role, module, names, output_names, calibration, share_group, layouts)


def describe(name: str, tensor: torch.Tensor) -> str:
    meaning = MEANINGS.get(name.split("_")[0] if name.startswith("history_") else name, "")
    shape = f"{list(tensor.shape)} {str(tensor.dtype).replace('torch.', '')} in torch"
    return f"{meaning}; {shape}" if meaning else shape


def deploy_graphs(pipeline, prompts: Sequence[str] = DEFAULT_CALIBRATION_PROMPTS, seed: int = 0,
                  roles: Sequence[str] | None = None, max_calls_per_graph: int = 4) -> list[DeployGraph]:
    """The pipeline's deployable graphs, each with up to ``max_calls_per_graph`` captured calibration calls."""
    calls = capture_calls(pipeline, prompts, seed)
    wanted = set(roles) if roles is not None else None
    graphs: list[DeployGraph] = []
    for role in SINGLE_CALL_ROLES[:SINGLE_CALL_ROLES.index("vae_decoder")]:
        if pipeline.has(role) and (wanted is None or role in wanted):
            graphs.append(_single_call_graph(pipeline, role, calls, max_calls_per_graph))
    if wanted is None or "denoiser" in wanted:
        graphs.extend(denoiser_graphs(pipeline, calls, max_calls_per_graph))
    for role in SINGLE_CALL_ROLES[SINGLE_CALL_ROLES.index("vae_decoder"):]:
        if pipeline.has(role) and (wanted is None or role in wanted):
            graphs.append(_single_call_graph(pipeline, role, calls, max_calls_per_graph))
    return graphs


def _single_call_graph(pipeline, role: str, calls: list[CapturedCall], limit: int) -> DeployGraph:
    mine = [c for c in calls if c.role == role]
    if not mine:
        raise CheckFailed(f"hexagon: component '{role}' was never called when the pipeline ran")
    key = _signature_key(mine[0])
    same = [c for c in mine if _signature_key(c) == key]
    return _graph_from_calls(role, role, pipeline.component(role), same[:limit])


def denoiser_graphs(pipeline, calls: list[CapturedCall], limit: int) -> list[DeployGraph]:
    """One graph per (stage, input signature); with static-shape that is one per stage."""
    by_stage: dict[int, dict[tuple, list[CapturedCall]]] = {}
    for call in (c for c in calls if c.role == "denoiser"):
        by_stage.setdefault(call.meta["stage"], {}).setdefault(_signature_key(call), []).append(call)
    graphs = []
    denoiser = pipeline.component("denoiser")
    for stage, groups in sorted(by_stage.items()):
        for k, group in enumerate(groups.values()):
            name = f"denoiser_stage{stage}" if len(groups) == 1 else f"denoiser_stage{stage}_{k}"
            picked = spread(group, limit)
            graphs.append(_graph_from_calls(name, "denoiser", denoiser, picked, share_group="denoiser"))
    return graphs


def spread(items: list, limit: int) -> list:
    """Up to ``limit`` items evenly spread over the list (first and last kept): calibration covers early and
    late latent frames of a stage."""
    if len(items) <= limit:
        return list(items)
    step = (len(items) - 1) / (limit - 1) if limit > 1 else 0
    return [items[round(i * step)] for i in range(limit)]
