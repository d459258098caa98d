"""Built-in passes, one per file. Importing this package registers them."""

from neoc.passes import (  # noqa: F401
    distill_steps,
    mask_value,
    precompute_inputs,
    prune_blocks,
    quantize_w8a16,
    replace_text_encoder,
    rope_rank_reduction,
    static_shape,
    swap_decoder,
    t5_fp16_rescale,
)

TRAINING_PASSES = ("replace-text-encoder", "swap-decoder", "prune-blocks", "distill-steps")
DEPLOYMENT_PASSES = ("static-shape", "precompute-inputs", "rope-rank-reduction", "mask-value", "t5-fp16-rescale")
