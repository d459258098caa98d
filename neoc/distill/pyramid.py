"""Pyramidal flow-matching geometry shared by the step-distillation methods (Neodragon §3.4).

Conventions (the same as :mod:`neoc.models.scheduler` and :mod:`neoc.train.flow_matching`): stage ``s``
(0 = lowest resolution) flows on a *local* sigma ``r`` from its start point (``r = 1``) to its end point
(``r = 0``); ``x = r * start + (1 - r) * end`` and the denoiser predicts ``v = start - end``. The *global* noise
level of a point is ``sigma = (1 - r) * sigma_end + r * sigma_start`` (scheduler ``StageSpec``), and the global
timestep fed to the DiT runs linearly from ``timestep_max`` (``r = 1``) to ``timestep_min`` (``r = 0.001``), the
pairs the sampler visits.

Pyramidal DMD's student predicts the clean latent of its stage as one Euler step in *global* sigma:
``z_hat = x - sigma / (sigma_start - sigma_end) * D(x)`` (``d r / d sigma = 1 / (sigma_start - sigma_end)``).
Teacher and fake score see stage-wise renoised versions of ``z_hat`` (paper eqs. 23-25)::

    y_start = (1 - sigma_start) Up(Down(z_hat, 2), 2) + sigma_start eps
    y_end   = (1 - sigma_end) z_hat + sigma_end eps
    z_tau   = (1 - tau) y_end + tau y_start               (tau a local noise level)

whose conditional flow is ``y_start - y_end``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from neoc.ir import ops
from neoc.models import scheduler as sched

MIN_LOCAL_SIGMA = 0.001  # the sampler's last evaluated local sigma (linspace(1, 0.001, n))


def _col(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample [B] tensor broadcast against ``like`` [B, ...]."""
    return x.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def timestep_for(r: torch.Tensor, spec: sched.StageSpec) -> torch.Tensor:
    """Global DiT timestep (0..1000 scale) of local sigma ``r`` [B] in stage ``spec``."""
    r = r.to(torch.float64).clamp(MIN_LOCAL_SIGMA, 1.0)
    t = spec.timestep_max + (spec.timestep_min - spec.timestep_max) * (1.0 - r) / (1.0 - MIN_LOCAL_SIGMA)
    return t.float()


def global_sigma(r: torch.Tensor, spec: sched.StageSpec) -> torch.Tensor:
    return (1.0 - r) * spec.end_sigma + r * spec.start_sigma


def stage_delta(spec: sched.StageSpec) -> float:
    return spec.start_sigma - spec.end_sigma


def clean_from_flow(x: torch.Tensor, v: torch.Tensor, r: torch.Tensor, spec: sched.StageSpec) -> torch.Tensor:
    """The student's clean-latent estimate ``x - sigma / (sigma_start - sigma_end) * v`` (paper §3.4)."""
    scale = global_sigma(r.to(torch.float32), spec) / stage_delta(spec)
    return x - _col(scale, x) * v


def renoise(z_hat: torch.Tensor, noise: torch.Tensor, spec: sched.StageSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-wise start / end points built from a clean-latent estimate (paper eqs. 23, 24)."""
    coarse = ops.up2_nearest(ops.down2(z_hat))
    y_start = (1.0 - spec.start_sigma) * coarse + spec.start_sigma * noise
    y_end = (1.0 - spec.end_sigma) * z_hat + spec.end_sigma * noise
    return y_start, y_end


def interpolate(start: torch.Tensor, end: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``r * start + (1 - r) * end`` with a per-sample local sigma ``r`` [B]."""
    r = _col(r, start)
    return r * start + (1.0 - r) * end


# ---- text conditions ---------------------------------------------------------------------------------------
@dataclass
class TextRows:
    """Denoiser text inputs for a batch: context [B, L, D], mask [B, L], pooled [B, P] or None."""

    context: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor | None = None

    def rows(self, index: torch.Tensor | Sequence[int]) -> "TextRows":
        index = torch.as_tensor(index, dtype=torch.long)
        return TextRows(self.context[index], self.mask[index], None if self.pooled is None else self.pooled[index])

    def repeat(self, n: int) -> "TextRows":
        return TextRows(self.context.expand(n, *self.context.shape[1:]), self.mask.expand(n, *self.mask.shape[1:]),
                        None if self.pooled is None else self.pooled.expand(n, *self.pooled.shape[1:]))

    def __len__(self) -> int:
        return self.context.shape[0]

    @staticmethod
    def cat(parts: Sequence["TextRows"]) -> "TextRows":
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        return TextRows(torch.cat([p.context for p in parts]), torch.cat([p.mask for p in parts]), pooled)


@torch.no_grad()
def text_side(pipe, tokens: dict[str, torch.Tensor]) -> TextRows:
    """The pipeline graph's text side (text encoder -> context embedder -> context adapter; pooled CLIP)."""
    context = pipe.component("text_encoder")(tokens["t5_ids"], tokens["t5_mask"])
    if pipe.has("context_embedder"):
        context = pipe.component("context_embedder")(context)
    if pipe.has("context_adapter"):
        context = pipe.component("context_adapter")(context, tokens["t5_mask"])
    pooled = None
    if pipe.has("clip_encoders"):
        pooled = pipe.component("clip_encoders")(tokens["clip_l_ids"], tokens["clip_g_ids"])
    return TextRows(context.float(), tokens["t5_mask"], None if pooled is None else pooled.float())


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str]) -> tuple[TextRows, TextRows]:
    """(conditional rows [N], unconditional row [1]) for ``prompts``; the negative prompt is the spec's."""
    for m in pipe.components.values():
        m.eval()
    cond, uncond = [], None
    for prompt in prompts:
        tokens = pipe.prompt_encoder.encode_pair(pipe.spec.negative_prompt, prompt)
        rows = text_side(pipe, tokens)
        cond.append(rows.rows([1]))
        if uncond is None:
            uncond = rows.rows([0])
    return TextRows.cat(cond), uncond


