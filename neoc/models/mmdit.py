"""Pyramid-Flow's SD3-variant MMDiT denoiser (``PyramidDiffusionMMDiT``), weight-compatible.

Reference: reference/pyramid-flow-facts.md §2 (architecture) and §6 (state-dict keys); the released
``diffusion_transformer_384p/config.json`` plus the load-time overrides of ``build_pyramid_dit``
(``add_temp_pos_embed=True, temp_pos_embed_type='rope', use_temporal_causal=True,
interp_condition_pos=True, use_t5_mask=True``).

One denoiser forward sees, per *stage entry*, a list of latent clips ordered oldest -> newest; the last
clip is the current (noisy) one, the others are clean history at the same or a lower resolution
(the temporal pyramid, facts §4.4). All clips are patch-embedded frame by frame, concatenated into one
token sequence after the T5 text tokens, and processed by 24 joint (MMDiT) blocks with:

* absolute 2D sincos positions: a centre crop of a 192x192 grid at the *current* clip's patch size,
  bilinearly shrunk for lower-resolution history clips (``interp_condition_pos``);
* temporal 1D RoPE over the full head dim on q and k of the joint ``[text; image]`` sequence, text at
  time 0 and video frames numbered 0, 1, ... from the oldest frame;
* a boolean attention mask combining T5 padding (padded text only sees padded text) and temporal
  causality (``time_q >= time_k``), see :func:`build_joint_attention_mask`.

Only the tokens of the current clip are projected back to latent space.

Hooks for later passes (defaults reproduce the reference exactly):

* :class:`TemporalRoPE` computes the 6D rotation tensor ``[B, L, 1, D/2, 2, 2]`` and
  :class:`ApplyRoPE6D` applies it; the ``rope-rank-reduction`` pass swaps both for a <=4D form.
* ``PyramidMMDiT.attention_mask_fill_value`` is ``None`` (boolean mask straight into SDPA); the
  ``mask-value`` pass sets it to a finite float to use an additive mask instead.
* :meth:`PyramidMMDiT.split_context_embedder` moves the T5 context projection out of the denoiser.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from neoc.errors import InputError

# Keys of the released config.json that only describe the file, never the architecture.
CONFIG_METADATA_KEYS = ("_class_name", "_diffusers_version")

# What ``build_pyramid_dit`` forces on top of the released config.json at load time (facts §1, §2.1).
LOAD_TIME_OVERRIDES = {
    "use_t5_mask": True,
    "add_temp_pos_embed": True,
    "temp_pos_embed_type": "rope",
    "use_temporal_causal": True,
    "interp_condition_pos": True,
}


# ---------------------------------------------------------------------------------------------------
# Position embeddings
# ---------------------------------------------------------------------------------------------------


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """1D sincos embedding ``[sin(p*w_0..w_{D/2-1}) | cos(...)]`` with ``w_i = 10000^(-i/(D/2))``.

    ``positions``: [M] (any float dtype, computed in float64) -> [M, embed_dim] float64.
    """
    if embed_dim % 2 != 0:
        raise ValueError(f"sincos embedding dim must be even, got {embed_dim}")
    half = embed_dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)  # [D/2]
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]  # [M, D/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d_grid(embed_dim: int, grid_size: int, base_size: int, interpolation_scale: float = 1.0) -> torch.Tensor:
    """SD3's 2D sincos table for a ``grid_size x grid_size`` patch grid -> [grid_size**2, embed_dim] fp32.

    Grid coordinates are ``index / (grid_size / base_size) / interpolation_scale`` (float32, then the
    trigonometry in float64, as the reference does in numpy). Rows are ordered (row, column), row-major.
    The first half of the channels encodes the **column** coordinate and the second half the **row**
    coordinate (the reference's ``meshgrid(grid_w, grid_h)`` puts the column grid first); each half is
    ``[sin | cos]`` with ``omega_i = 10000^(-i/(D/4))``.
    """
    if embed_dim % 2 != 0:
        raise ValueError(f"2D sincos embedding dim must be even, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float32) / (grid_size / base_size) / interpolation_scale
    rows = coords[:, None].expand(grid_size, grid_size).reshape(-1)  # [G*G], row index of each token
    cols = coords[None, :].expand(grid_size, grid_size).reshape(-1)  # [G*G], column index
    emb = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    return emb.float()


class PyramidPatchEmbed(nn.Module):
    """Per-frame 2x2 patch embedding plus the cropped/interpolated 2D sincos position (facts §2.2).

    State: ``proj`` (Conv2d in_channels -> hidden, k = s = patch) and the *persistent* buffer
    ``pos_embed`` [1, max_size**2, hidden] (it is stored in the released checkpoint). With
    ``add_temp_pos_embed`` and ``temp_pos_embed_type='sincos'`` (not the released setting) a persistent
    ``temp_pos_embed`` [1, max_num_frames, hidden] is added per frame as in the reference.
    """

    def __init__(
        self,
        sample_size: int,
        patch_size: int,
        in_channels: int,
        embed_dim: int,
        pos_embed_max_size: int,
        max_num_frames: int,
        interp_condition_pos: bool,
        add_temporal_sincos: bool,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.pos_embed_max_size = pos_embed_max_size
        self.interp_condition_pos = interp_condition_pos
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)
        base_size = sample_size // patch_size
        table = sincos_2d_grid(embed_dim, pos_embed_max_size, base_size=base_size, interpolation_scale=1)
        self.register_buffer("pos_embed", table.unsqueeze(0), persistent=True)  # [1, G*G, D]
        self.add_temporal_sincos = add_temporal_sincos
        if add_temporal_sincos:
            temporal = sincos_1d(embed_dim, torch.arange(max_num_frames, dtype=torch.float32)).float()
            self.register_buffer("temp_pos_embed", temporal.unsqueeze(0), persistent=True)  # [1, F, D]

    def spatial_position(self, clip_hw: tuple[int, int], current_hw: tuple[int, int]) -> torch.Tensor:
        """Position table for one clip: [1, h*w, D] with h, w the clip's patch-grid size.

        The crop is centred in the max-size grid at the *current* clip's patch size; a lower-resolution
        history clip gets that crop bilinearly resized to its own grid (``interp_condition_pos``).
        """
        height, width = clip_hw
        cur_height, cur_width = current_hw
        grid = self.pos_embed_max_size
        for name, size in (("height", height), ("width", width)):
            if size > grid:
                raise InputError(f"latent patch-grid {name} {size} exceeds pos_embed_max_size {grid}")
        table = self.pos_embed.reshape(1, grid, grid, -1)  # [1, G, G, D]
        if self.interp_condition_pos:
            if cur_height < height or cur_width < width:
                raise InputError("history clips must not be larger than the current clip")
            top, left = (grid - cur_height) // 2, (grid - cur_width) // 2
            crop = table[:, top : top + cur_height, left : left + cur_width, :]
            if (cur_height, cur_width) != (height, width):
                crop = F.interpolate(crop.permute(0, 3, 1, 2), size=(height, width), mode="bilinear")
                crop = crop.permute(0, 2, 3, 1)
        else:
            top, left = (grid - height) // 2, (grid - width) // 2
            crop = table[:, top : top + height, left : left + width, :]
        return crop.reshape(1, height * width, -1)

    def forward(self, clips: Sequence[torch.Tensor]) -> torch.Tensor:
        """``clips``: list of [B, C, T_i, H_i, W_i], oldest first -> tokens [B, sum_i T_i*h_i*w_i, D]."""
        p = self.patch_size
        current_hw = (clips[-1].shape[-2] // p, clips[-1].shape[-1] // p)
        tokens_per_clip = []
        time_index = 0
        for clip in clips:
            batch, channels, frames, height, width = clip.shape
            frames_2d = clip.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
            patches = self.proj(frames_2d)  # [B*T, D, h, w]
            patches = patches.flatten(2).transpose(1, 2)  # [B*T, h*w, D]
            position = self.spatial_position((height // p, width // p), current_hw)
            if self.add_temporal_sincos:
                summed = patches + position
                summed = summed.reshape(batch, frames, -1, summed.shape[-1])  # [B, T, N, D]
                temporal = self.temp_pos_embed[:, time_index : time_index + frames, :]  # [1, T, D]
                patches = (summed + temporal[:, :, None, :]).to(patches.dtype)
            else:
                patches = (patches + position).to(patches.dtype)
                patches = patches.reshape(batch, frames, -1, patches.shape[-1])  # [B, T, N, D]
            tokens_per_clip.append(patches.reshape(batch, -1, patches.shape[-1]))  # [B, T*N, D]
            time_index += frames
        return torch.cat(tokens_per_clip, dim=1)


def clip_time_ids(clips: Sequence[torch.Tensor], patch_size: int) -> torch.Tensor:
    """Temporal id of every video token: [L_img] float, 0 for the oldest frame, +1 per latent frame."""
    ids = []
    start = 0
    for clip in clips:
        frames, height, width = clip.shape[2], clip.shape[3] // patch_size, clip.shape[4] // patch_size
        frame_ids = torch.arange(start, start + frames, dtype=torch.float32, device=clip.device)
        ids.append(frame_ids.repeat_interleave(height * width))
        start += frames
    return torch.cat(ids)


class TemporalRoPE(nn.Module):
    """Temporal rotary table over the full head dim (facts §2.2, reference ``EmbedNDRoPE`` with one axis).

    ``forward(time_ids [B, L]) -> [B, L, 1, head_dim/2, 2, 2]`` float32, each 2x2 block
    ``[[cos a, -sin a], [sin a, cos a]]`` with ``a = t * theta^(-2i/head_dim)`` (computed in float64).
    This 6D form is what ``rope-rank-reduction`` rewrites.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE head dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, time_ids: torch.Tensor) -> torch.Tensor:
        batch, length = time_ids.shape
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=time_ids.device) / self.head_dim
        omega = 1.0 / (self.theta**exponent)  # [D/2]
        angles = time_ids.to(torch.float64)[..., None] * omega  # [B, L, D/2]
        cos, sin = torch.cos(angles), torch.sin(angles)
        rotation = torch.stack([cos, -sin, sin, cos], dim=-1).reshape(batch, length, self.head_dim // 2, 2, 2)
        return rotation.float().unsqueeze(2)  # [B, L, 1, D/2, 2, 2]


class ApplyRoPE6D(nn.Module):
    """Rotate interleaved pairs ``(x[2i], x[2i+1])`` of q and k by the 6D table (FLUX style), in fp32.

    q, k: [B, L, H, Dh]; rope: [B, L, 1, Dh/2, 2, 2] -> rotated q, k in their input dtype.
    """

    def forward(self, query: torch.Tensor, key: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotate(query, rope), self.rotate(key, rope)

    @staticmethod
    def rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)  # [B, L, H, Dh/2, 1, 2]
        rotated = rope[..., 0] * pairs[..., 0] + rope[..., 1] * pairs[..., 1]  # [B, L, H, Dh/2, 2]
        return rotated.reshape(*x.shape).type_as(x)


# ---------------------------------------------------------------------------------------------------
# Attention mask
# ---------------------------------------------------------------------------------------------------


def build_joint_attention_mask(
    text_valid: torch.Tensor,
    image_time_ids: torch.Tensor,
    use_temporal_causal: bool = True,
    image_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean SDPA mask [B, 1, Lt+Li, Lt+Li] for the joint ``[text; image]`` sequence (True = attend).

    Reference semantics (facts §2.2, mmdit ``merge_input`` non-flash path): every token gets an id —
    valid text and image tokens the sample id, padded text 0 — and a query attends a key iff the ids
    match; with ``use_temporal_causal`` additionally iff ``time_q >= time_k`` (text time 0). Hence:

    * video tokens see all valid text and every frame with time <= their own (whole frame);
    * valid text sees valid text plus the time-0 (oldest) frame only;
    * padded text sees padded text only; nothing attends a padded text token except padded text.

    text_valid: [B, Lt] (bool or 0/1); image_time_ids: [Li] or [B, Li].
    image_valid: optional [Li] or [B, Li] (bool or 0/1), default all valid. Padded image tokens (the
    ``static-shape`` pass's history padding) follow the padded-text rule: no valid token attends them.
    """
    text_valid = text_valid.bool()
    batch, text_length = text_valid.shape
    if image_time_ids.dim() == 1:
        image_time_ids = image_time_ids[None, :].expand(batch, -1)
    if image_valid is None:
        image_valid = torch.ones(image_time_ids.shape, dtype=torch.bool, device=text_valid.device)
    else:
        image_valid = image_valid.bool().to(text_valid.device)
        if image_valid.dim() == 1:
            image_valid = image_valid[None, :].expand(batch, -1)
    token_valid = torch.cat([text_valid, image_valid], dim=1)  # [B, L]
    mask = token_valid[:, None, :, None] == token_valid[:, None, None, :]  # [B, 1, L, L]
    if use_temporal_causal:
        text_time = torch.zeros(batch, text_length, dtype=image_time_ids.dtype, device=image_time_ids.device)
        token_time = torch.cat([text_time, image_time_ids], dim=1)  # [B, L]
        mask = mask & (token_time[:, None, :, None] >= token_time[:, None, None, :])
    return mask


def attention_bias_from_mask(mask: torch.Tensor, fill_value: float | None, dtype: torch.dtype) -> torch.Tensor:
    """``fill_value=None`` keeps the boolean mask (reference); else an additive mask 0 / ``fill_value``."""
    if fill_value is None:
        return mask
    zeros = torch.zeros((), dtype=dtype, device=mask.device)
    fill = torch.full((), fill_value, dtype=dtype, device=mask.device)
    return torch.where(mask, zeros, fill)


# ---------------------------------------------------------------------------------------------------
# Conditioning embeddings and norms
# ---------------------------------------------------------------------------------------------------


def timestep_sinusoid(timesteps: torch.Tensor, channels: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Timestep sinusoid on the raw 0..1000 scale, ``flip_sin_to_cos=True``, shift 0 -> [N, channels] fp32.

    freqs_i = exp(-ln(max_period) * i / (channels/2)); output ``[cos(t*f) | sin(t*f)]``.
    """
    half = channels // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]  # [N, half]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class MLPEmbedder(nn.Module):
    """``linear_1 -> SiLU -> linear_2`` (diffusers TimestepEmbedding / TextProjection key names)."""

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepTextEmbedding(nn.Module):
    """``temb = MLP(sinusoid(t)) + MLP(pooled CLIP-L|G)`` (facts §2.2, ``CombinedTimestepConditionEmbeddings``)."""

    def __init__(self, embedding_dim: int, pooled_projection_dim: int, sinusoid_channels: int = 256):
        super().__init__()
        self.sinusoid_channels = sinusoid_channels
        self.timestep_embedder = MLPEmbedder(sinusoid_channels, embedding_dim)
        self.text_embedder = MLPEmbedder(pooled_projection_dim, embedding_dim)

    def forward(self, timestep: torch.Tensor, pooled_projection: torch.Tensor) -> torch.Tensor:
        sinusoid = timestep_sinusoid(timestep, self.sinusoid_channels).to(pooled_projection.dtype)
        return self.timestep_embedder(sinusoid) + self.text_embedder(pooled_projection)  # [N, D]


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learnable weight; statistics in fp32 (reference ``RMSNorm``)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        normed = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            normed = normed.to(self.weight.dtype)
        return (normed * self.weight).to(input_dtype)


class AdaLayerNormZero(nn.Module):
    """adaLN-Zero: ``Linear(SiLU(temb)) -> 6*D`` in the order shift_msa, scale_msa, gate_msa, shift_mlp,
    scale_mlp, gate_mlp; returns ``LN(x)*(1+scale_msa)+shift_msa`` and the other four, each [B, 1, D]."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, temb: torch.Tensor):
        modulation = self.linear(F.silu(temb))[:, None, :]  # [B, 1, 6D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)
        return self.norm(x) * (1 + scale_msa) + shift_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormContinuous(nn.Module):
    """``Linear(SiLU(temb)) -> 2*D`` chunked **(scale, shift)**; ``LN(x)*(1+scale)+shift`` (no affine)."""

    def __init__(self, dim: int, conditioning_dim: int, eps: float = 1e-6):
        super().__init__()
        self.linear = nn.Linear(conditioning_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        modulation = self.linear(F.silu(temb).to(x.dtype))[:, None, :]  # [B, 1, 2D]
        scale, shift = modulation.chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


# ---------------------------------------------------------------------------------------------------
# MMDiT block
# ---------------------------------------------------------------------------------------------------


class GELUProjection(nn.Module):
    """``proj`` Linear followed by tanh-approximate GELU (diffusers ``GELU(approximate='tanh')``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """``net = [GELUProjection(D->4D), Dropout, Linear(4D->D)]`` (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


def make_qk_norm(kind: str | None, head_dim: int, eps: float) -> nn.Module | None:
    if kind is None:
        return None
    if kind == "rms_norm":
        return RMSNorm(head_dim, eps=eps)
    if kind == "layer_norm":
        return nn.LayerNorm(head_dim, eps=eps)
    raise InputError(f"config key qk_norm: unknown value {kind!r} (expected 'rms_norm', 'layer_norm' or null)")


class JointAttention(nn.Module):
    """SD3 joint attention with per-head QK-norm (eps 1e-5), temporal RoPE and one SDPA over ``[text; image]``.

    The text stream is the first ``Lt`` tokens of the joint sequence. ``context_pre_only`` (last block)
    drops ``to_add_out``: the text output is not needed.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: str | None, context_pre_only: bool, eps: float = 1e-5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.context_pre_only = context_pre_only
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm_q = make_qk_norm(qk_norm, self.head_dim, eps)
        self.norm_k = make_qk_norm(qk_norm, self.head_dim, eps)
        self.add_k_proj = nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.add_q_proj = nn.Linear(dim, dim)
        self.norm_add_q = make_qk_norm(qk_norm, self.head_dim, eps)
        self.norm_add_k = make_qk_norm(qk_norm, self.head_dim, eps)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        if not context_pre_only:
            self.to_add_out = nn.Linear(dim, dim)
        self.apply_rope = ApplyRoPE6D()

    def _heads(self, x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
        x = x.view(x.shape[0], -1, self.num_heads, self.head_dim)  # [B, L, H, Dh]
        return norm(x) if norm is not None else x

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        attention_mask: torch.Tensor,
        rope: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        text_length = text.shape[1]
        # joint sequence [text; image], each [B, L, H, Dh] after its own QK-norm
        query = torch.cat([self._heads(self.add_q_proj(text), self.norm_add_q),
                           self._heads(self.to_q(image), self.norm_q)], dim=1)
        key = torch.cat([self._heads(self.add_k_proj(text), self.norm_add_k),
                         self._heads(self.to_k(image), self.norm_k)], dim=1)
        value = torch.cat([self._heads(self.add_v_proj(text), None), self._heads(self.to_v(image), None)], dim=1)
        if rope is not None:
            query, key = self.apply_rope(query, key, rope)  # [B, L, H, Dh]
        attended = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attention_mask
        )  # [B, H, L, Dh]
        attended = attended.transpose(1, 2).flatten(2, 3)  # [B, L, D]
        image_out = self.to_out[1](self.to_out[0](attended[:, text_length:]))
        text_out = None if self.context_pre_only else self.to_add_out(attended[:, :text_length])
        return image_out, text_out


class JointTransformerBlock(nn.Module):
    """One SD3 MMDiT block (facts §2.2). History and current video tokens share the same ``temb``."""

    def __init__(self, dim: int, num_heads: int, qk_norm: str | None, context_pre_only: bool):
        super().__init__()
        self.context_pre_only = context_pre_only
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormContinuous(dim, dim) if context_pre_only else AdaLayerNormZero(dim)
        self.attn = JointAttention(dim, num_heads, qk_norm, context_pre_only)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim)
        if not context_pre_only:
            self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.ff_context = FeedForward(dim)

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        temb: torch.Tensor,
        attention_mask: torch.Tensor,
        rope: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        norm_image, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(image, temb)
        if self.context_pre_only:
            norm_text = self.norm1_context(text, temb)
        else:
            norm_text, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(text, temb)

        image_attn, text_attn = self.attn(norm_image, norm_text, attention_mask, rope)

        image = image + gate_msa * image_attn
        image = image + gate_mlp * self.ff(self.norm2(image) * (1 + scale_mlp) + shift_mlp)

        if self.context_pre_only:
            return None, image
        text = text + c_gate_msa * text_attn
        text = text + c_gate_mlp * self.ff_context(self.norm2_context(text) * (1 + c_scale_mlp) + c_shift_mlp)
        return text, image


# ---------------------------------------------------------------------------------------------------
# The denoiser
# ---------------------------------------------------------------------------------------------------


class PyramidMMDiT(nn.Module):
    """Pyramid-Flow SD3 MMDiT (``PyramidDiffusionMMDiT``) with the released state-dict layout.

    Constructor keywords are the released config.json keys plus the load-time keys; the defaults are
    the released SD3 config *with* the load-time overrides, i.e. what the reference pipeline runs.
    """

    def __init__(
        self,
        *,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 24,
        attention_head_dim: int = 64,
        num_attention_heads: int = 24,
        caption_projection_dim: int = 1536,
        pooled_projection_dim: int = 2048,
        pos_embed_max_size: int = 192,
        max_num_frames: int = 200,
        qk_norm: str | None = "rms_norm",
        pos_embed_type: str = "sincos",
        temp_pos_embed_type: str = "rope",
        joint_attention_dim: int = 4096,
        use_flash_attn: bool = False,
        use_temporal_causal: bool = True,
        use_t5_mask: bool = True,
        add_temp_pos_embed: bool = True,
        interp_condition_pos: bool = True,
        use_gradient_checkpointing: bool = False,
        gradient_checkpointing_ratio: float = 0.6,
        _class_name: str | None = None,
        _diffusers_version: str | None = None,
    ):
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        if pos_embed_type != "sincos":
            raise InputError(
                f"config key pos_embed_type: {pos_embed_type!r} is not supported for video "
                "(the reference raises NotImplementedError too); use 'sincos'"
            )
        if temp_pos_embed_type not in ("rope", "sincos"):
            raise InputError(f"config key temp_pos_embed_type: {temp_pos_embed_type!r} (expected 'rope' or 'sincos')")
        if use_flash_attn and use_temporal_causal:
            raise InputError("config: use_flash_attn=true cannot apply the temporal-causal mask (reference asserts)")
        if caption_projection_dim != inner_dim:
            raise InputError(
                f"config key caption_projection_dim: {caption_projection_dim} must equal "
                f"num_attention_heads*attention_head_dim = {inner_dim}"
            )
        self.config = {
            "sample_size": sample_size, "patch_size": patch_size, "in_channels": in_channels,
            "num_layers": num_layers, "attention_head_dim": attention_head_dim,
            "num_attention_heads": num_attention_heads, "caption_projection_dim": caption_projection_dim,
            "pooled_projection_dim": pooled_projection_dim, "pos_embed_max_size": pos_embed_max_size,
            "max_num_frames": max_num_frames, "qk_norm": qk_norm, "pos_embed_type": pos_embed_type,
            "temp_pos_embed_type": temp_pos_embed_type, "joint_attention_dim": joint_attention_dim,
            "use_flash_attn": use_flash_attn, "use_temporal_causal": use_temporal_causal,
            "use_t5_mask": use_t5_mask, "add_temp_pos_embed": add_temp_pos_embed,
            "interp_condition_pos": interp_condition_pos,
        }
        self.patch_size = patch_size
        self.out_channels = in_channels
        self.inner_dim = inner_dim
        self.use_temporal_causal = use_temporal_causal
        # None: boolean mask into SDPA (reference). A float: additive mask (the ``mask-value`` pass).
        self.attention_mask_fill_value: float | None = None

        self.pos_embed = PyramidPatchEmbed(
            sample_size=sample_size,
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dim=inner_dim,
            pos_embed_max_size=pos_embed_max_size,
            max_num_frames=max_num_frames,
            interp_condition_pos=interp_condition_pos,
            add_temporal_sincos=add_temp_pos_embed and temp_pos_embed_type == "sincos",
        )
        use_rope = add_temp_pos_embed and temp_pos_embed_type == "rope"
        self.temporal_rope = TemporalRoPE(attention_head_dim) if use_rope else None
        self.time_text_embed = TimestepTextEmbedding(inner_dim, pooled_projection_dim)
        self.context_embedder: nn.Module = nn.Linear(joint_attention_dim, caption_projection_dim)
        self.transformer_blocks = nn.ModuleList(
            [
                JointTransformerBlock(inner_dim, num_attention_heads, qk_norm, context_pre_only=index == num_layers - 1)
                for index in range(num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(inner_dim, inner_dim, eps=1e-6)
        self.proj_out = nn.Linear(inner_dim, patch_size * patch_size * in_channels)

    @classmethod
    def from_config(cls, config: dict, source_name: str = "config.json", apply_load_time_overrides: bool = True):
        """Build from a released config.json dict; unknown keys are an InputError naming the key.

        ``apply_load_time_overrides`` mirrors ``build_pyramid_dit`` (facts §1): the pipeline always
        forces the temporal RoPE / causal / T5-mask / interpolated-condition settings.
        """
        import inspect

        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        for key in config:
            if key not in accepted:
                raise InputError(f"{source_name}: unknown denoiser config key {key!r}")
        kwargs = dict(config)
        if apply_load_time_overrides:
            kwargs.update(LOAD_TIME_OVERRIDES)
        return cls(**kwargs)

    def split_context_embedder(self) -> nn.Linear:
        """Detach the T5 context projection (``context_embedder``) and return it.

        Afterwards ``forward`` expects ``encoder_hidden_states`` already projected to the hidden size.
        """
        embedder = self.context_embedder
        if not isinstance(embedder, nn.Linear):
            raise RuntimeError("context_embedder has already been split off")
        self.context_embedder = nn.Identity()
        return embedder

    def forward(
        self,
        sample: Sequence[Sequence[torch.Tensor] | torch.Tensor],
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep_ratio: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Reference signature and return container.

        sample: list of S stage entries; each entry is a list of clips [B, C, T_i, H_i, W_i] ordered
            oldest -> newest, the last one being the current (noisy) clip (a bare tensor counts as a
            one-clip list). Inference always passes S = 1: ``sample=[[*history, current]]``.
        encoder_hidden_states: [S*B, Lt, joint_attention_dim] T5 states (or [S*B, Lt, D] once the context
            embedder is split off); row ``b*S + s`` belongs to sample b of stage s (reference layout).
        encoder_attention_mask: [S*B, Lt] 1 = valid T5 token, 0 = padding.
        pooled_projections: [S*B, pooled_projection_dim] (CLIP-L | CLIP-G text_embeds).
        timestep_ratio: [S*B] the timestep on the 0..1000 scale (despite the reference's name).

        Returns a list of S tensors, entry s = prediction for stage s's current clip, [B, C, T, H, W].
        """
        temb = self.time_text_embed(timestep_ratio, pooled_projections)  # [S*B, D]
        context = self.context_embedder(encoder_hidden_states)  # [S*B, Lt, D]
        if encoder_attention_mask.shape[1] != context.shape[1]:
            raise ValueError("encoder_attention_mask length differs from the text sequence length")
        num_stages = len(sample)
        predictions = []
        for stage_index, clips in enumerate(sample):
            if isinstance(clips, torch.Tensor):
                clips = [clips]
            rows = slice(stage_index, None, num_stages)
            predictions.append(self.forward_clips(clips, context[rows], encoder_attention_mask[rows], temb[rows]))
        return predictions

    def forward_clips(
        self,
        clips: Sequence[torch.Tensor],
        context: torch.Tensor,
        text_mask: torch.Tensor,
        temb: torch.Tensor,
        image_valid: torch.Tensor | None = None,
        image_time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One stage entry: clips oldest->newest, projected context [B, Lt, D], text mask [B, Lt],
        temb [B, D] -> prediction for the current clip [B, C, T, H, W].

        ``image_valid`` / ``image_time_ids`` ([Li] each, optional) override the all-valid tokens and the
        oldest-first frame numbering; the ``static-shape`` pass uses them for padded history.
        """
        current = clips[-1]
        batch, _, frames, height, width = current.shape
        image = self.pos_embed(clips)  # [B, Li, D]
        if image_time_ids is None:
            image_time_ids = clip_time_ids(clips, self.patch_size)  # [Li]
        rope = self.joint_rope(image_time_ids, context.shape[1], batch)
        mask = build_joint_attention_mask(text_mask, image_time_ids, self.use_temporal_causal, image_valid)  # [B,1,L,L]
        mask = attention_bias_from_mask(mask, self.attention_mask_fill_value, image.dtype)
        return self.forward_tokens(image, context, temb, mask, rope, (frames, height, width))

    def joint_rope(self, image_time_ids: torch.Tensor, text_length: int, batch: int) -> torch.Tensor | None:
        """The RoPE table of the joint ``[text; image]`` sequence (text at time 0), or None without RoPE."""
        if self.temporal_rope is None:
            return None
        text_time_ids = torch.zeros(text_length, dtype=image_time_ids.dtype, device=image_time_ids.device)
        joint_time_ids = torch.cat([text_time_ids, image_time_ids])[None, :].expand(batch, -1)
        return self.temporal_rope(joint_time_ids)  # [B, Lt+Li, 1, Dh/2, 2, 2]

    def forward_tokens(
        self,
        image: torch.Tensor,
        context: torch.Tensor,
        temb: torch.Tensor,
        attention_mask: torch.Tensor,
        rope: torch.Tensor | None,
        current_shape: tuple[int, int, int],
    ) -> torch.Tensor:
        """The transformer on embedded image tokens [B, Li, D] with a given mask and RoPE table (both
        precomputable per static shape); ``current_shape`` = (T, H, W) of the current latent clip."""
        frames, height, width = current_shape
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        current_tokens = frames * grid_h * grid_w
        text = context
        for block in self.transformer_blocks:
            text, image = block(image, text, temb, attention_mask, rope)

        image = self.proj_out(self.norm_out(image, temb))  # [B, Li, p*p*C]
        return self.unpatchify(image[:, -current_tokens:], frames, grid_h, grid_w)

    def unpatchify(self, tokens: torch.Tensor, frames: int, grid_h: int, grid_w: int) -> torch.Tensor:
        """[B, T*h*w, p*p*C] with channel index (p1*p+p2)*C + c -> [B, C, T, h*p, w*p]."""
        p, channels = self.patch_size, self.out_channels
        batch = tokens.shape[0]
        x = tokens.reshape(batch, frames, grid_h, grid_w, p, p, channels)
        x = x.permute(0, 6, 1, 2, 4, 3, 5)  # [B, C, T, h, p1, w, p2]
        return x.reshape(batch, channels, frames, grid_h * p, grid_w * p)
