"""``mask-value``: finite, fp16-safe attention mask values in T5 and the denoiser (Neodragon §4.1).

The reference masks attention with ``-inf`` / ``finfo(dtype).min`` (HF T5's extended mask) or a boolean mask
(the MMDiT's SDPA call). On an FP16 NPU these saturate or overflow (``min + bias -> -inf``, then NaN rows).
The pass uses one finite additive value instead (default -1e4): ``exp(-1e4 + s - max)`` underflows to exactly 0
for every realistic score, so masked keys still get zero weight and the function is unchanged.

* denoiser: ``attention_mask_fill_value`` of the MMDiT (additive 0 / value mask), recorded on the
  :class:`~neoc.deploy.denoiser.DeployDenoiser` wrapper;
* T5: the encoder is wrapped in :class:`~neoc.deploy.text_encoder.FiniteMaskTextEncoder`, which builds the
  key-padding bias itself.

Both are checked on the same inputs before and after (denoiser probe calls, random token ids with padding).
"""

from __future__ import annotations

import attrs
import torch

from neoc.config import in_range
from neoc.errors import CheckFailed
from neoc.pass_api import Pass, PassResult
from neoc.passes.static_shape import TRAINING
from neoc.registry import register_pass


@attrs.frozen
class MaskValueConfig:
    value: float = attrs.field(default=-1.0e4, validator=in_range(-65504.0, -1.0))
    tolerance: float = 1e-4


def text_probe(text_encoder, length: int, seed: int, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Random T5 token ids [batch, length] and a mask with padding (row 0 almost all padding)."""
    from neoc.deploy.probe import text_mask
    from neoc.deploy.text_encoder import t5_of

    vocab = t5_of(text_encoder).t5.config.vocab_size
    gen = torch.Generator().manual_seed(int(seed))
    ids = torch.randint(1, vocab, (batch, length), generator=gen)
    mask = text_mask(batch, length)
    return ids.masked_fill(mask == 0, 0), mask


@torch.no_grad()
def encode(text_encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    was_training = text_encoder.training
    text_encoder.eval()
    try:
        return text_encoder(ids, mask).float()
    finally:
        text_encoder.train(was_training)


@register_pass
class MaskValue(Pass):
    name = "mask-value"
    summary = "Replace -inf / dtype-min attention mask values by a finite fp16-safe constant"
    paper = "Neodragon §4.1"
    Config = MaskValueConfig
    implemented = True
    semantics_preserving = True
    forbids_after = TRAINING

    def check_preconditions(self, pipeline, ctx) -> None:
        from neoc.deploy.denoiser import DeployDenoiser, require_mmdit
        from neoc.deploy.text_encoder import FiniteMaskTextEncoder, t5_of

        denoiser, _ = require_mmdit(pipeline, "mask-value")
        text_encoder = pipeline.component("text_encoder")
        if t5_of(text_encoder) is None:
            raise CheckFailed(f"mask-value: the text encoder ({type(text_encoder).__name__}) is not T5-class; "
                              "there is no T5 attention mask to rewrite")
        if (isinstance(denoiser, DeployDenoiser) and denoiser.mask_fill_value is not None
                and isinstance(text_encoder, FiniteMaskTextEncoder)):
            raise CheckFailed("mask-value: finite mask values are already in place (denoiser fill value "
                              f"{denoiser.mask_fill_value:g}, T5 mask value {text_encoder.mask_value:g})")

    def run(self, pipeline, ctx) -> PassResult:
        from neoc.deploy.denoiser import deploy_denoiser
        from neoc.deploy.probe import check_tolerance, denoiser_probe_calls, max_abs_diff, run_calls
        from neoc.deploy.text_encoder import FiniteMaskTextEncoder

        value = self.config.value
        # denoiser: boolean mask -> additive 0 / value
        denoiser = deploy_denoiser(pipeline)
        calls = denoiser_probe_calls(pipeline, denoiser.mmdit, ctx.seed)
        before = run_calls(denoiser, calls)
        denoiser.set_mask_fill_value(value)
        pipeline.replace_component("denoiser", denoiser)
        diff_denoiser = max_abs_diff(before, run_calls(denoiser, calls))

        # T5: HF's dtype-min extended mask -> the finite key-padding bias
        text_encoder = pipeline.component("text_encoder")
        ids, mask = text_probe(text_encoder, pipeline.spec.t5_max_length, ctx.seed)
        reference = encode(text_encoder, ids, mask)
        inner = text_encoder.inner if isinstance(text_encoder, FiniteMaskTextEncoder) else text_encoder
        wrapped = FiniteMaskTextEncoder(inner, value)
        pipeline.replace_component("text_encoder", wrapped)
        diff_text = max_abs_diff([reference], [encode(wrapped, ids, mask)])

        diff = max(diff_denoiser, diff_text)
        check_tolerance(self.name, diff, self.config.tolerance)
        return PassResult(pipeline, True, {"max_abs_diff": diff, "max_abs_diff_denoiser": diff_denoiser,
                                           "max_abs_diff_text_encoder": diff_text, "mask_value": value})
