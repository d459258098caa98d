"""``t5-fp16-rescale``: scale T5's residual/FF adds so activations stay in FP16 range (Neodragon §4.1).

T5 v1.1 XXL's residual stream (the ``res_add`` after self-attention and the ``ff_add`` after the gated FFN)
grows past FP16's 65504 on real prompts. T5's RMSNorm is scale-invariant, which gives an exact rewrite: divide
the whole residual stream by ``s``

* the token embedding and every sublayer's output projection (``SelfAttention.o``, ``DenseReluDense.wo``)
  are multiplied by ``1/s``, so every residual add carries ``x / s``;
* every RMSNorm's ``eps`` becomes ``eps / s**2``: ``(x/s) * rsqrt(var(x)/s**2 + eps/s**2) = x * rsqrt(var(x) + eps)``,
  so each sublayer input, and the final norm's output, is exactly the original.

``s`` is calibrated: run prompts, take the largest ``|activation|`` on the residual stream and choose the
smallest power of two that brings it under ``target_max``. A power of two keeps the rewrite exact in floating
point (scaling by ``2**-k`` only changes exponents). When activations already fit, the pass changes nothing.
"""

from __future__ import annotations

import math

import attrs
import torch

from neoc.config import in_range
from neoc.errors import CheckFailed
from neoc.pass_api import Pass, PassResult
from neoc.passes.static_shape import TRAINING
from neoc.registry import register_pass

FP16_MAX = 65504.0
CALIBRATION_PROMPTS = (
    "a red ball bouncing on a wooden floor",
    "a timelapse of clouds drifting over snowy mountains, golden hour",
    "a close-up of a cat's face, shallow depth of field, 4k",
    "an astronaut riding a horse on the moon, cinematic lighting",
    "waves crashing on a rocky shore at night under a full moon",
    "a busy street market in the rain, neon signs reflecting on the wet ground",
    "",
    "a blue square",
)


@attrs.frozen
class T5Fp16RescaleConfig:
    target_max: float = attrs.field(default=3.0e4, validator=in_range(1.0, 65504.0))
    tolerance: float = 1e-4
    calib_prompts: int = attrs.field(default=8, validator=in_range(1))