# ---- the denoiser call -------------------------------------------------------------------------------------
def predict(denoiser: nn.Module, clips: Sequence[torch.Tensor], x: torch.Tensor, t: torch.Tensor,
            text: TextRows) -> torch.Tensor:
    """One denoiser evaluation on a batch: history ``clips`` + current ``x`` at global timesteps ``t`` [B]."""
    out = denoiser(sample=[list(clips) + [x]], encoder_hidden_states=text.context,
                   encoder_attention_mask=text.mask, pooled_projections=text.pooled, timestep_ratio=t)
    return ops.first_output(out).float()


class LastBlockTokens:
    """Calls a denoiser and captures its last transformer block's image tokens (GAN heads read them).

    ``__call__(clips, x, t, text) -> (prediction, tokens)``: ``tokens`` [B, L, D] are all image tokens (history
    clips first, the current latent last; gradients flow to the input), or ``None`` for a denoiser without
    ``transformer_blocks``; ``dim`` is D there and the prediction's channel count otherwise.
    """

    def __init__(self, denoiser: nn.Module):
        self.denoiser = denoiser
        self._captured = None
        blocks = getattr(denoiser, "transformer_blocks", None)
        self.hooked = blocks is not None and len(blocks) > 0 and hasattr(denoiser, "inner_dim")
        self.dim = int(denoiser.inner_dim) if self.hooked else int(getattr(denoiser, "channels", 16))
        self.patch = int(getattr(denoiser, "patch_size", 1))
        if self.hooked:
            blocks[-1].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self._captured = output[1] if isinstance(output, (tuple, list)) else output

    def __call__(self, clips, x, t, text) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._captured = None
        out = predict(self.denoiser, clips, x, t, text)
        return out, (None if self._captured is None else self._captured.float())  # set by the hook only

    def current(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The tokens of the current latent ``x`` [B, C, F, H, W] (the last F * H/p * W/p of the sequence)."""
        frames, height, width = x.shape[2:]
        return tokens[:, -frames * (height // self.patch) * (width // self.patch):]


def predict_cfg(denoiser: nn.Module, clips: Sequence[torch.Tensor], x: torch.Tensor, t: torch.Tensor,
                cond: TextRows, uncond: TextRows, scale: float) -> torch.Tensor:
    """Classifier-free guided prediction ``v_u + w (v_c - v_u)`` (one batch-2B call, like the graph's CFG)."""
    if scale <= 1.0:
        return predict(denoiser, clips, x, t, cond)
    b = x.shape[0]
    both = TextRows.cat([uncond.repeat(b) if len(uncond) == 1 else uncond, cond])
    v = predict(denoiser, [torch.cat([c, c]) for c in clips], torch.cat([x, x]), torch.cat([t, t]), both)
    v_uncond, v_cond = v[:b], v[b:]
    return v_uncond + scale * (v_cond - v_uncond)


def student_local_sigmas(steps: int) -> list[float]:
    """Local sigmas at which an ``steps``-step stage evaluates the denoiser (the sampler's grid)."""
    return sched.local_sigmas(steps)[:steps]


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
