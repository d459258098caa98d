"""Builders for the reference components, so run folders rebuild them from JSON configs (no pickle).

Each builder takes the JSON config written by its ``describe`` and a device (``meta`` for analysis).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from neoc.ir.components import register_builder, register_prompt_encoder
from neoc.models.bidirectional_dit import BidirectionalVideoDiT
from neoc.models.causal_vae import CausalVideoVAE
from neoc.models.latent_norm import LatentNorm, VAELatentDecoder, VAELatentEncoder
from neoc.models.mmdit import PyramidMMDiT
from neoc.models.text_encoders import PooledClipEncoders, PromptEncoderBundle, T5TextEncoder

_HF_DROP = {"transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype",
            "_attn_implementation_autoset", "id2label", "label2id", "use_cache"}


def hf_config(model) -> dict[str, Any]:
    """A transformers model's config as a JSON-able dict that rebuilds the same architecture."""
    return {k: v for k, v in model.config.to_dict().items() if k not in _HF_DROP}


# ---- denoiser ----------------------------------------------------------------------------------------------
def build_mmdit(config: dict, device: str | None = None) -> PyramidMMDiT:
    config = dict(config)
    external = config.pop("external_context_embedder", False)
    if device == "meta":
        import torch

        with torch.device("meta"):
            model = PyramidMMDiT(**config)
    else:
        model = PyramidMMDiT(**config)
    if external:
        model.split_context_embedder()
    return model


def describe_mmdit(model: PyramidMMDiT) -> dict:
    return {**model.config, "external_context_embedder": not isinstance(model.context_embedder, nn.Linear)}


# ---- VAE wrappers ------------------------------------------------------------------------------------------
def _norm_list(norm: LatentNorm) -> list[float]:
    return [norm.image_shift, norm.image_scale, norm.video_shift, norm.video_scale]


def _vae(config: dict, device: str | None):
    if device == "meta":
        import torch

        with torch.device("meta"):
            return CausalVideoVAE(**config)
    return CausalVideoVAE(**config)


def build_vae_decoder(config: dict, device: str | None = None) -> VAELatentDecoder:
    module = VAELatentDecoder(_vae(config["vae"], device), LatentNorm(*config["norm"]),
                              temporal_chunk=config.get("temporal_chunk", False),
                              window_size=config.get("window_size", 2))
    module.vae_config = dict(config["vae"])
    return module


def describe_vae_decoder(module: VAELatentDecoder) -> dict:
    return {"vae": module.vae_config, "norm": _norm_list(module.norm), "temporal_chunk": module.temporal_chunk,
            "window_size": module.window_size}


def build_vae_encoder(config: dict, device: str | None = None) -> VAELatentEncoder:
    module = VAELatentEncoder(_vae(config["vae"], device), LatentNorm(*config["norm"]),
                              sample_mode=config.get("sample_mode", "mode"))
    module.vae_config = dict(config["vae"])
    return module


def describe_vae_encoder(module: VAELatentEncoder) -> dict:
    return {"vae": module.vae_config, "norm": _norm_list(module.norm), "sample_mode": module.sample_mode}


# ---- text side ---------------------------------------------------------------------------------------------
def build_t5(config: dict, device: str | None = None) -> T5TextEncoder:
    return T5TextEncoder.from_config(config, device=device)


def build_clips(config: dict, device: str | None = None) -> PooledClipEncoders:
    return PooledClipEncoders.from_config(config["clip_l"], config["clip_g"], device=device)


register_builder("pyramid.MMDiT", PyramidMMDiT, build_mmdit, describe_mmdit)
register_builder("pyramid.VAELatentDecoder", VAELatentDecoder, build_vae_decoder, describe_vae_decoder)
register_builder("pyramid.VAELatentEncoder", VAELatentEncoder, build_vae_encoder, describe_vae_encoder)
register_builder("hf.T5Encoder", T5TextEncoder, build_t5, lambda m: hf_config(m.t5))
register_builder("hf.PooledClipEncoders", PooledClipEncoders, build_clips,
                 lambda m: {"clip_l": hf_config(m.clip_l), "clip_g": hf_config(m.clip_g)})
