"""The whole text-to-video pipeline as one ``torch.fx.GraphModule``.

Components (text encoders, context embedder, denoiser, VAE decoder, optional first-frame generator and
upsampler) are submodules called by ``call_module`` nodes. The pyramidal sampler — stages x steps x latent frames
x CFG — is static, so it is unrolled into the graph: every denoiser evaluation is its own node, carrying metadata
(unit, stage, step, CFG branches, token counts). NFE is counted from the graph; changing the schedule re-emits it.

Graph inputs (see :meth:`Pipeline.prepare_inputs`): token ids for the [negative, positive] prompt pair, the
initial noise at the lowest pyramid resolution, and the block noise of each stage jump — all drawn from the run's
seeded generator, so the graph itself is a pure function.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

import networkx as nx
import torch
import torch.fx as fx
from torch import nn

from neoc.errors import InputError
from neoc.ir import ops
from neoc.ir.schedule import PipelineSpec, Schedule
from neoc.models import scheduler as sched

# Roles a pipeline may hold, in data-flow order. Only `denoiser` and `vae_decoder` are mandatory.
ROLES = ("text_encoder", "clip_encoders", "context_embedder", "context_adapter", "first_frame", "vae_encoder",
         "denoiser", "vae_decoder", "upsampler")
REQUIRED_ROLES = ("text_encoder", "denoiser", "vae_decoder")


def count_params(module: nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters())


class Pipeline:
    """Components + spec + schedule; the fx graph is derived from them and re-emitted on every change."""

    def __init__(self, spec: PipelineSpec, schedule: Schedule, components: dict[str, nn.Module],
                 prompt_encoder: Any = None, source: str = "", info: dict | None = None):
        unknown = sorted(set(components) - set(ROLES))
        if unknown:
            raise InputError(f"unknown pipeline component role '{unknown[0]}' (roles: {', '.join(ROLES)})")
        missing = [r for r in REQUIRED_ROLES if r not in components]
        if missing:
            raise InputError(f"pipeline is missing the '{missing[0]}' component")
        self.spec = spec
        self.schedule = schedule
        self.components = nn.ModuleDict({r: components[r] for r in ROLES if r in components})
        self.prompt_encoder = prompt_encoder  # tokenizers: prompts -> token tensors (not an nn.Module)
        self.source = source
        self.info = dict(info or {})
        self._graph_module: fx.GraphModule | None = None

    # ------------------------------------------------------------------ components
    def has(self, role: str) -> bool:
        return role in self.components

    def component(self, role: str) -> nn.Module:
        if role not in self.components:
            raise KeyError(f"pipeline has no '{role}' component (has: {', '.join(self.components)})")
        return self.components[role]

    def replace_component(self, role: str, module: nn.Module | None) -> None:
        """Replace (or with ``None`` remove) a component and re-emit the graph."""
        if role not in ROLES:
            raise InputError(f"unknown pipeline component role '{role}'")
        if module is None:
            if role in REQUIRED_ROLES:
                raise InputError(f"the '{role}' component cannot be removed")
            if role in self.components:
                del self.components[role]
        else:
            self.components[role] = module
            # keep data-flow order of the ModuleDict stable
            self.components = nn.ModuleDict({r: self.components[r] for r in ROLES if r in self.components})
        self._graph_module = None

    def rewrite_component(self, role: str, rewrite) -> None:
        """Rewrite a component's own FX graph: ``rewrite(GraphModule) -> GraphModule``."""
        module = self.component(role)
        traced = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
        self.replace_component(role, rewrite(traced))

    def with_schedule(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self._graph_module = None

    def clone(self) -> "Pipeline":
        return Pipeline(self.spec, self.schedule, {r: copy.deepcopy(m) for r, m in self.components.items()},
                        self.prompt_encoder, self.source, copy.deepcopy(self.info))

    def params(self) -> dict[str, int]:
        return {role: count_params(m) for role, m in self.components.items()}

    # ------------------------------------------------------------------ graph
    @property
    def graph_module(self) -> fx.GraphModule:
        if self._graph_module is None:
            self._graph_module = fx.GraphModule(self.components, emit_graph(self), class_name="T2VPipeline")
        return self._graph_module

    def denoiser_nodes(self) -> list[fx.Node]:
        return [n for n in self.graph_module.graph.nodes if n.meta.get("role") == "denoiser"]

    def nfe(self) -> int:
        """Denoiser forward evaluations counted from the graph (CFG branches counted separately)."""
        return sum(n.meta["nfe"] for n in self.denoiser_nodes())

    def stage_signatures(self) -> dict[int, list[tuple]]:
        """Distinct denoiser input shapes per pyramid stage (static-shape groups these into one graph each)."""
        out: dict[int, set] = {}
        for n in self.denoiser_nodes():
            out.setdefault(n.meta["stage"], set()).add(n.meta["signature"])
        return {s: sorted(v) for s, v in sorted(out.items())}

    def to_networkx(self) -> nx.DiGraph:
        """Data-flow view of the pipeline graph, for cost and critical-path analysis."""
        g = nx.DiGraph()
        for node in self.graph_module.graph.nodes:
            g.add_node(node.name, op=node.op, target=str(node.target),
                       **{k: v for k, v in node.meta.items() if isinstance(v, (int, float, str))})
            for inp in node.all_input_nodes:
                g.add_edge(inp.name, node.name)
        return g

    def describe(self) -> str:
        """A compact human-readable summary (used by ``neoc explain`` and reports)."""
        lines = [f"pipeline {self.spec.name}: {self.spec.frames} frames {self.spec.height}x{self.spec.width}, "
                 f"{self.spec.latent_frames} latent frames, schedule '{self.schedule.label}' "
                 f"first={list(self.schedule.first_frame_steps)} video={list(self.schedule.video_steps)}, "
                 f"NFE {self.nfe()}"]
        for role, module in self.components.items():
            calls = sum(1 for n in self.graph_module.graph.nodes if n.op == "call_module" and n.target == role)
            lines.append(f"  {role:<17} {type(module).__name__:<28} {count_params(module):>14,} params  "
                         f"x{calls} in graph")
        for stage, sigs in self.stage_signatures().items():
            lines.append(f"  stage {stage}: {len(sigs)} distinct denoiser input shapes")
        return "\n".join(lines)

    # ------------------------------------------------------------------ execution
    def input_shapes(self, batch_prompts: int = 1) -> dict[str, tuple[int, ...]]:
        spec, T, C = self.spec, self.spec.latent_frames, self.spec.latent_channels
        shapes = {"t5_ids": (2, spec.t5_max_length), "t5_mask": (2, spec.t5_max_length)}
        if self.has("clip_encoders"):
            shapes["clip_l_ids"] = (2, spec.clip_max_length)
            shapes["clip_g_ids"] = (2, spec.clip_max_length)
        h0, w0 = spec.latent_size(0, self.schedule.num_stages)
        shapes["noise"] = (1, C, T, h0, w0)
        for s in range(1, self.schedule.num_stages):
            h, w = spec.latent_size(s, self.schedule.num_stages)
            shapes[f"jump_noise_{s}"] = (1, C, T, h, w)
        return shapes

    def draw_noise(self, seed: int) -> dict[str, torch.Tensor]:
        """Initial noise and stage-jump block noise, from one seeded generator (deterministic on CPU)."""
        gen = torch.Generator().manual_seed(int(seed))
        spec, T, C, S = self.spec, self.spec.latent_frames, self.spec.latent_channels, self.schedule.num_stages
        h, w = spec.latent_size(S - 1, S)
        full = torch.randn((1, C, T, h, w), generator=gen)
        out = {"noise": sched.downsample_noise(full, S - 1)}
        for s in range(1, S):
            hs, ws = spec.latent_size(s, S)
            out[f"jump_noise_{s}"] = sched.block_noise((1, C, T, hs, ws), gen, self.schedule.gamma)
        return out

    def prepare_inputs(self, prompt: str, seed: int, negative_prompt: str | None = None) -> dict[str, torch.Tensor]:
        if self.prompt_encoder is None:
            raise InputError("this pipeline has no tokenizers; it cannot encode prompts")
        neg = self.spec.negative_prompt if negative_prompt is None else negative_prompt
        tokens = self.prompt_encoder.encode_pair(neg, prompt)
        inputs = {k: v for k, v in tokens.items() if k in self.input_shapes()}
        inputs.update(self.draw_noise(seed))
        return inputs

    @torch.no_grad()
    def run_graph(self, inputs: dict[str, torch.Tensor], graph_module: fx.GraphModule | None = None) -> torch.Tensor:
        """Run the pipeline graph (or ``graph_module``, a re-targeted copy of it) on named inputs."""
        gm = self.graph_module if graph_module is None else graph_module
        names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise InputError(f"missing pipeline input '{missing[0]}'")
        return gm(*[inputs[n] for n in names])

    def generate(self, prompt: str, seed: int = 0) -> torch.Tensor:
        """One video ``[1, 3, F, H, W]`` in [-1, 1]."""
        for m in self.components.values():
            m.eval()
        return self.run_graph(self.prepare_inputs(prompt, seed))


# ---------------------------------------------------------------------- emission
class _Emitter:
    def __init__(self, pipe: Pipeline):
        self.pipe = pipe
        self.graph = fx.Graph()

    def fn(self, target, *args, meta: dict | None = None, **kwargs) -> fx.Node:
        node = self.graph.call_function(target, args, kwargs)
        node.meta.update(meta or {})
        return node

    def mod(self, role: str, *args, meta: dict | None = None, **kwargs) -> fx.Node:
        node = self.graph.call_module(role, args, kwargs)
        node.meta.update({"role": role, **(meta or {})})
        return node


def history_clips(unit: int, stage: int, num_stages: int) -> list[tuple[int, int, int]]:
    """The temporal pyramid history for ``unit`` at ``stage``: ``(level, start, end)`` clips, oldest first.

    ``level`` is the downsampling level of the history latents (0 = full, 1 = half, 2 = quarter). At the top stage
    the previous frame is at full resolution, the one before at half and all older at quarter; each lower stage
    shifts that one level down, never below the lowest level (reference/pyramid-flow-facts.md §4.4).
    """
    lowest = num_stages - 1
    top_level = lowest - stage  # resolution level of the current stage
    clips = []
    newest_level_frames = []
    for back in range(1, unit + 1):  # back = 1: previous frame
        level = min(top_level + back - 1, lowest)
        newest_level_frames.append((unit - back, level))
    # group consecutive frames with the same level into one clip, oldest first
    for frame_idx, level in sorted(newest_level_frames):
        if clips and clips[-1][0] == level and clips[-1][2] == frame_idx:
            clips[-1] = (level, clips[-1][1], frame_idx + 1)
        else:
            clips.append((level, frame_idx, frame_idx + 1))
    return clips


def emit_graph(pipe: Pipeline) -> fx.Graph:
    spec, schedule = pipe.spec, pipe.schedule
    S, T = schedule.num_stages, spec.latent_frames
    e = _Emitter(pipe)
    g = e.graph
    shapes = pipe.input_shapes()
    ph = {}
    for name, shape in shapes.items():
        ph[name] = g.placeholder(name)
        ph[name].meta.update({"role": "input", "shape": shape})

    # ---- text side: [negative, positive] rows
    t5_hidden = e.mod("text_encoder", ph["t5_ids"], ph["t5_mask"])
    context = t5_hidden
    if pipe.has("context_embedder"):
        context = e.mod("context_embedder", context)
    if pipe.has("context_adapter"):
        context = e.mod("context_adapter", context, ph["t5_mask"])
    pooled = e.mod("clip_encoders", ph["clip_l_ids"], ph["clip_g_ids"]) if pipe.has("clip_encoders") else None
    text_for = {}
    for cfg in (True, False):
        if cfg:
            text_for[cfg] = (context, ph["t5_mask"], pooled)
        else:
            text_for[cfg] = tuple(None if x is None else e.fn(ops.select_rows, x, 1, 2)
                                  for x in (context, ph["t5_mask"], pooled))

    stages = sched.stage_specs(S, schedule.gamma)
    generated = None  # full-resolution generated latents so far [1, C, k, H, W]
    joint = schedule.temporal == "joint"  # one unit: every latent frame denoised together, no history
    unit_frames = T if joint else 1
    for unit in range(schedule.units(T)):
        steps = schedule.steps_for_unit(unit)
        use_cfg = schedule.uses_cfg(unit)
        scale = schedule.guidance_for_unit(unit)
        ctx, mask, pool = text_for[use_cfg]
        levels = []
        if generated is not None:  # history pyramid: full, half, quarter, ...
            levels = [generated]
            for _ in range(S - 1):
                levels.append(e.fn(ops.down2, levels[-1]))
        x = ph["noise"] if joint else e.fn(ops.frame, ph["noise"], unit, meta={"unit": unit})
        for stage in range(S):
            if stage > 0:
                alpha, beta = sched.jump_coefficients(stages[stage], schedule.gamma)
                jump = ph[f"jump_noise_{stage}"] if joint else e.fn(ops.frame, ph[f"jump_noise_{stage}"], unit)
                x = e.fn(ops.stage_jump, x, jump, alpha, beta, meta={"unit": unit, "stage": stage})
            clips = []
            clip_shapes = []
            for level, start, end in history_clips(unit, stage, S):
                clip = e.fn(ops.frames, levels[level], start, end)
                clips.append(e.fn(ops.cfg_batch, clip) if use_cfg else clip)
                hl, wl = spec.latent_size(S - 1 - level, S)
                clip_shapes.append((end - start, hl, wl))
            extra_inputs = {}
            static = getattr(pipe.component("denoiser"), "emit_static_inputs", None)
            padded = static(e.fn, unit, stage, S, clips, x, 2 if use_cfg else 1) if static is not None else None
            if padded is not None:  # static-shape pass: history padded to the stage's fixed layout
                clips, clip_shapes, extra_inputs = padded
            h, w = spec.latent_size(stage, S)
            timesteps = sched.stage_timesteps(stages[stage], steps[stage])
            sigmas = sched.local_sigmas(steps[stage])
            image_tokens = sum(t * (hh // spec.patch_size) * (ww // spec.patch_size)
                               for t, hh, ww in clip_shapes + [(unit_frames, h, w)])
            signature = (tuple(clip_shapes), (unit_frames, h, w), 2 if use_cfg else 1)
            precompute = getattr(pipe.component("denoiser"), "emit_precomputed_inputs", None)
            for step in range(steps[stage]):
                x_in = e.fn(ops.cfg_batch, x) if use_cfg else x
                t_in = e.fn(ops.timestep, float(timesteps[step]), x_in)
                call = dict(sample=[clips + [x_in]], encoder_hidden_states=ctx, encoder_attention_mask=mask,
                            pooled_projections=pool, timestep_ratio=t_in, **extra_inputs)
                if precompute is not None:  # precompute-inputs: temb / RoPE / mask / positions fed in
                    call = precompute(g, call, timestep=float(timesteps[step]), clip_shapes=clip_shapes + [(unit_frames, h, w)],
                                      batch=2 if use_cfg else 1, text_length=spec.t5_max_length)
                out = e.mod("denoiser", **call,
                            meta={"unit": unit, "stage": stage, "step": step, "nfe": 2 if use_cfg else 1,
                                  "timestep": float(timesteps[step]), "image_tokens": image_tokens,
                                  "text_tokens": spec.t5_max_length, "signature": signature,
                                  "history": tuple(clip_shapes)})
                v = e.fn(ops.first_output, out)
                if use_cfg:
                    v = e.fn(ops.cfg_combine, v, scale)
                x = e.fn(ops.euler_step, x, v, float(sigmas[step]), float(sigmas[step + 1]),
                         meta={"unit": unit, "stage": stage, "step": step})
        generated = x if generated is None else e.fn(ops.cat_frames, generated, x)

    video = e.mod("vae_decoder", generated)
    if pipe.has("upsampler"):
        video = e.mod("upsampler", video)
    g.output(video)
    g.lint()
    return g


def iter_denoiser_calls(pipe: Pipeline) -> Iterator[dict]:
    for n in pipe.denoiser_nodes():
        yield dict(n.meta)
