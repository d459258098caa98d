"""``FiniteMaskTextEncoder``: a T5-class text encoder whose attention mask uses a finite fill value.

HF T5 turns the padding mask into an additive bias of ``finfo(dtype).min`` (or a boolean mask); on an FP16 NPU
that constant saturates, and ``min + position_bias`` overflows to ``-inf``. Neodragon §4.1 replaces it by a finite,
FP16-safe value (e.g. -1e4): ``exp(-1e4 + s)`` is exactly 0 in fp16/fp32 for any realistic score ``s``, so the
encoder's function is unchanged. This wrapper runs the HF encoder stack itself (embedding -> blocks ->
final norm) with the bias ``[B, 1, 1, L]`` = 0 for valid keys, ``mask_value`` for padding.

It wraps either a :class:`T5TextEncoder` or a :class:`DT5Encoder` (T5 + projection), and records the inner
component's builder so run folders rebuild it.
"""

from __future__ import annotations

import torch
from torch import nn

from neoc.errors import InputError
from neoc.ir.components import build_component, describe_component, register_builder
from neoc.models.dt5 import DT5Encoder
from neoc.models.text_encoders import T5TextEncoder


class FiniteMaskTextEncoder(nn.Module):
    def __init__(self, inner: nn.Module, mask_value: float):
        super().__init__()
        if t5_of(inner) is None:
            raise InputError(f"text encoder {type(inner).__name__} is not T5-class (T5TextEncoder or DT5Encoder)")
        self.inner = inner
        self.mask_value = float(mask_value)

    @property
    def hidden_size(self) -> int:
        return self.inner.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = t5_forward_finite_mask(t5_of(self.inner).t5, input_ids, attention_mask, self.mask_value)
        if isinstance(self.inner, DT5Encoder):
            hidden = self.inner.projection(hidden)
        return hidden  # [B, L, width]


def t5_forward_finite_mask(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           mask_value: float) -> torch.Tensor:
    """``T5EncoderModel`` forward with an additive key-padding bias of ``mask_value`` -> [B, L, d_model]."""
    stack = model.encoder
    hidden = stack.dropout(stack.embed_tokens(input_ids))  # [B, L, d_model]
    valid = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]
    bias = torch.where(valid, torch.zeros((), dtype=hidden.dtype, device=hidden.device),
                       torch.full((), mask_value, dtype=hidden.dtype, device=hidden.device))
    position_bias = None  # the first block computes the relative-position bias, the others reuse it
    for block in stack.block:
        hidden, position_bias, _ = block(hidden, bias, position_bias)
    return stack.dropout(stack.final_layer_norm(hidden))


def t5_of(module: nn.Module) -> T5TextEncoder | None:
    """The T5TextEncoder inside a text-encoder component (itself, DT5's encoder, or a wrapper's)."""
    if isinstance(module, T5TextEncoder):
        return module
    if isinstance(module, DT5Encoder):
        return t5_of(module.encoder)
    if isinstance(module, FiniteMaskTextEncoder):
        return t5_of(module.inner)
    return None


def _describe(module: FiniteMaskTextEncoder) -> dict:
    builder, config = describe_component(module.inner)
    return {"inner_builder": builder, "inner_config": config, "mask_value": module.mask_value}


def _build(config: dict, device: str | None = None) -> FiniteMaskTextEncoder:
    inner = build_component(config["inner_builder"], config["inner_config"], "FiniteMaskTextEncoder inner")
    return FiniteMaskTextEncoder(inner, config["mask_value"])


register_builder("neoc.FiniteMaskTextEncoder", FiniteMaskTextEncoder, _build, _describe)
