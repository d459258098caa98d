"""ContextAdapter (CA), Neodragon §3.1: a 4-layer MLP with a skip connection at every layer.

It maps the small text encoder's tokens to the denoiser's context tokens. In Replace-Mode it takes the
ContextEmbedder's place (``in_dim -> out_dim``); in Extend-Mode it follows the frozen ContextEmbedder
(``out_dim -> out_dim``).

Layout (``num_layers`` = 4): ``num_layers - 1`` residual MLP layers ``x <- x + W2 GELU(W1 x)`` at the input
width (hidden width ``max(in_dim, out_dim)``), and a last MLP layer ``in_dim -> hidden -> out_dim`` whose skip
is a linear map (the identity when the widths agree). The residual branches start small, so a fresh adapter is
close to a linear map; :meth:`ContextAdapter.start_as` makes it *exactly* a given linear map (Replace-Mode: the
ContextEmbedder it replaces) or the identity (Extend-Mode), so distillation starts from the teacher's own head.

Size: at real scale in Replace-Mode (DT5's 4096-wide tokens -> the MMDiT's 1536-wide context) this is
130,053,632 parameters, the paper's "0.130B-parameter CA" (§1 contribution 2), so DT5 + CA = 0.260B as in
Table 2's [RM] row.
"""

from __future__ import annotations

import torch
from torch import nn


class _MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.up = nn.Linear(in_dim, hidden)
        self.down = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.gelu(self.up(x)))


class ContextAdapter(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_layers: int = 4):
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        self.in_dim, self.out_dim, self.num_layers = in_dim, out_dim, num_layers
        hidden = max(in_dim, out_dim)
        self.hidden = nn.ModuleList(_MLP(in_dim, hidden, in_dim) for _ in range(num_layers - 1))
        self.out = _MLP(in_dim, hidden, out_dim)
        self.out_skip = nn.Linear(in_dim, out_dim, bias=False) if in_dim != out_dim else nn.Identity()
        for layer in [*self.hidden, self.out]:  # residual branches start small
            nn.init.zeros_(layer.down.bias)
            layer.down.weight.data.mul_(0.1)

    @torch.no_grad()
    def start_as(self, linear: nn.Linear | None = None) -> None:
        """Zero every residual branch's output and make the skip path ``linear`` (None: keep the identity skip).

        Afterwards the adapter computes exactly ``linear(tokens)`` (or ``tokens``); gradients still reach every
        weight (the zeroed output layers get them first, as LoRA's zero-initialised ``B``).
        """
        for layer in [*self.hidden, self.out]:
            nn.init.zeros_(layer.down.weight)
            nn.init.zeros_(layer.down.bias)
        if linear is None:
            if self.in_dim != self.out_dim:
                raise ValueError(f"ContextAdapter {self.in_dim}->{self.out_dim}: an identity start needs equal widths")
            return
        if (linear.in_features, linear.out_features) != (self.in_dim, self.out_dim):
            raise ValueError(f"ContextAdapter {self.in_dim}->{self.out_dim} cannot start as a "
                             f"{linear.in_features}->{linear.out_features} linear map")
        if not isinstance(self.out_skip, nn.Linear):
            raise ValueError(f"ContextAdapter {self.in_dim}->{self.out_dim}: the skip is the identity (equal widths); "
                             "it cannot start as a linear map")
        self.out_skip.weight.copy_(linear.weight)
        if linear.bias is not None:
            self.out.down.bias.copy_(linear.bias)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, L, in_dim] -> [B, L, out_dim]; per token (the mask is accepted for the graph's call)."""
        x = tokens  # [B, L, in_dim]
        for layer in self.hidden:
            x = x + layer(x)
        return self.out_skip(x) + self.out(x)  # [B, L, out_dim]
