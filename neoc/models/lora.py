"""LoRA (Hu et al. 2021, arXiv 2106.09685) adapters on ``nn.Linear`` layers, with merging for deployment.

Neodragon §3.1 [LORA] mode: instead of a separate MLP ContextAdapter, low-rank adapters on the frozen small
text encoder (DT5) learn the video-generation-specific adaptation. Fig. 5b of the paper: only a high rank and a
large scale ``alpha`` give usable quality.

``y = W x + b + (alpha / rank) * B (A x)`` with ``A: [rank, in]``, ``B: [out, rank]``; ``B`` starts at zero, so
an adapted layer starts equal to the frozen one. :func:`merge_lora` folds ``(alpha / rank) * B A`` into ``W`` and
puts the plain ``nn.Linear`` back, so the deployed model has the original architecture and parameter count.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_down = nn.Parameter(torch.empty(self.rank, base.in_features, **factory))  # A [rank, in]
        self.lora_up = nn.Parameter(torch.zeros(base.out_features, self.rank, **factory))   # B [out, rank]
        if base.weight.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_down, a=math.sqrt(5))  # nn.Linear's default init for A
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    # Attributes that code written for nn.Linear reads (e.g. HF T5 checks ``wo.weight.dtype``).
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_up @ self.lora_down)  # [out, in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_rank = nn.functional.linear(nn.functional.linear(x, self.lora_down), self.lora_up)  # [..., out]
        return self.base(x) + self.scale * low_rank

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (weights ``W + scale * B A``)."""
        base = self.base
        linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(base.weight + self.delta_weight().to(base.weight.dtype))
            if base.bias is not None:
                linear.bias.copy_(base.bias)
        return linear


def _replace_children(module: nn.Module, prefix: str, make: Callable[[str, nn.Module], nn.Module | None]) -> list[str]:
    replaced = []
    for name, child in list(module.named_children()):
        full = f"{prefix}{name}"
        new = make(full, child)
        if new is not None:
            setattr(module, name, new)
            replaced.append(full)
        else:
            replaced.extend(_replace_children(child, f"{full}.", make))
    return replaced


def add_lora(module: nn.Module, rank: int, alpha: float,
             include: Callable[[str, nn.Linear], bool] = lambda name, linear: True) -> list[str]:
    """Wrap every ``nn.Linear`` of ``module`` (those ``include`` accepts) in :class:`LoRALinear`, in place.

    Returns the wrapped layers' names. Parameters of the wrapped layers are frozen; the rest of ``module`` is
    left as it is (freeze it yourself when only the adapters should train).
    """
    def make(name: str, child: nn.Module):
        if type(child) is nn.Linear and include(name, child):
            return LoRALinear(child, rank, alpha)
        return None

    return _replace_children(module, "", make)


def merge_lora(module: nn.Module) -> list[str]:
    """Replace every :class:`LoRALinear` of ``module`` by its merged ``nn.Linear``, in place; returns names."""
    return _replace_children(module, "", lambda name, child: child.merged() if isinstance(child, LoRALinear) else None)


def lora_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """The adapters' trainable parameters (``A`` and ``B`` of every :class:`LoRALinear`)."""
    for layer in module.modules():
        if isinstance(layer, LoRALinear):
            yield layer.lora_down
            yield layer.lora_up
