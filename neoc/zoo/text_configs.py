"""Text-encoder configurations, real scale and tiny scale (plain dicts of HF config kwargs).

Real scale, "builtin:pyramid-flow-sd3" (pyramid-flow-facts.md §5; component-facts.md §3):
* `SD3_T5_CONFIG`: T5 v1.1 XXL encoder (`text_encoder_3/`), 4,762,310,656 params incl. the embedding.
* `SD3_CLIP_L_CONFIG`: CLIP ViT-L/14 text tower with projection (`text_encoder/`), 123,650,304 params
  (247 MB fp16 file).
* `SD3_CLIP_G_CONFIG`: OpenCLIP ViT-bigG/14 text tower with projection (`text_encoder_2/`), as in
  SDXL/SD3: 694,659,840 params (1.39 GB fp16 file).
* `DT5_BASE_CONFIG`: T5 v1.1-base encoder shape of DistillT5's student, 109,628,544 params.
The CLIP values mirror the SDXL `text_encoder*/config.json` files found via code search (the SD3 HF files
were not readable offline); the meta-device param counts match the SD3 fp16 file sizes. `eos_token_id: 2`
reproduces the released configs: transformers then pools CLIP at the argmax token id, which is the
end token (49407, the largest id) for the real CLIP vocabulary.

Tiny scale, "builtin:pyramid-tiny": same classes, small widths; vocabularies are the shipped tokenizers
(neoc/zoo/assets/, built by neoc.zoo.build_tokenizer). The tiny CLIP configs name the real end-token
id (1), so pooling takes the first `<|endoftext|>` position.
"""

from __future__ import annotations

# --- prompt conventions (pyramid-flow-facts.md §4.5, §5) -------------------------------------------
SD3_PROMPT_SUFFIX = ", hyper quality, Ultra HD, 8K"
SD3_NEGATIVE_PROMPT = (
    "cartoon style, worst quality, low quality, blurry, absolute black, absolute white, low res, "
    "extra limbs, extra digits, misplaced objects, mutated anatomy, monochrome, horror"
)
SD3_T5_MAX_LENGTH = 128
SD3_CLIP_MAX_LENGTH = 77

# The toy model trains with 10% empty-prompt dropout; its sampler uses "" as the negative prompt.
TINY_PROMPT_SUFFIX = ""
TINY_NEGATIVE_PROMPT = ""
TINY_T5_MAX_LENGTH = 32
TINY_CLIP_MAX_LENGTH = 32

# --- real scale -------------------------------------------------------------------------------------
SD3_T5_CONFIG = {
    "model_type": "t5",
    "vocab_size": 32128,
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",  # -> dense_act_fn gelu_new, gated (wi_0, wi_1)
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.1,  # inactive in eval()
    "tie_word_embeddings": False,
    "is_encoder_decoder": False,
    "use_cache": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
}

DT5_BASE_CONFIG = {
    **SD3_T5_CONFIG,
    "d_model": 768,
    "d_ff": 2048,
    "d_kv": 64,
    "num_heads": 12,
    "num_layers": 12,
}

SD3_CLIP_L_CONFIG = {
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

SD3_CLIP_G_CONFIG = {
    **SD3_CLIP_L_CONFIG,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

# Exact parameter counts (meta device, transformers' classes; tests/test_text_encoders.py checks them).
SD3_T5_PARAMS = 4_762_310_656
SD3_CLIP_L_PARAMS = 123_650_304
SD3_CLIP_G_PARAMS = 694_659_840
DT5_BASE_PARAMS = 109_628_544

# --- tiny scale -------------------------------------------------------------------------------------
TINY_T5_VOCAB_SIZE = 2000  # neoc/zoo/assets/tiny_t5_unigram.json
TINY_CLIP_VOCAB_SIZE = 2000  # neoc/zoo/assets/tiny_clip_bpe.json

TINY_T5_CONFIG = {  # teacher
    **SD3_T5_CONFIG,
    "vocab_size": TINY_T5_VOCAB_SIZE,
    "d_model": 192,
    "d_ff": 512,
    "d_kv": 48,
    "num_heads": 4,
    "num_layers": 3,
    "dropout_rate": 0.0,
}

TINY_DT5_CONFIG = {  # student for replace-text-encoder: same tokenizer, half width, fewer layers
    **TINY_T5_CONFIG,
    "d_model": 96,
    "d_ff": 256,
    "d_kv": 48,
    "num_heads": 2,
    "num_layers": 2,
}

TINY_CLIP_L_CONFIG = {
    **SD3_CLIP_L_CONFIG,
    "vocab_size": TINY_CLIP_VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": TINY_CLIP_MAX_LENGTH,
    "projection_dim": 64,
    "bos_token_id": 0,  # <|startoftext|>
    "eos_token_id": 1,  # <|endoftext|>
    "pad_token_id": 1,
}

TINY_CLIP_G_CONFIG = {**TINY_CLIP_L_CONFIG, "hidden_act": "gelu"}
