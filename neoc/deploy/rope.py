"""Temporal RoPE in <=4D form (Neodragon §4.1, "RoPE rank reduction").

The reference table is 6D, ``[B, L, 1, Dh/2, 2, 2]`` (one 2x2 rotation matrix per interleaved pair), applied
to 6D views of q and k; NPU compilers handle at most 4D (or 5D) tensors well. The same rotation written as

    rotate(x) = x * cos + swap_pairs(x) * sin,   swap_pairs(x)[2i] = -x[2i+1], swap_pairs(x)[2i+1] = x[2i]

with ``cos``/``sin`` repeated per pair needs only 4D tensors: the table is ``[B, L, 2, Dh]`` (row 0 = cos, row 1
= sin) and every intermediate stays at the rank of q/k ``[B, L, H, Dh]``. Products and sums are the same IEEE
operations as the 6D form, so outputs match it bit for bit in fp32.
"""

from __future__ import annotations

import torch
from torch import nn


class TemporalRoPE4D(nn.Module):
    """``forward(time_ids [B, L]) -> [B, L, 2, head_dim]`` float32: cos (row 0) and sin (row 1) of
    ``a_i = t * theta^(-2i/head_dim)``, each repeated for both members of pair i (angles in float64)."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE head dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, time_ids: torch.Tensor) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=time_ids.device) / self.head_dim
        omega = 1.0 / (self.theta**exponent)  # [Dh/2]
        angles = time_ids.to(torch.float64)[..., None] * omega  # [B, L, Dh/2]
        angles = angles.repeat_interleave(2, dim=-1)  # [B, L, Dh]
        return torch.stack([torch.cos(angles), torch.sin(angles)], dim=2).float()  # [B, L, 2, Dh]


class ApplyRoPE4D(nn.Module):
    """Rotate interleaved pairs of q and k ``[B, L, H, Dh]`` by the ``[B, L, 2, Dh]`` table, in fp32."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotate(query, rope), self.rotate(key, rope)

    @staticmethod
    def rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        batch, length, heads, dim = x.shape
        cos, sin = rope[:, :, 0:1], rope[:, :, 1:2]  # [B, L, 1, Dh] each, broadcast over heads
        x32 = x.float()
        pairs = x32.reshape(batch * length, heads, dim // 2, 2)  # [B*L, H, Dh/2, 2]
        swapped = torch.cat([-pairs[..., 1:2], pairs[..., 0:1]], dim=-1)  # (x0, x1) -> (-x1, x0)
        swapped = swapped.reshape(batch, length, heads, dim)  # [B, L, H, Dh]
        return (x32 * cos + swapped * sin).type_as(x)
