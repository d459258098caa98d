"""Toy pipelines for unit-testing passes in milliseconds (public: third-party pass authors use it too).

``toy_pipeline()`` is a complete pipeline IR — text encoder, context embedder, a denoiser with the reference
forward signature, a decoder producing 1 + 8(T-1) frames — small enough that a test runs the whole unrolled
graph in well under a second.
"""

from __future__ import annotations

import torch
from torch import nn

from neoc.ir.components import register_builder, register_prompt_encoder
from neoc.ir.pipeline import Pipeline
from neoc.ir.schedule import PipelineSpec, Schedule


class ToyTextEncoder(nn.Module):
    def __init__(self, vocab: int = 64, width: int = 16):
        super().__init__()
        self.vocab, self.hidden_size = vocab, width
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        if attention_mask is None:  # like HF encoders: no mask means every token is valid
            attention_mask = torch.ones_like(input_ids)
        return h + torch.tanh(self.mix(h)) * attention_mask[..., None].to(h.dtype)


class ToyDenoiser(nn.Module):
    """Same call signature as the reference MMDiT; mixes the current clip with pooled context and history."""

    def __init__(self, channels: int = 16, width: int = 8, num_blocks: int = 2):
        super().__init__()
        self.channels, self.inner_dim, self.num_blocks = channels, width, num_blocks
        self.blocks = nn.ModuleList(nn.Linear(channels, channels) for _ in range(num_blocks))
        self.ctx = nn.Linear(width, channels)
        self.time = nn.Linear(1, channels)

    def forward(self, sample, encoder_hidden_states, encoder_attention_mask, pooled_projections, timestep_ratio):
        clips = sample[0]
        x = clips[-1]  # [B, C, 1, h, w]
        bias = self.ctx(encoder_hidden_states.mean(1)) + self.time(timestep_ratio[:, None] / 1000.0)
        history = sum(c.mean(dim=(2, 3, 4)) for c in clips[:-1]) if len(clips) > 1 else 0.0
        h = x.movedim(1, -1)
        for block in self.blocks:
            h = h + torch.tanh(block(h))
        out = h.movedim(-1, 1) + (bias + history * 0.1)[:, :, None, None, None]
        return [out]


class ToyDecoder(nn.Module):
    """Normalised latents [B, C, T, h, w] -> frames [B, 3, 1 + 8(T-1), 8h, 8w]."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.channels = channels
        self.proj = nn.Conv3d(channels, 3, 1)

    def forward(self, z):
        x = torch.tanh(self.proj(z))
        x = x.repeat_interleave(8, dim=2)[:, :, 7:]
        return x.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)


class ToyTokenizer:
    """Deterministic word-hash tokenizer with the PromptEncoderBundle interface used by Pipeline."""

    def __init__(self, vocab: int = 64, length: int = 8):
        self.vocab, self.length = vocab, length

    def _ids(self, text: str):
        import zlib

        words = text.lower().split()[: self.length - 1]
        ids = [1 + zlib.crc32(w.encode()) % (self.vocab - 2) for w in words] + [self.vocab - 1]
        mask = [1] * len(ids) + [0] * (self.length - len(ids))
        return ids + [0] * (self.length - len(ids)), mask

    def encode_pair(self, negative: str, positive: str) -> dict:
        rows = [self._ids(negative), self._ids(positive)]
        return {"t5_ids": torch.tensor([r[0] for r in rows]), "t5_mask": torch.tensor([r[1] for r in rows])}

    def describe(self) -> dict:
        return {"kind": "toy", "vocab": self.vocab, "length": self.length}

    def save(self, folder) -> None:
        from pathlib import Path

        Path(folder).mkdir(parents=True, exist_ok=True)


register_prompt_encoder("toy", lambda folder, d: ToyTokenizer(d["vocab"], d["length"]))
register_builder("toy.TextEncoder", ToyTextEncoder, lambda c: ToyTextEncoder(**c),
                 lambda m: {"vocab": m.vocab, "width": m.hidden_size})
register_builder("toy.Denoiser", ToyDenoiser, lambda c: ToyDenoiser(**c),
                 lambda m: {"channels": m.channels, "width": m.inner_dim, "num_blocks": m.num_blocks})
register_builder("toy.Decoder", ToyDecoder, lambda c: ToyDecoder(**c), lambda m: {"channels": m.channels})


def toy_pipeline(frames: int = 17, seed: int = 0, schedule: Schedule | None = None,
                 first_frame_steps=(2, 2, 2), video_steps=(1, 1, 1)) -> Pipeline:
    """A 3-stage pyramidal toy pipeline at 64x64 (latents 8x8), seeded weights."""
    torch.manual_seed(seed)
    spec = PipelineSpec("toy", frames=frames, height=64, width=64, t5_max_length=8, clip_max_length=8,
                        prompt_suffix="", negative_prompt="")
    schedule = schedule or Schedule(first_frame_steps=tuple(first_frame_steps), video_steps=tuple(video_steps),
                                    guidance_scale=3.0, video_guidance_scale=2.0, label="toy")
    components = {"text_encoder": ToyTextEncoder(), "context_embedder": nn.Linear(16, 8),
                  "denoiser": ToyDenoiser(), "vae_decoder": ToyDecoder()}
    return Pipeline(spec, schedule, components, prompt_encoder=ToyTokenizer(), source="toy")
