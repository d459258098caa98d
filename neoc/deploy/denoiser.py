"""``DeployDenoiser``: the Pyramid MMDiT with its deployment rewrites recorded, so run folders rebuild them.

Neodragon §4.1 turns the denoiser into NPU-friendly graphs without changing its function. The rewrites live on
one wrapper component whose JSON config lists them (the MMDiT's own config cannot):

* ``rope="4d"``: the temporal RoPE table and its application in <=4D form (:mod:`neoc.deploy.rope`),
  installed by the ``rope-rank-reduction`` pass;
* ``mask_fill_value``: a finite additive attention mask instead of the boolean one (``mask-value``);
* ``static_layout``: per pyramid stage, the padded history clips every latent frame's call uses
  (``static-shape``); the pipeline emitter then pads each call's history through :meth:`emit_static_inputs`;
* ``precomputed``: the timestep embedding, RoPE table, attention mask and positional embeddings are computed
  outside the DiT and passed in (``precompute-inputs``, :mod:`neoc.deploy.precompute`); the pipeline emitter
  asks :meth:`emit_precomputed_inputs` for them on every call.

The wrapper keeps the MMDiT call signature (``sample, encoder_hidden_states, encoder_attention_mask,
pooled_projections, timestep_ratio``) and adds ``frame_valid`` / ``frame_time`` for padded calls: per latent frame
of the padded clip list (oldest first, the current frame last), 1/0 validity and the RoPE time id. A precomputed
call passes ``temb`` [B, D], ``rope`` (the joint RoPE table), ``attention_mask`` [B, 1, L, L] and ``positions``
(one [1, h*w, D] table per clip) and leaves ``encoder_attention_mask`` / ``pooled_projections`` /
``timestep_ratio`` as None: the DiT graph's inputs are then the clips, the context and those four (a padded call
still carries ``frame_valid`` / ``frame_time``, unused by the DiT then, so same-input probes can rebuild it).
"""

from __future__ import annotations

import weakref
from typing import Sequence

import torch
from torch import nn

from neoc.deploy.rope import ApplyRoPE4D, TemporalRoPE4D
from neoc.errors import InputError
from neoc.ir.components import register_builder
from neoc.models.mmdit import ApplyRoPE6D, PyramidMMDiT, TemporalRoPE

RopeForm = str  # "6d" (reference) or "4d"
# static layout of one stage: history clips oldest first, each (level, frames, height, width) in latents
StageLayout = list[tuple[int, int, int, int]]