def calibration_tokens(pipeline, ctx, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 ids/mask of up to ``count`` prompts: the recipe's ``eval.prompts`` if given, else a built-in set."""
    prompts = list(CALIBRATION_PROMPTS)
    if ctx.eval.prompts is not None:
        from neoc.data.prompts import read_prompts

        prompts = read_prompts(ctx.eval.prompts) or prompts
    prompts = prompts[:count]
    if pipeline.prompt_encoder is None:
        raise CheckFailed("t5-fp16-rescale: the pipeline has no tokenizers to encode calibration prompts")
    tokens = pipeline.prompt_encoder.encode(prompts)
    return tokens["t5_ids"], tokens["t5_mask"]


def residual_stream_modules(t5_model) -> list:
    """The modules whose outputs are the residual stream: embedding, each res_add and each ff_add."""
    stack = t5_model.encoder
    modules = [stack.embed_tokens]
    for block in stack.block:
        modules.extend(block.layer)  # T5LayerSelfAttention (res_add), T5LayerFF (ff_add)
    return modules


@torch.no_grad()
def residual_stream_stats(text_encoder, t5_model, ids, mask) -> tuple[float, int, torch.Tensor]:
    """(max |activation| on the residual stream, how many values exceed FP16's max, the encoder output)."""
    stats = {"max": 0.0, "overflow": 0}

    def record(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        magnitude = hidden.detach().float().abs()
        stats["max"] = max(stats["max"], float(magnitude.max()))
        stats["overflow"] += int((magnitude > FP16_MAX).sum())

    handles = [m.register_forward_hook(record) for m in residual_stream_modules(t5_model)]
    was_training = text_encoder.training
    text_encoder.eval()
    try:
        output = text_encoder(ids, mask).float()
    finally:
        text_encoder.train(was_training)
        for handle in handles:
            handle.remove()
    return stats["max"], stats["overflow"], output


def power_of_two_scale(max_activation: float, target_max: float) -> float:
    """Smallest ``s = 2**k`` (k >= 0) with ``max_activation / s <= target_max``."""
    if max_activation <= target_max:
        return 1.0
    return 2.0 ** math.ceil(math.log2(max_activation / target_max))


@torch.no_grad()
def rescale_residual_stream(t5_model, scale: float) -> None:
    """Divide the residual stream by ``scale`` (see module docstring); in place, weights and eps."""
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    stack = t5_model.encoder
    scaled = {id(stack.embed_tokens.weight): stack.embed_tokens.weight}  # tied with `shared`: scale once
    for block in stack.block:
        for layer in block.layer:
            projection = layer.SelfAttention.o if hasattr(layer, "SelfAttention") else layer.DenseReluDense.wo
            scaled[id(projection.weight)] = projection.weight
    for weight in scaled.values():
        weight.div_(scale)
    for module in t5_model.modules():
        if isinstance(module, T5LayerNorm):
            module.variance_epsilon = module.variance_epsilon / scale**2
    t5_model.config.layer_norm_epsilon = t5_model.config.layer_norm_epsilon / scale**2


@register_pass
class T5Fp16Rescale(Pass):
    name = "t5-fp16-rescale"
    summary = "Rescale T5 residual and feed-forward adds so activations fit FP16, functionally equivalent"
    paper = "Neodragon §4.1"
    Config = T5Fp16RescaleConfig
    implemented = True
    semantics_preserving = True
    forbids_after = TRAINING

    def check_preconditions(self, pipeline, ctx) -> None:
        from neoc.deploy.text_encoder import t5_of

        text_encoder = pipeline.component("text_encoder")
        if t5_of(text_encoder) is None:
            raise CheckFailed(f"t5-fp16-rescale: the text encoder ({type(text_encoder).__name__}) is not T5-class")
        layer_norms = {type(m).__name__ for m in t5_of(text_encoder).t5.modules() if "LayerNorm" in type(m).__name__}
        if layer_norms != {"T5LayerNorm"}:
            raise CheckFailed(f"t5-fp16-rescale: expected T5's RMSNorm only, found {sorted(layer_norms)}")

    def run(self, pipeline, ctx) -> PassResult:
        from neoc.deploy.probe import check_tolerance, max_abs_diff
        from neoc.deploy.text_encoder import t5_of

        text_encoder = pipeline.component("text_encoder")
        t5_model = t5_of(text_encoder).t5
        ids, mask = calibration_tokens(pipeline, ctx, self.config.calib_prompts)
        max_before, overflow_before, reference = residual_stream_stats(text_encoder, t5_model, ids, mask)
        scale = power_of_two_scale(max_before, self.config.target_max)
        metrics = {"scale": scale, "max_activation_before": max_before, "overflow_fp16_before": overflow_before}
        if scale == 1.0:
            return PassResult(pipeline, False, {**metrics, "max_abs_diff": 0.0, "max_activation_after": max_before,
                                                "overflow_fp16_after": overflow_before})

        rescale_residual_stream(t5_model, scale)
        pipeline.replace_component("text_encoder", text_encoder)
        max_after, overflow_after, output = residual_stream_stats(text_encoder, t5_model, ids, mask)
        diff = max_abs_diff([reference], [output])
        check_tolerance(self.name, diff, self.config.tolerance)
        if max_after > self.config.target_max:
            raise CheckFailed(f"t5-fp16-rescale: max activation {max_after:.4g} still above "
                              f"target_max {self.config.target_max:g}")
        return PassResult(pipeline, True, {**metrics, "max_abs_diff": diff, "max_activation_after": max_after,
                                           "overflow_fp16_after": overflow_after})
