"""Same-input numerics checks for the semantics-preserving deployment passes (Neodragon §4.1).

A pass records the outputs of its component on fixed, seeded probe inputs before the rewrite, rewrites, runs the
same inputs again and reports ``max_abs_diff``. Denoiser probes cover every distinct call of the pipeline graph
(its shape signature and static extra inputs), with random latents and context and a text mask with padding, so
masks, RoPE time ids and history layouts are all exercised.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from neoc.deploy.precompute import PRECOMPUTED_KWARGS
from neoc.errors import CheckFailed
from neoc.models.mmdit import PyramidMMDiT

STANDARD_KWARGS = ("sample", "encoder_hidden_states", "encoder_attention_mask", "pooled_projections",
                   "timestep_ratio")
# inputs of a precomputed call (precompute-inputs) are derived from the standard ones: probes leave them out and
# let the denoiser compute them
DERIVED_KWARGS = PRECOMPUTED_KWARGS


def _constant_value(arg):
    """Evaluate a graph argument built only from static numbers (e.g. ``frame_vector((0., 1.))``)."""
    if isinstance(arg, fx.Node):
        if arg.op != "call_function" or arg.all_input_nodes:
            raise ValueError(f"denoiser input {arg.name} is not a static constant")
        return arg.target(*arg.args, **arg.kwargs)
    return arg


def text_mask(batch: int, length: int) -> torch.Tensor:
    """A T5 mask with padding: row b keeps the first ``length * (b + 2) // (batch + 2)`` tokens (at least 1)."""
    mask = torch.zeros(batch, length, dtype=torch.long)
    for row in range(batch):
        mask[row, : max(1, length * (row + 2) // (batch + 2))] = 1
    return mask


def call_inputs(mmdit: PyramidMMDiT, spec, signature, timestep: float, gen: torch.Generator) -> dict:
    """Random MMDiT inputs of one call signature ``(history [(t,h,w)...], (t,h,w), batch)``."""
    history, (frames, height, width), batch = signature
    channels = spec.latent_channels
    clips = [torch.randn((batch, channels, t, h, w), generator=gen) for t, h, w in history]
    clips.append(torch.randn((batch, channels, frames, height, width), generator=gen))
    embedder = mmdit.context_embedder
    width_in = embedder.in_features if isinstance(embedder, nn.Linear) else mmdit.inner_dim
    return {"sample": [clips],
            "encoder_hidden_states": torch.randn((batch, spec.t5_max_length, width_in), generator=gen),
            "encoder_attention_mask": text_mask(batch, spec.t5_max_length),
            "pooled_projections": torch.randn((batch, mmdit.config["pooled_projection_dim"]), generator=gen),
            "timestep_ratio": torch.full((batch,), float(timestep))}


def denoiser_probe_calls(pipeline, mmdit: PyramidMMDiT, seed: int) -> list[dict]:
    """One set of inputs per distinct denoiser call of the pipeline graph (signature + static extra inputs)."""
    gen = torch.Generator().manual_seed(int(seed))
    calls, seen = [], set()
    for node in pipeline.denoiser_nodes():
        extra = {k: _constant_value(v) for k, v in node.kwargs.items()
                 if k not in STANDARD_KWARGS and k not in DERIVED_KWARGS}
        key = (node.meta["signature"], tuple((k, tuple(v.tolist())) for k, v in sorted(extra.items())))
        if key in seen:
            continue
        seen.add(key)
        calls.append({**call_inputs(mmdit, pipeline.spec, node.meta["signature"], node.meta["timestep"], gen),
                      **extra})
    return calls


@torch.no_grad()
def run_calls(denoiser: nn.Module, calls: list[dict]) -> list[torch.Tensor]:
    was_training = denoiser.training
    denoiser.eval()
    try:
        return [denoiser(**call)[0].float() for call in calls]
    finally:
        denoiser.train(was_training)


def max_abs_diff(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(before, after, strict=True))


def check_tolerance(pass_name: str, diff: float, tolerance: float) -> None:
    if not diff <= tolerance:  # also catches NaN
        raise CheckFailed(f"{pass_name}: outputs changed by max_abs_diff={diff:.3g} > tolerance {tolerance:g}")
