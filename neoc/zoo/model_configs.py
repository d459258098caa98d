"""Model configs in the released config.json format (reference/pyramid-flow-facts.md §2.1, §3.1).

``SD3_*`` are exact copies of the released ``rain1011/pyramid-flow-sd3`` files
(``diffusion_transformer_384p/config.json`` = ``_768p``, ``causal_video_vae/config.json``). The
load-time overrides the reference pipeline applies to the denoiser are
``neoc.models.mmdit.LOAD_TIME_OVERRIDES`` (``PyramidMMDiT.from_config`` applies them).

``TINY_*`` are the ``builtin:pyramid-tiny`` toy-world configs: the same architecture classes, shrunk.
"""

from __future__ import annotations

import copy

SD3_MMDIT_CONFIG: dict = {
    "_class_name": "PyramidDiffusionMMDiT",
    "_diffusers_version": "0.30.0",
    "attention_head_dim": 64,
    "caption_projection_dim": 1536,
    "in_channels": 16,
    "joint_attention_dim": 4096,
    "max_num_frames": 200,
    "num_attention_heads": 24,
    "num_layers": 24,
    "patch_size": 2,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
    "pos_embed_type": "sincos",
    "qk_norm": "rms_norm",
    "sample_size": 128,
    "use_flash_attn": False,
    "use_gradient_checkpointing": False,
    "use_temporal_causal": True,
}

SD3_VAE_CONFIG: dict = {
    "_class_name": "CausalVideoVAE",
    "_diffusers_version": "0.29.2",
    "add_post_quant_conv": True,
    "decoder_act_fn": "silu",
    "decoder_block_dropout": [0.0, 0.0, 0.0, 0.0],
    "decoder_block_out_channels": [128, 256, 512, 512],
    "decoder_in_channels": 16,
    "decoder_layers_per_block": [3, 3, 3, 3],
    "decoder_norm_num_groups": 32,
    "decoder_out_channels": 3,
    "decoder_spatial_up_sample": [True, True, True, False],
    "decoder_temporal_up_sample": [True, True, True, False],
    "decoder_type": "causal_vae_conv",
    "decoder_up_block_types": ["UpDecoderBlockCausal3D"] * 4,
    "downsample_scale": 8,
    "encoder_act_fn": "silu",
    "encoder_block_dropout": [0.0, 0.0, 0.0, 0.0],
    "encoder_block_out_channels": [128, 256, 512, 512],
    "encoder_double_z": True,
    "encoder_down_block_types": ["DownEncoderBlockCausal3D"] * 4,
    "encoder_in_channels": 3,
    "encoder_layers_per_block": [2, 2, 2, 2],
    "encoder_norm_num_groups": 32,
    "encoder_out_channels": 16,
    "encoder_spatial_down_sample": [True, True, True, False],
    "encoder_temporal_down_sample": [True, True, True, False],
    "encoder_type": "causal_vae_conv",
    "interpolate": False,
    "sample_size": 256,
    "scaling_factor": 0.13025,
}

# Toy world (preamble): 64x64 RGB, 49 frames -> latents 16 x 7 x 8x8; patch 2 (16 tokens a frame at full
# resolution); tiny T5 width 192.
TINY_MMDIT_CONFIG: dict = {
    "_class_name": "PyramidDiffusionMMDiT",
    "attention_head_dim": 32,
    "caption_projection_dim": 128,
    "in_channels": 16,
    "joint_attention_dim": 192,
    "max_num_frames": 200,
    "num_attention_heads": 4,
    "num_layers": 8,
    "patch_size": 2,
    "pooled_projection_dim": 128,
    "pos_embed_max_size": 24,
    "pos_embed_type": "sincos",
    "qk_norm": "rms_norm",
    "sample_size": 8,
    "use_flash_attn": False,
    "use_temporal_causal": True,
}

TINY_VAE_CONFIG: dict = {
    **copy.deepcopy(SD3_VAE_CONFIG),
    "decoder_block_out_channels": [16, 32, 64, 64],
    "decoder_layers_per_block": [2, 2, 2, 2],
    "decoder_norm_num_groups": 0,  # per-channel affine, no GroupNorm statistics (causal_vae.ChannelAffine)
    "encoder_block_out_channels": [16, 32, 64, 64],
    "encoder_layers_per_block": [1, 1, 1, 1],
    "encoder_norm_num_groups": 0,
    "sample_size": 64,
}
