"""``swap-decoder``: asymmetric decoder distillation (Neodragon §3.2, Table 3).

The VAE encoder (and so the denoiser's latent space) stays frozen; the decoder is replaced by a device-friendly
TAEHV-style decoder finetuned end to end with ``w_mse * MSE + w_lpips * LPIPS``.
"""

from __future__ import annotations

from typing import Literal

import attrs

from neoc.config import in_range
from neoc.pass_api import Pass
from neoc.registry import register_pass


@attrs.frozen
class SwapDecoderConfig:
    family: Literal["taehv", "wan"] = "taehv"
    steps: int = attrs.field(default=3000, validator=in_range(1))
    batch_size: int = attrs.field(default=2, validator=in_range(1))
    lr: float = attrs.field(default=3e-4, validator=in_range(0.0))
    patch_frames: int = attrs.field(default=33, validator=in_range(1))
    patch_size: int = attrs.field(default=256, validator=in_range(8))
    w_mse: float = attrs.field(default=10.0, validator=in_range(0.0))
    w_lpips: float = attrs.field(default=1.0, validator=in_range(0.0))
    channels: tuple[int, ...] = ()  # decoder widths per stage; () = TAEHV's (256,128,64,64) at real scale,
    #                                 (64,32,16,16) for small pipelines


def decoder_channels(pipeline, config: SwapDecoderConfig) -> tuple[int, ...]:
    if config.channels:
        return tuple(config.channels)
    real = pipeline.spec.height * pipeline.spec.width >= 256 * 256
    return (256, 128, 64, 64) if real else (64, 32, 16, 16)


def build_decoder(pipeline, config: SwapDecoderConfig, device: str | None = None):
    from neoc.models.taehv import TAEHVDecoder
    from neoc.zoo.components import _build_on

    if config.family != "taehv":
        raise NotImplementedError(f"decoder family '{config.family}' is not built yet")
    channels = decoder_channels(pipeline, config)
    return _build_on(device, lambda: TAEHVDecoder(pipeline.spec.latent_channels, channels))


@register_pass
class SwapDecoder(Pass):
    name = "swap-decoder"
    summary = "Replace the VAE decoder by a TAEHV-style decoder distilled through the frozen encoder"
    paper = "Neodragon §3.2"
    Config = SwapDecoderConfig
    implemented = False

    def analyze(self, pipeline) -> None:
        pipeline.replace_component("vae_decoder", build_decoder(pipeline, self.config, device="meta"))
