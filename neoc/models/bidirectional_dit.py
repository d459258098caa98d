"""A Wan / LTX-style bidirectional video DiT: a non-pyramidal family for neoc's custom-pass-list example.

What sets it apart from the Pyramid-Flow MMDiT (``neoc.models.mmdit``):

* **one resolution, all frames at once**: it denoises every latent frame of the video together (the pipeline's
  schedule is ``temporal: joint`` with one stage), with full bidirectional self-attention over space and time —
  no temporal-causal mask, no history clips, no pyramid stages;
* **cross-attention to the text** (Wan-style): visual tokens attend to the context tokens in a separate
  attention, instead of MMDiT's joint text+visual stream — so a block has one (visual) output stream;
* **timestep-only adaLN** (shared modulation MLP, per-block learned offsets): no pooled CLIP projection;
* factorised 3D RoPE (time, height, width) on the self-attention queries and keys.

It keeps the reference denoiser's call signature (``sample=[[clip]]``, ``encoder_hidden_states``,
``encoder_attention_mask``, ``pooled_projections``, ``timestep_ratio``), so neoc's IR calls it like any
denoiser. Only a tiny configuration is provided, randomly initialised: it exists to show which passes apply to
such a model, not to generate anything meaningful.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _rope_angles(positions: torch.Tensor, dim: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
    return positions.float()[:, None] * freqs[None]  # [N, dim/2]


def rope_3d(t: int, h: int, w: int, head_dim: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin ``[t*h*w, head_dim/2]`` for factorised (time, height, width) rotary embeddings."""
    dt = head_dim // 2 - 2 * (head_dim // 6)
    dh = dw = head_dim // 6
    grid = torch.stack(torch.meshgrid(torch.arange(t, device=device), torch.arange(h, device=device),
                                      torch.arange(w, device=device), indexing="ij"), -1).reshape(-1, 3)
    angles = torch.cat([_rope_angles(grid[:, 0], 2 * dt), _rope_angles(grid[:, 1], 2 * dh),
                        _rope_angles(grid[:, 2], 2 * dw)], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [B, heads, N, head_dim]`` rotated pairwise (even, odd channels)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


class DiTBlock(nn.Module):
    """Self-attention (bidirectional, 3D RoPE) -> cross-attention to text -> MLP, adaLN from the timestep."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim // heads, eps=1e-6)
        self.norm_k = nn.RMSNorm(dim // heads, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_q = nn.Linear(dim, dim)
        self.cross_kv = nn.Linear(dim, 2 * dim)
        self.cross_proj = nn.Linear(dim, dim)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / math.sqrt(dim))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.heads, -1).transpose(1, 2)

    def forward(self, x, context, context_mask, temb6, cos, sin):
        shift1, scale1, gate1, shift2, scale2, gate2 = (temb6 + self.modulation).unbind(1)
        h = self.norm1(x) * (1 + scale1[:, None]) + shift1[:, None]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        q, k = apply_rope(self.norm_q(q), cos, sin), apply_rope(self.norm_k(k), cos, sin)
        attn = F.scaled_dot_product_attention(q, k, v)  # full attention over every frame: bidirectional
        x = x + gate1[:, None] * self.proj(attn.transpose(1, 2).flatten(2))
        cq = self._heads(self.cross_q(self.norm2(x)))
        ck, cv = (self._heads(t) for t in self.cross_kv(context).chunk(2, dim=-1))
        bias = None
        if context_mask is not None:
            bias = torch.zeros(context_mask.shape, dtype=x.dtype, device=x.device)
            bias = bias.masked_fill(context_mask == 0, -1e4)[:, None, None, :]
        cross = F.scaled_dot_product_attention(cq, ck, cv, attn_mask=bias)
        x = x + self.cross_proj(cross.transpose(1, 2).flatten(2))
        h = self.norm3(x) * (1 + scale2[:, None]) + shift2[:, None]
        return x + gate2[:, None] * self.mlp(h)


class BidirectionalVideoDiT(nn.Module):
    """Latents ``[B, C, T, h, w]`` (every frame) + text tokens -> velocity of the same shape."""

    def __init__(self, in_channels: int = 16, dim: int = 128, heads: int = 4, num_layers: int = 4,
                 context_dim: int = 128, patch_size: int = 2, mlp_ratio: float = 4.0):
        super().__init__()
        self.config = {"in_channels": in_channels, "dim": dim, "heads": heads, "num_layers": num_layers,
                       "context_dim": context_dim, "patch_size": patch_size, "mlp_ratio": mlp_ratio}
        self.in_channels, self.inner_dim, self.patch_size, self.heads = in_channels, dim, patch_size, heads
        self.patch_embed = nn.Linear(in_channels * patch_size * patch_size, dim)
        self.context_proj = nn.Sequential(nn.Linear(context_dim, dim), nn.GELU(approximate="tanh"),
                                          nn.Linear(dim, dim))
        self.time_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Linear(dim, 2 * dim)
        self.proj_out = nn.Linear(dim, in_channels * patch_size * patch_size)

    @staticmethod
    def _sinusoid(t: torch.Tensor, channels: int = 256) -> torch.Tensor:
        half = channels // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([args.cos(), args.sin()], dim=-1)

    def forward(self, sample, encoder_hidden_states, encoder_attention_mask=None, pooled_projections=None,
                timestep_ratio=None):
        clips = sample[0]
        if len(clips) != 1:
            raise ValueError("BidirectionalVideoDiT denoises the whole video at once: it takes no history clips "
                             f"(got {len(clips)} clips; use a schedule with temporal: joint)")
        x = clips[0]
        B, C, T, H, W = x.shape
        p = self.patch_size
        tokens = x.reshape(B, C, T, H // p, p, W // p, p).permute(0, 2, 3, 5, 1, 4, 6)
        tokens = self.patch_embed(tokens.reshape(B, T * (H // p) * (W // p), C * p * p))
        temb = self.time_embed(self._sinusoid(timestep_ratio.to(x.dtype)))
        temb6 = self.time_modulation(temb).view(B, 6, -1)
        context = self.context_proj(encoder_hidden_states)
        cos, sin = rope_3d(T, H // p, W // p, self.inner_dim // self.heads, device=x.device)
        for block in self.blocks:
            tokens = block(tokens, context, encoder_attention_mask, temb6, cos.to(x.dtype), sin.to(x.dtype))
        shift, scale = self.out_modulation(F.silu(temb)).chunk(2, dim=-1)
        tokens = self.norm_out(tokens) * (1 + scale[:, None]) + shift[:, None]
        out = self.proj_out(tokens).view(B, T, H // p, W // p, C, p, p)
        return [out.permute(0, 4, 1, 2, 5, 3, 6).reshape(B, C, T, H, W)]
