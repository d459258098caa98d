"""ContextAdapter (CA), Neodragon §3.1: a 4-layer MLP with a skip connection at every layer.

It maps the small text encoder's tokens to the denoiser's context tokens. In Replace-Mode it takes the
ContextEmbedder's place (``in_dim -> out_dim``); in Extend-Mode it follows the frozen ContextEmbedder
(``out_dim -> out_dim``). Each layer is ``x + GELU(Linear(x))`` at the input width; the last layer projects to
``out_dim`` (with a linear skip when the widths differ), so the adapter starts close to a linear map.
"""

from __future__ import annotations

import torch
from torch import nn


class ContextAdapter(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_layers: int = 4):
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        self.in_dim, self.out_dim, self.num_layers = in_dim, out_dim, num_layers
        self.norm = nn.LayerNorm(in_dim)
        self.hidden = nn.ModuleList(nn.Linear(in_dim, in_dim) for _ in range(num_layers - 1))
        self.out = nn.Linear(in_dim, out_dim)
        self.out_skip = nn.Linear(in_dim, out_dim, bias=False) if in_dim != out_dim else nn.Identity()
        for layer in self.hidden:  # residual branches start small
            nn.init.zeros_(layer.bias)
            layer.weight.data.mul_(0.1)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(tokens)  # [B, L, in_dim]
        for layer in self.hidden:
            x = x + nn.functional.gelu(layer(x))
        return self.out_skip(x) + self.out(x)  # [B, L, out_dim]