register_prompt_encoder("bundle", lambda folder, description: PromptEncoderBundle.load(folder, description))


# ---- student components of the compression passes -------------------------------------------------------------
from neoc.models.context_adapter import ContextAdapter  # noqa: E402
from neoc.models.dt5 import DT5Encoder  # noqa: E402
from neoc.models.taehv import TAEHVDecoder  # noqa: E402


def build_dt5(config: dict, device: str | None = None) -> DT5Encoder:
    def make():
        return DT5Encoder(T5TextEncoder.from_config(config["t5"], device=device), config.get("out_dim"))

    if device == "meta":
        import torch

        with torch.device("meta"):
            return make()
    return make()


def _build_on(device, factory):
    if device == "meta":
        import torch

        with torch.device("meta"):
            return factory()
    return factory()


register_builder("neoc.DT5Encoder", DT5Encoder, build_dt5,
                 lambda m: {"t5": hf_config(m.encoder.t5), "out_dim": m.out_dim})
register_builder("neoc.ContextAdapter", ContextAdapter,
                 lambda c, device=None: _build_on(device, lambda: ContextAdapter(**c)),
                 lambda m: {"in_dim": m.in_dim, "out_dim": m.out_dim, "num_layers": m.num_layers})
register_builder("neoc.TAEHVDecoder", TAEHVDecoder,
                 lambda c, device=None: _build_on(device, lambda: TAEHVDecoder(
                     c["latent_channels"], tuple(c["channels"]), c["blocks_per_stage"], tuple(c["time_upscale"]),
                     c.get("latent_norm"))),
                 lambda m: {"latent_channels": m.latent_channels, "channels": list(m.channels),
                            "blocks_per_stage": m.blocks_per_stage, "time_upscale": list(m.time_upscale),
                            "latent_norm": None if m.latent_norm is None else list(m.latent_norm)})

# ---- swap-decoder's second decoder family (Wan-style causal 3D decoder) ---------------------------------------
from neoc.models.wan_decoder import WanDecoder  # noqa: E402

register_builder("neoc.WanDecoder", WanDecoder,
                 lambda c, device=None: _build_on(device, lambda: WanDecoder(
                     c["latent_channels"], tuple(c["channels"]), c["blocks_per_stage"], tuple(c["time_upscale"]),
                     c.get("latent_norm"))),
                 lambda m: {"latent_channels": m.latent_channels, "channels": list(m.channels),
                            "blocks_per_stage": m.blocks_per_stage, "time_upscale": list(m.time_upscale),
                            "latent_norm": None if m.latent_norm is None else list(m.latent_norm)})

# ---- end-to-end components of distill-steps (Neodragon §4): QuickSRNet upsampler, first-frame generator ----------
from neoc.models.quicksrnet import VideoUpsampler, build_upsampler, describe_upsampler  # noqa: E402

register_builder("neoc.QuickSRNet", VideoUpsampler, build_upsampler, describe_upsampler)

from neoc.models.first_frame import (SDXLFirstFrame, TeacherFirstFrame, build_sdxl_first_frame,  # noqa: E402
                                     build_teacher_first_frame, describe_sdxl_first_frame,
                                     describe_teacher_first_frame)

register_builder("neoc.TeacherFirstFrame", TeacherFirstFrame, build_teacher_first_frame, describe_teacher_first_frame)
register_builder("neoc.SDXLFirstFrame", SDXLFirstFrame, build_sdxl_first_frame, describe_sdxl_first_frame)


register_builder("neoc.BidirectionalVideoDiT", BidirectionalVideoDiT, lambda c: BidirectionalVideoDiT(**c),
                 lambda m: dict(m.config))
