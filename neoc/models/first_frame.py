"""First-frame generators (Neodragon §4): the video starts from a high-quality first frame, the (step-distilled)
denoiser continues it.

The paper generates the first frame with SSD-1B in 4 steps, encodes it with the (fixed) VAE encoder and lets the
1-1-1 distilled MMDiT generate the remaining latent frames: the distilled student's weak point is exactly the first
frame (colour saturation, semantic drift), while its motion stays good.

Two pluggable kinds, both a pipeline ``first_frame`` component (``first_latent(pipe, prompt, cond, uncond, noise,
seed) -> [1, C, 1, h, w]`` normalised latent of frame 0):

* :class:`TeacherFirstFrame` — the embedded default: a frozen copy of the *undistilled* teacher denoiser sampling
  only latent frame 0 with the base model's first-frame schedule (20-20-20 steps, CFG). For ``builtin:pyramid-tiny``
  that teacher is a toy-world text-to-image model already: build_tiny trains it with 35 % first-frame batches on
  3,200 encoded first frames, so a separate T2I model trained on the same frames would duplicate it. Frame 0 has no
  history, so its 120 evaluations run at the smallest token counts; ``bench/distill_table.py`` measures the quality
  and CPU latency it adds over the 1-1-1 student alone.
* :class:`SDXLFirstFrame` — real scale: an SDXL-class pipeline (SSD-1B) from a local folder through diffusers
  (``StableDiffusionXLPipeline``, 4 steps), the image resized to the video size and encoded by the pipeline's
  ``vae_encoder``. Weights are never downloaded: a missing diffusers install or folder is a clear
  :class:`~neoc.errors.InputError`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from neoc.errors import InputError


class TeacherFirstFrame(nn.Module):
    def __init__(self, denoiser: nn.Module, steps: tuple[int, ...] = (20, 20, 20), guidance_scale: float = 7.0,
                 gamma: float = 1.0 / 3.0):
        super().__init__()
        self.denoiser = denoiser
        self.steps = tuple(int(s) for s in steps)
        self.guidance_scale = float(guidance_scale)
        self.gamma = float(gamma)

    def schedule(self):
        from neoc.ir.schedule import Schedule

        return Schedule(num_stages=len(self.steps), gamma=self.gamma, first_frame_steps=self.steps,
                        video_steps=self.steps, guidance_scale=self.guidance_scale,
                        video_guidance_scale=self.guidance_scale, label="first-frame teacher")

    @torch.no_grad()
    def first_latent(self, pipe, prompt: str, cond, uncond, noise: dict, seed: int) -> torch.Tensor:
        from neoc.distill.sampling import sample_latents

        return sample_latents(pipe, cond, uncond, noise, self.schedule(), denoiser=self.denoiser, num_units=1)

    def forward(self, *args, **kwargs):  # not called by the graph; the end-to-end sampler calls first_latent
        raise RuntimeError("TeacherFirstFrame is driven by neoc.distill.e2e (first_latent), not called directly")


class SDXLFirstFrame(nn.Module):
    """SSD-1B / SDXL text-to-image from a local diffusers folder (``model_index.json`` + component folders)."""

    def __init__(self, folder: str, steps: int = 4, guidance_scale: float = 0.0, image_size: int = 1024,
                 dtype: str = "float32"):
        super().__init__()
        self.folder, self.steps, self.guidance_scale = str(folder), int(steps), float(guidance_scale)
        self.image_size, self.dtype = int(image_size), dtype
        self._pipe = None

    def load(self):
        if self._pipe is not None:
            return self._pipe
        try:
            from diffusers import StableDiffusionXLPipeline
        except ImportError:
            raise InputError("first_frame: the SDXL / SSD-1B generator needs diffusers "
                             "(pip install diffusers); it is not installed") from None
        folder = Path(self.folder)
        if not (folder / "model_index.json").is_file():
            raise InputError(f"first_frame: {folder}: no diffusers pipeline folder (model_index.json missing); "
                             "download SSD-1B (segmind/SSD-1B) there first, neoc never downloads weights")
        self._pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), torch_dtype=getattr(torch, self.dtype),
                                                               use_safetensors=True)
        return self._pipe

    @torch.no_grad()
    def image(self, prompt: str, negative_prompt: str, seed: int) -> torch.Tensor:
        """[1, 3, S, S] in [0, 1]."""
        pipe = self.load()
        gen = torch.Generator().manual_seed(int(seed))
        out = pipe(prompt=prompt, negative_prompt=negative_prompt or None, num_inference_steps=self.steps,
                   guidance_scale=self.guidance_scale, height=self.image_size, width=self.image_size,
                   generator=gen, output_type="pt")
        return out.images[:1].float()

    @torch.no_grad()
    def first_latent(self, pipe, prompt: str, cond, uncond, noise: dict, seed: int) -> torch.Tensor:
        if not pipe.has("vae_encoder"):
            raise InputError("first_frame: the SDXL first frame is encoded with the pipeline's vae_encoder, "
                             "which this pipeline does not have")
        image = self.image(prompt, pipe.spec.negative_prompt, seed)
        frame = resize_center_crop(image, pipe.spec.height, pipe.spec.width) * 2.0 - 1.0  # [1, 3, H, W]
        return pipe.component("vae_encoder").eval()(frame[:, :, None]).float()

    def forward(self, *args, **kwargs):
        raise RuntimeError("SDXLFirstFrame is driven by neoc.distill.e2e (first_latent), not called directly")


def resize_center_crop(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, 3, h, w] -> [B, 3, height, width]: scale the short side (antialiased), centre-crop."""
    h, w = image.shape[-2:]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    image = F.interpolate(image, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    return image[..., top:top + height, left:left + width].clamp(0, 1)


# ---- builders (registered in neoc.zoo.components) --------------------------------------------------------------
def build_teacher_first_frame(config: dict, device: str | None = None) -> TeacherFirstFrame:
    from neoc.ir.components import build_component

    den = config["denoiser"]
    if device == "meta":
        with torch.device("meta"):
            denoiser = build_component(den["builder"], den["config"], "first_frame.denoiser")
    else:
        denoiser = build_component(den["builder"], den["config"], "first_frame.denoiser")
    return TeacherFirstFrame(denoiser, tuple(config["steps"]), config["guidance_scale"], config.get("gamma", 1 / 3))


def describe_teacher_first_frame(module: TeacherFirstFrame) -> dict:
    from neoc.ir.components import describe_component

    name, config = describe_component(module.denoiser)
    return {"denoiser": {"builder": name, "config": config}, "steps": list(module.steps),
            "guidance_scale": module.guidance_scale, "gamma": module.gamma}


def build_sdxl_first_frame(config: dict, device: str | None = None) -> SDXLFirstFrame:
    return SDXLFirstFrame(config["folder"], config.get("steps", 4), config.get("guidance_scale", 0.0),
                          config.get("image_size", 1024), config.get("dtype", "float32"))


def describe_sdxl_first_frame(module: SDXLFirstFrame) -> dict:
    return {"folder": module.folder, "steps": module.steps, "guidance_scale": module.guidance_scale,
            "image_size": module.image_size, "dtype": module.dtype}
