"""DT5: a small T5-class encoder with a projection to the teacher's width (DistillT5's
``T5EncoderWithProjection`` shape: Linear(d -> D, no bias) -> ReLU -> Linear(D -> D, no bias)).

At real scale (T5 v1.1-base encoder, 768 -> 4096) this is 109.63M + 19.92M = 129.55M parameters, the paper's
"0.130B DT5".
"""

from __future__ import annotations

import torch
from torch import nn

from neoc.models.text_encoders import T5TextEncoder


class DT5Encoder(nn.Module):
    def __init__(self, encoder: T5TextEncoder, out_dim: int | None):
        super().__init__()
        self.encoder = encoder
        width = encoder.hidden_size
        self.out_dim = out_dim
        if out_dim is None:
            self.projection = nn.Identity()
        else:
            self.projection = nn.Sequential(nn.Linear(width, out_dim, bias=False), nn.ReLU(),
                                            nn.Linear(out_dim, out_dim, bias=False))

    @property
    def hidden_size(self) -> int:
        return self.out_dim or self.encoder.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(input_ids, attention_mask))  # [B, L, out_dim]
