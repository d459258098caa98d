"""Precomputed denoiser inputs (Neodragon §4.1, "Precomputation of DiT inputs").

The MMDiT's input-merge step computes, on every call, things that are fixed for a static shape or for a step of a
fixed schedule. Deployed, they become inputs (or constants) of the DiT graph instead:

* the **timestep embedding** ``temb = MLP(sinusoid(t)) + MLP(pooled text)`` [B, D]: with a fixed schedule it is
  one vector per (timestep, prompt), computed once outside the DiT graph and reused by every latent frame;
* the **RoPE table** of the joint ``[text; image]`` sequence (6D ``[B, L, 1, Dh/2, 2, 2]`` or, after
  ``rope-rank-reduction``, 4D ``[B, L, 2, Dh]``): it depends only on the token time ids of the call layout;
* the **attention mask** [B, 1, L, L] (boolean, or additive 0 / fill value after ``mask-value``): text padding
  of the prompt combined with the static causal / padding structure of the call layout;
* the **positional embeddings** of every clip ([1, h*w, D] each): crops of the sincos table, fixed per layout.

Everything is a plain function of tensors and static numbers, so the pipeline emitter writes them as graph nodes
(constants where they have no tensor inputs; :func:`rope_table` results are cached).
A call layout is described per latent frame, oldest first, the current frame last: its time id, its validity and
its number of image tokens (:class:`CallLayout`).
"""

from __future__ import annotations

import functools
import types
from typing import NamedTuple, Sequence

import torch

from neoc.models.mmdit import PyramidPatchEmbed, TemporalRoPE, attention_bias_from_mask, build_joint_attention_mask

#: the denoiser keyword inputs that the precomputed call form adds (and the three it no longer needs)
PRECOMPUTED_KWARGS = ("temb", "rope", "attention_mask", "positions")
REPLACED_KWARGS = ("encoder_attention_mask", "pooled_projections", "timestep_ratio")