class DeployDenoiser(nn.Module):
    """Wraps a :class:`PyramidMMDiT` (``self.mmdit``) and applies the recorded deployment rewrites."""

    def __init__(self, mmdit: PyramidMMDiT, rope: RopeForm = "6d", mask_fill_value: float | None = None,
                 static_layout: Sequence[StageLayout] | None = None, precomputed: bool = False):
        super().__init__()
        if not isinstance(mmdit, PyramidMMDiT):
            raise InputError(f"deployment rewrites need a PyramidMMDiT denoiser, got {type(mmdit).__name__}")
        self.mmdit = mmdit
        self.rope_form: RopeForm = "6d"
        self.static_layout: list[StageLayout] | None = None
        if rope == "4d":
            self.reduce_rope_rank()
        elif rope != "6d":
            raise InputError(f"DeployDenoiser: unknown rope form {rope!r} (expected '6d' or '4d')")
        self.set_mask_fill_value(mask_fill_value)
        if static_layout is not None:
            self.set_static_layout(static_layout)
        self.precomputed = bool(precomputed)

    # ------------------------------------------------------------------ rewrites
    def reduce_rope_rank(self) -> None:
        """Swap the 6D RoPE table and every attention's 6D application for the <=4D modules."""
        if self.rope_form == "4d":
            raise InputError("the denoiser's RoPE is already in 4D form")
        rope = self.mmdit.temporal_rope
        if not isinstance(rope, TemporalRoPE):
            raise InputError("the denoiser has no 6D temporal RoPE to rewrite")
        self.mmdit.temporal_rope = TemporalRoPE4D(rope.head_dim, rope.theta)
        for block in self.mmdit.transformer_blocks:
            if not isinstance(block.attn.apply_rope, ApplyRoPE6D):
                raise InputError("an attention layer's RoPE application is not the reference 6D form")
            block.attn.apply_rope = ApplyRoPE4D()
        self.rope_form = "4d"

    @property
    def mask_fill_value(self) -> float | None:
        return self.mmdit.attention_mask_fill_value

    def set_mask_fill_value(self, value: float | None) -> None:
        self.mmdit.attention_mask_fill_value = None if value is None else float(value)

    def set_static_layout(self, layout: Sequence[StageLayout]) -> None:
        self.static_layout = [[tuple(int(v) for v in clip) for clip in stage] for stage in layout]

    # ------------------------------------------------------------------ what other code reads
    @property
    def inner_dim(self) -> int:
        return self.mmdit.inner_dim

    @property
    def patch_size(self) -> int:
        return self.mmdit.patch_size

    # ------------------------------------------------------------------ forward
    def forward(self, sample, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None,
                pooled_projections: torch.Tensor | None, timestep_ratio: torch.Tensor | None,
                frame_valid: torch.Tensor | None = None, frame_time: torch.Tensor | None = None,
                temb: torch.Tensor | None = None, rope: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                positions: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        if temb is not None:  # precomputed inputs: only the DiT itself runs here
            return [self.forward_precomputed(sample, encoder_hidden_states, temb, rope, attention_mask, positions)]
        if frame_valid is None:
            return self.mmdit(sample, encoder_hidden_states, encoder_attention_mask, pooled_projections,
                              timestep_ratio)
        if len(sample) != 1:
            raise ValueError("a padded (static-shape) call takes one stage entry")
        clips = sample[0]
        mmdit = self.mmdit
        temb = mmdit.time_text_embed(timestep_ratio, pooled_projections)  # [B, D]
        context = mmdit.context_embedder(encoder_hidden_states)  # [B, Lt, D]
        image_valid, image_time = frame_to_token_values(clips, mmdit.patch_size, frame_valid, frame_time)
        return [mmdit.forward_clips(clips, context, encoder_attention_mask, temb, image_valid, image_time)]

    def forward_precomputed(self, sample, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                            rope: torch.Tensor | None, attention_mask: torch.Tensor,
                            positions: Sequence[torch.Tensor]) -> torch.Tensor:
        """The DiT graph of a precomputed call (one stage entry): clips -> prediction [B, C, T, H, W]."""
        from neoc.deploy.precompute import embed_clips

        if len(sample) != 1:
            raise ValueError("a precomputed call takes one stage entry")
        clips = sample[0]
        mmdit = self.mmdit
        context = mmdit.context_embedder(encoder_hidden_states)  # [B, Lt, D]
        image = embed_clips(mmdit.pos_embed, clips, positions)  # [B, Li, D]
        if attention_mask.is_floating_point():
            attention_mask = attention_mask.to(image.dtype)
        current = clips[-1]
        return mmdit.forward_tokens(image, context, temb, attention_mask, rope, tuple(current.shape[2:]))

    # ------------------------------------------------------------------ pipeline emission hooks
    def emit_static_inputs(self, fn, unit: int, stage: int, num_stages: int, clips: list, like, batch: int):
        """Called by the pipeline emitter for every (latent frame, stage): the history clips padded to the
        stage's static layout, their shapes, and the extra denoiser kwargs. Without a static layout: ``None``."""
        if self.static_layout is None:
            return None
        return pad_call_inputs(fn, self.static_layout[stage], unit, stage, num_stages, clips, like, batch)

    def emit_precomputed_inputs(self, graph, call: dict, *, timestep: float, clip_shapes: list, batch: int,
                                text_length: int) -> dict:
        """Called by the pipeline emitter for every denoiser call with its keyword inputs (graph nodes):
        without ``precomputed`` the call unchanged, else the call with ``temb`` / ``rope`` / ``attention_mask``
        / ``positions`` nodes (see :mod:`neoc.deploy.precompute`). Nodes are shared within one emitted graph:
        the timestep embedding once per (timestep, text rows), the positions once per layout, the mask once per
        (layout, text rows); the RoPE table is a cached constant."""
        if not self.precomputed:
            return call
        return emit_precomputed_call(self, graph, call, timestep, clip_shapes, batch, text_length)


# ---------------------------------------------------------------------------------------------------
# padding (graph ops: plain functions of tensors and static numbers)
# ---------------------------------------------------------------------------------------------------


def pad_history_clip(clip: torch.Tensor | None, like: torch.Tensor, frames: int, height: int, width: int,
                     batch: int) -> torch.Tensor:
    """``clip`` [B, C, t, H, W] with zero frames prepended to ``frames``; None -> an all-zero clip."""
    real = 0 if clip is None else clip.shape[2]
    zeros = like.new_zeros((batch, like.shape[1], frames - real, height, width))  # [B, C, frames-t, H, W]
    return zeros if clip is None else torch.cat([zeros, clip], dim=2)


def frame_vector(values: tuple) -> torch.Tensor:
    """A static per-frame vector (validity or time ids) as a float32 tensor."""
    return torch.tensor(values, dtype=torch.float32)


def frame_to_token_values(clips: Sequence[torch.Tensor], patch_size: int, frame_valid: torch.Tensor,
                          frame_time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame validity/time [F] -> per-token [Li] (each frame's value repeated over its h*w patches)."""
    device = clips[-1].device
    frame_valid, frame_time = frame_valid.to(device), frame_time.to(device)
    valid, time = [], []
    start = 0
    for clip in clips:
        frames, tokens = clip.shape[2], (clip.shape[3] // patch_size) * (clip.shape[4] // patch_size)
        valid.append(frame_valid[start:start + frames].repeat_interleave(tokens))
        time.append(frame_time[start:start + frames].repeat_interleave(tokens))
        start += frames
    if start != frame_valid.shape[0]:
        raise ValueError(f"frame_valid has {frame_valid.shape[0]} entries for {start} latent frames")
    return torch.cat(valid) > 0.5, torch.cat(time)


def stage_layout(spec, stage: int, num_stages: int) -> StageLayout:
    """The longest history of ``stage``: the last latent frame's (facts §4.4), as (level, frames, h, w)."""
    from neoc.ir.pipeline import history_clips

    layout = []
    for level, start, end in history_clips(spec.latent_frames - 1, stage, num_stages):
        height, width = spec.latent_size(num_stages - 1 - level, num_stages)
        layout.append((level, end - start, height, width))
    return layout


def padded_frame_values(layout: StageLayout, unit: int, stage: int, num_stages: int):
    """For latent frame ``unit``: real history frames per layout clip, and the per-frame validity and time ids
    (padding first within each clip, real frames keep their reference times 0..unit-1, the current frame
    ``unit``; padded frames get time 0 and only ever see padding)."""
    from neoc.ir.pipeline import history_clips

    real_frames = {level: end - start for level, start, end in history_clips(unit, stage, num_stages)}
    unknown = set(real_frames) - {level for level, *_ in layout}
    if unknown or any(real_frames.get(level, 0) > frames for level, frames, _, _ in layout):
        raise InputError(f"latent frame {unit}'s history does not fit the static layout of stage {stage}")
    valid, time = [], []
    next_time = 0
    for level, frames, _, _ in layout:
        real = real_frames.get(level, 0)
        valid += [0.0] * (frames - real) + [1.0] * real
        time += [0.0] * (frames - real) + [float(next_time + i) for i in range(real)]
        next_time += real
    return real_frames, tuple(valid + [1.0]), tuple(time + [float(unit)])


def pad_call_inputs(fn, layout: StageLayout, unit: int, stage: int, num_stages: int, clips: list, like, batch: int):
    """Emit (through ``fn(target, *args)``) the padded history clips of one call: returns (clips, clip_shapes,
    extra kwargs). ``clips`` are the real history clips in ``history_clips`` order."""
    from neoc.ir.pipeline import history_clips

    real_frames, valid, time = padded_frame_values(layout, unit, stage, num_stages)
    by_level = {level: clip for (level, _, _), clip in zip(history_clips(unit, stage, num_stages), clips)}
    padded, shapes = [], []
    for level, frames, height, width in layout:
        padded.append(fn(pad_history_clip, by_level.get(level), like, frames, height, width, batch))
        shapes.append((frames, height, width))
    extra = {"frame_valid": fn(frame_vector, valid), "frame_time": fn(frame_vector, time)}
    return padded, shapes, extra


# ---------------------------------------------------------------------------------------------------
# precomputed inputs (graph emission)
# ---------------------------------------------------------------------------------------------------

_EMITTED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # fx.Graph -> {key: node}


def _static_frame_values(node) -> tuple | None:
    """The static tuple behind a ``frame_vector(values)`` node (or None)."""
    if node is None:
        return None
    if getattr(node, "target", None) is not frame_vector:
        raise ValueError(f"denoiser input {node} is not a static frame vector")
    return tuple(node.args[0])


def emit_precomputed_call(denoiser: DeployDenoiser, graph, call: dict, timestep: float, clip_shapes: list,
                          batch: int, text_length: int) -> dict:
    from neoc.deploy import precompute as pre

    mmdit = denoiser.mmdit
    memo = _EMITTED.setdefault(graph, {})

    def shared(key, make):
        if key not in memo:
            memo[key] = make()
        return memo[key]

    pooled, text_mask = call["pooled_projections"], call["encoder_attention_mask"]
    if pooled is None:
        raise InputError("precomputed denoiser inputs need the pooled text projection (CLIP) of every call")
    layout = pre.call_layout(clip_shapes, mmdit.patch_size, _static_frame_values(call.get("frame_time")),
                             _static_frame_values(call.get("frame_valid")))

    def make_temb():
        ratio = graph.call_function(pre.timestep_embedding_inputs, (float(timestep), pooled))
        node = graph.call_module("denoiser.mmdit.time_text_embed", (ratio, pooled))
        node.meta.update({"role": "denoiser_inputs", "timestep": float(timestep)})
        return node

    def make_positions():
        table = graph.get_attr("denoiser.mmdit.pos_embed.pos_embed")
        hws = tuple((h // mmdit.patch_size, w // mmdit.patch_size) for _, h, w in clip_shapes)
        return graph.call_function(pre.clip_positions, (table, mmdit.pos_embed.pos_embed_max_size,
                                                        mmdit.pos_embed.interp_condition_pos, hws))

    rope = None
    if mmdit.temporal_rope is not None:
        rope = shared(("rope", layout, text_length, batch), lambda: graph.call_function(
            pre.rope_table, (layout, text_length, batch, mmdit.temporal_rope.head_dim,
                             float(mmdit.temporal_rope.theta), denoiser.rope_form)))
    mask = shared(("mask", layout, text_mask.name, mmdit.use_temporal_causal, denoiser.mask_fill_value),
                  lambda: graph.call_function(pre.joint_attention_mask, (text_mask, layout, mmdit.use_temporal_causal,
                                                                         denoiser.mask_fill_value)))
    return {**call, **{name: None for name in pre.REPLACED_KWARGS},
            "temb": shared(("temb", float(timestep), pooled.name), make_temb),
            "rope": rope, "attention_mask": mask,
            "positions": shared(("positions", tuple(clip_shapes)), make_positions)}


# ---------------------------------------------------------------------------------------------------
# finding / installing the wrapper, run-folder builder
# ---------------------------------------------------------------------------------------------------


def deploy_denoiser(pipeline) -> DeployDenoiser:
    """The pipeline's denoiser as a DeployDenoiser (wrapping the MMDiT in place if it is not one yet)."""
    denoiser = pipeline.component("denoiser")
    if isinstance(denoiser, DeployDenoiser):
        return denoiser
    if not isinstance(denoiser, PyramidMMDiT):
        raise InputError(f"the denoiser is a {type(denoiser).__name__}; deployment passes need the Pyramid MMDiT")
    return DeployDenoiser(denoiser)


def mmdit_of(denoiser: nn.Module) -> PyramidMMDiT | None:
    if isinstance(denoiser, DeployDenoiser):
        return denoiser.mmdit
    return denoiser if isinstance(denoiser, PyramidMMDiT) else None


def require_mmdit(pipeline, pass_name: str) -> tuple[nn.Module, PyramidMMDiT]:
    """The pipeline's denoiser and its Pyramid MMDiT, or :class:`~neoc.errors.CheckFailed` naming the pass (the
    deployment passes' shared precondition)."""
    from neoc.errors import CheckFailed

    denoiser = pipeline.component("denoiser")
    mmdit = mmdit_of(denoiser)
    if mmdit is None:
        raise CheckFailed(f"{pass_name}: the denoiser ({type(denoiser).__name__}) is not a Pyramid MMDiT")
    return denoiser, mmdit


def _describe(module: DeployDenoiser) -> dict:
    from neoc.zoo.components import describe_mmdit

    return {"mmdit": describe_mmdit(module.mmdit), "rope": module.rope_form,
            "mask_fill_value": module.mask_fill_value,
            "static_layout": None if module.static_layout is None else [[list(c) for c in s]
                                                                       for s in module.static_layout],
            "precomputed": module.precomputed}


def _build(config: dict, device: str | None = None) -> DeployDenoiser:
    from neoc.zoo.components import build_mmdit

    return DeployDenoiser(build_mmdit(config["mmdit"], device=device), rope=config.get("rope", "6d"),
                          mask_fill_value=config.get("mask_fill_value"), static_layout=config.get("static_layout"),
                          precomputed=config.get("precomputed", False))


register_builder("neoc.DeployDenoiser", DeployDenoiser, _build, _describe)
