"""Training data for the two finetune stages: toy-world clips encoded by the pipeline's own VAE encoder, and
pyramidal flow-matching batches over them (:mod:`neoc.train.flow_matching`, history corrupted with noise).

The latent set is cached as safetensors (+ JSON scenes) under a name keyed by the encoder's weights and the
sampling settings, so a resumed pass or the policy bench encodes once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import nn

from neoc.errors import InputError


@dataclass
class LatentSet:
    latents: torch.Tensor   # [N, C, T, h, w] normalised, as the denoiser sees them
    scenes: list            # ToyScene per clip (captions are re-worded per draw)


def _render(scene, frames: int, height: int, width: int) -> torch.Tensor:
    from neoc.data.toyworld import render_float

    side = max(height, width)
    video = render_float(scene, frames, side)  # [3, F, side, side] in [-1, 1]
    top, left = (side - height) // 2, (side - width) // 2
    return video[:, :, top:top + height, left:left + width]


def _fingerprint(encoder: nn.Module, *parts) -> str:
    from neoc.ir.runfolder import state_hash

    text = json.dumps([state_hash(encoder.state_dict()), *parts], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@torch.no_grad()
def encode_toy_latents(pipeline, count: int, seed: int, split: str = "train", cache_dir: Path | None = None,
                       progress=None) -> LatentSet:
    """``count`` toy-world clips of ``split`` (scene seed ``seed``) at the pipeline's video size, encoded by its
    ``vae_encoder`` (normalised latents)."""
    from safetensors.torch import load_file, save_file

    from neoc.data.toyworld import ToyScene, ToyWorldDataset

    spec = pipeline.spec
    encoder = pipeline.component("vae_encoder")
    data = ToyWorldDataset(split, max(count, 1), seed)
    key = _fingerprint(encoder, count, seed, split, spec.frames, spec.height, spec.width)
    path = Path(cache_dir) / f"latents-{split}-{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        scenes = [ToyScene(**s) for s in json.loads(path.with_suffix(".json").read_text())]
        return LatentSet(load_file(str(path))["latents"], scenes)
    was_training = encoder.training
    encoder.eval()
    scenes, latents = [], []
    indices = range(count)
    for i in (progress(indices) if progress is not None else indices):
        scene, _ = data.scene_and_caption(i)
        video = _render(scene, spec.frames, spec.height, spec.width)
        latents.append(encoder(video[None]).float()[0])
        scenes.append(scene)
    encoder.train(was_training)
    out = LatentSet(torch.stack(latents).contiguous(), scenes)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"latents": out.latents}, str(path))
        path.with_suffix(".json").write_text(json.dumps([attrs.asdict(s) for s in scenes]))
    return out


class FlowData:
    """``batch_fn`` for :class:`neoc.train.loop.Trainer`: one :class:`~neoc.train.flow_matching.FlowBatch` per step.

    A step trains one latent frame ("unit") of ``batch_size`` clips at every pyramid stage: unit 0 (the first
    frame, an image) with probability ``first_frame_prob``, else a uniformly drawn later unit with its history
    (corrupted with noise, as Pyramid-Flow trains). Captions are re-worded from the scene on every draw and dropped
    to ``""`` 10 % of the time (CFG). All randomness comes from the step's generator (resume replays the data).
    ``timestep_sampling`` / ``logit_mean`` / ``logit_std``: how each stage's training point is drawn
    (:func:`neoc.train.flow_matching.sample_grid_index`; uniform by default). ``fg_weight`` w > 0: each batch
    carries per-position loss weights ``1 + w * object share`` of the trained frame
    (:func:`neoc.data.toyworld.latent_object_mask`, computed once for the set), for objectives that use them.
    """

    def __init__(self, data: LatentSet, prompt_encoder, batch_size: int, num_stages: int, gamma: float,
                 first_frame_prob: float = 0.25, timestep_sampling: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0, fg_weight: float = 0.0):
        from neoc.data.toyworld import latent_object_mask
        from neoc.train.flow_matching import check_timestep_sampling

        check_timestep_sampling(timestep_sampling, logit_std)  # bad settings fail here, not at the first step
        if not 0.0 <= fg_weight < float("inf"):
            raise InputError(f"fg_weight={fg_weight!r}: expected a finite weight >= 0")
        self.data, self.prompt_encoder = data, prompt_encoder
        self.batch_size, self.num_stages, self.gamma = batch_size, num_stages, gamma
        self.first_frame_prob = first_frame_prob
        self.sampling = (timestep_sampling, float(logit_mean), float(logit_std))
        self.fg_weight, self.masks = float(fg_weight), None
        if fg_weight > 0:
            _, _, frames, size, _ = data.latents.shape
            self.masks = torch.stack([latent_object_mask(scene, frames, size) for scene in data.scenes])  # [N, T, h, w]

    def captions(self, scenes, gen: torch.Generator) -> list[str]:
        from neoc.data.toyworld import caption

        seeds = torch.randint(0, 2**31 - 1, (len(scenes),), generator=gen).tolist()
        return [caption(scene, np.random.default_rng(s)) for scene, s in zip(scenes, seeds)]

    def draw(self, gen: torch.Generator):
        from neoc.train.flow_matching import drop_captions, make_flow_batch

        latents = self.data.latents
        frames = latents.shape[2]
        if frames == 1 or float(torch.rand((), generator=gen)) < self.first_frame_prob:
            unit = 0
        else:
            unit = int(torch.randint(1, frames, (1,), generator=gen))
        index = torch.randint(0, latents.shape[0], (self.batch_size,), generator=gen)
        clips = latents[index, :, :unit + 1]
        texts = drop_captions(self.captions([self.data.scenes[i] for i in index.tolist()], gen), gen)
        sampling, mean, std = self.sampling
        weights = None if self.masks is None else (1.0 + self.fg_weight * self.masks[index, unit])[:, None, None]
        return make_flow_batch(clips, unit, self.prompt_encoder.encode(texts), gen, self.num_stages, self.gamma,
                               timestep_sampling=sampling, logit_mean=mean, logit_std=std, loss_weights=weights)

    def __call__(self, ctx):
        return self.draw(ctx.generator)

    def fixed_batches(self, count: int, seed: int) -> list:
        """``count`` deterministic batches (validation): batch ``i`` from generator seed ``seed + i``."""
        return [self.draw(torch.Generator().manual_seed(seed + i)) for i in range(count)]


class TextConditioning(nn.Module):
    """The pipeline's frozen text side, as the denoiser sees it: tokens -> (context [B, Lt, D], T5 mask [B, Lt],
    pooled [B, P]). Follows the pipeline's roles: ``text_encoder`` -> ``context_embedder`` (if any) ->
    ``context_adapter`` (if any, after replace-text-encoder); pooled CLIP features or zeros."""

    def __init__(self, pipeline):
        super().__init__()
        self.text_encoder = pipeline.component("text_encoder")
        self.context_embedder = pipeline.component("context_embedder") if pipeline.has("context_embedder") else None
        self.context_adapter = pipeline.component("context_adapter") if pipeline.has("context_adapter") else None
        self.clip_encoders = pipeline.component("clip_encoders") if pipeline.has("clip_encoders") else None
        self.pooled_dim = int(pipeline.component("denoiser").config.get("pooled_projection_dim", 0))
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "TextConditioning":
        return super().train(False)  # frozen: always inference behaviour

    @torch.no_grad()
    def forward(self, tokens: dict[str, torch.Tensor]):
        mask = tokens["t5_mask"]
        context = self.text_encoder(tokens["t5_ids"], mask)
        if self.context_embedder is not None:
            context = self.context_embedder(context)
        if self.context_adapter is not None:
            context = self.context_adapter(context, mask)
        if self.clip_encoders is not None:
            pooled = self.clip_encoders(tokens["clip_l_ids"], tokens["clip_g_ids"])
        else:
            pooled = context.new_zeros(context.shape[0], self.pooled_dim)
        return context, mask, pooled