class CallLayout(NamedTuple):
    """Static token layout of one denoiser call: per latent frame (oldest first, current last)."""

    frame_time: tuple[float, ...]  # RoPE / causality time id
    frame_valid: tuple[float, ...]  # 1 real, 0 static-shape padding
    frame_tokens: tuple[int, ...]  # image tokens of the frame (h/p * w/p)

    def token_values(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image token: validity (bool) and time id (float32), each [Li]."""
        repeats = torch.tensor(self.frame_tokens, device=device)
        time = torch.tensor(self.frame_time, dtype=torch.float32, device=device).repeat_interleave(repeats)
        valid = torch.tensor(self.frame_valid, dtype=torch.float32, device=device).repeat_interleave(repeats)
        return valid > 0.5, time


def call_layout(clip_shapes: Sequence[tuple[int, int, int]], patch_size: int,
                frame_time: Sequence[float] | None = None, frame_valid: Sequence[float] | None = None) -> CallLayout:
    """Layout of a call with clips of ``(frames, height, width)`` latents (the current clip last). Without
    ``frame_time`` / ``frame_valid`` (no static-shape padding) frames are all valid, numbered 0, 1, ..."""
    tokens = tuple((h // patch_size) * (w // patch_size) for t, h, w in clip_shapes for _ in range(t))
    time = tuple(float(i) for i in range(len(tokens))) if frame_time is None else tuple(map(float, frame_time))
    valid = (1.0,) * len(tokens) if frame_valid is None else tuple(map(float, frame_valid))
    if not len(time) == len(valid) == len(tokens):
        raise ValueError(f"layout has {len(tokens)} frames but {len(time)} time ids and {len(valid)} validity flags")
    return CallLayout(time, valid, tokens)


# ---------------------------------------------------------------------------------------------------
# the precomputed values (graph-node targets: functions of tensors and static numbers)
# ---------------------------------------------------------------------------------------------------


def joint_attention_mask(text_mask: torch.Tensor, layout: CallLayout, causal: bool,
                         fill_value: float | None) -> torch.Tensor:
    """The denoiser's attention mask for one call: [B, 1, Lt+Li, Lt+Li], boolean (``fill_value`` None) or
    additive float32 0 / ``fill_value`` — exactly what ``PyramidMMDiT.forward_clips`` builds."""
    image_valid, image_time = layout.token_values(text_mask.device)
    mask = build_joint_attention_mask(text_mask, image_time, causal, image_valid)
    return attention_bias_from_mask(mask, fill_value, torch.float32)


@functools.lru_cache(maxsize=256)
def rope_table(layout: CallLayout, text_length: int, batch: int, head_dim: int, theta: float,
               form: str) -> torch.Tensor:
    """The joint-sequence RoPE table (text at time 0) in the denoiser's form: ``"6d"`` [B, L, 1, Dh/2, 2, 2]
    or ``"4d"`` [B, L, 2, Dh]. A constant of the layout (cached: callers must not modify it in place)."""
    from neoc.deploy.rope import TemporalRoPE4D

    _, image_time = layout.token_values()
    joint_time = torch.cat([torch.zeros(text_length), image_time])[None, :].expand(batch, -1)  # [B, L]
    table = (TemporalRoPE4D if form == "4d" else TemporalRoPE)(head_dim, theta)
    return table(joint_time)


def clip_positions(table: torch.Tensor, grid: int, interp: bool, clip_hws: tuple[tuple[int, int], ...],
                   ) -> tuple[torch.Tensor, ...]:
    """Per clip (patch-grid sizes ``clip_hws``, the current clip last) its [1, h*w, D] sincos positions, cropped
    from ``table`` (the patch embedding's ``pos_embed`` buffer) exactly as ``PyramidPatchEmbed`` does."""
    view = types.SimpleNamespace(pos_embed=table, pos_embed_max_size=grid, interp_condition_pos=interp)
    return tuple(PyramidPatchEmbed.spatial_position(view, hw, clip_hws[-1]) for hw in clip_hws)


def embed_clips(patch_embed: PyramidPatchEmbed, clips: Sequence[torch.Tensor],
                positions: Sequence[torch.Tensor]) -> torch.Tensor:
    """``PyramidPatchEmbed.forward`` with the positions given: clips [B, C, T_i, H_i, W_i] -> [B, Li, D]."""
    tokens = []
    for clip, position in zip(clips, positions, strict=True):
        batch, channels, frames, height, width = clip.shape
        frames_2d = clip.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        patches = patch_embed.proj(frames_2d).flatten(2).transpose(1, 2)  # [B*T, h*w, D]
        patches = (patches + position).to(patches.dtype)
        tokens.append(patches.reshape(batch, -1, patches.shape[-1]))  # [B, T*h*w, D]
    return torch.cat(tokens, dim=1)


def timestep_embedding_inputs(value: float, like: torch.Tensor) -> torch.Tensor:
    """The timestep ``value`` (0..1000 scale) as a [B] float32 tensor for ``like``'s batch."""
    return torch.full((like.shape[0],), float(value), dtype=torch.float32, device=like.device)


def precompute_call(denoiser, call: dict) -> dict:
    """Eagerly turn a standard denoiser call (``sample, encoder_hidden_states, encoder_attention_mask,
    pooled_projections, timestep_ratio`` [+ ``frame_valid``, ``frame_time``]) into its precomputed form: the same
    values the pipeline graph feeds a ``precomputed`` :class:`~neoc.deploy.denoiser.DeployDenoiser`."""
    from neoc.deploy.denoiser import DeployDenoiser, mmdit_of

    mmdit = mmdit_of(denoiser)
    clips = call["sample"][0]
    frame_valid, frame_time = call.get("frame_valid"), call.get("frame_time")
    layout = call_layout([tuple(c.shape[2:]) for c in clips], mmdit.patch_size,
                         None if frame_time is None else frame_time.tolist(),
                         None if frame_valid is None else frame_valid.tolist())
    batch, text_length = clips[-1].shape[0], call["encoder_hidden_states"].shape[1]
    rope = None
    if mmdit.temporal_rope is not None:
        form = denoiser.rope_form if isinstance(denoiser, DeployDenoiser) else "6d"
        rope = rope_table(layout, text_length, batch, mmdit.temporal_rope.head_dim, float(mmdit.temporal_rope.theta),
                          form)
    hws = tuple((c.shape[3] // mmdit.patch_size, c.shape[4] // mmdit.patch_size) for c in clips)
    return {"sample": [list(clips)], "encoder_hidden_states": call["encoder_hidden_states"],
            "encoder_attention_mask": None, "pooled_projections": None, "timestep_ratio": None,
            "temb": mmdit.time_text_embed(call["timestep_ratio"], call["pooled_projections"]),
            "rope": rope,
            "attention_mask": joint_attention_mask(call["encoder_attention_mask"], layout, mmdit.use_temporal_causal,
                                                   mmdit.attention_mask_fill_value),
            "positions": clip_positions(mmdit.pos_embed.pos_embed, mmdit.pos_embed.pos_embed_max_size,
                                        mmdit.pos_embed.interp_condition_pos, hws)}
