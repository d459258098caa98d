"""Static description of a pipeline: its spec (shapes, text lengths, latent normalisation) and its schedule."""

from __future__ import annotations

import attrs

from neoc.config import in_range


@attrs.frozen
class PipelineSpec:
    """Shapes and constants of a pyramidal T2V pipeline (reference/pyramid-flow-facts.md §3.4, §4, §5)."""

    name: str
    frames: int = attrs.field(default=49, validator=in_range(1))
    height: int = attrs.field(default=384, validator=in_range(64))
    width: int = attrs.field(default=640, validator=in_range(64))
    latent_channels: int = 16
    spatial_downsample: int = 8
    temporal_downsample: int = 8
    patch_size: int = 2
    t5_max_length: int = 128
    clip_max_length: int = 77
    image_shift: float = 0.1490
    image_scale: float = 1 / 1.8415
    video_shift: float = -0.2343
    video_scale: float = 1 / 3.0986
    prompt_suffix: str = ", hyper quality, Ultra HD, 8K"
    negative_prompt: str = ("cartoon style, worst quality, low quality, blurry, absolute black, absolute white, "
                            "low res, extra limbs, extra digits, misplaced objects, mutated anatomy, monochrome, horror")
    fps: int = 24

    def __attrs_post_init__(self):
        if (self.frames - 1) % self.temporal_downsample:
            raise ValueError(f"frames must be 1 + {self.temporal_downsample}*k, got {self.frames}")
        unit = self.spatial_downsample * 4 * self.patch_size  # lowest pyramid stage must still patchify
        if self.height % unit or self.width % unit:
            raise ValueError(f"height and width must be multiples of {unit}, got {self.height}x{self.width}")

    @property
    def latent_frames(self) -> int:
        return 1 + (self.frames - 1) // self.temporal_downsample

    def latent_size(self, stage: int, num_stages: int = 3) -> tuple[int, int]:
        """Latent (h, w) at pyramid ``stage`` (0 = lowest resolution)."""
        factor = 2 ** (num_stages - 1 - stage)
        return (self.height // self.spatial_downsample // factor, self.width // self.spatial_downsample // factor)

    def tokens_per_frame(self, stage: int, num_stages: int = 3) -> int:
        h, w = self.latent_size(stage, num_stages)
        return (h // self.patch_size) * (w // self.patch_size)


@attrs.frozen
class Schedule:
    """The static sampling schedule: stages x steps x latent frames x CFG.

    Every step is a flow-matching Euler step on the stage's local sigmas; a 1-step stage therefore jumps straight
    to the stage's end point (the Pyramidal-DMD student rule, paper §3.4).
    """

    num_stages: int = attrs.field(default=3, validator=in_range(1, 4))
    gamma: float = 1.0 / 3.0
    first_frame_steps: tuple[int, ...] = (20, 20, 20)
    video_steps: tuple[int, ...] = (10, 10, 10)
    guidance_scale: float = 7.0
    video_guidance_scale: float = 5.0
    label: str = "native"
    #: ``autoregressive``: latent frame by latent frame, each conditioned on the generated history (Pyramid-Flow);
    #: ``joint``: one unit holding every latent frame, denoised together by a bidirectional DiT (Wan / LTX-style),
    #: with ``video_steps`` and ``video_guidance_scale``
    temporal: str = attrs.field(default="autoregressive",
                                validator=attrs.validators.in_(("autoregressive", "joint")))

    def __attrs_post_init__(self):
        for name in ("first_frame_steps", "video_steps"):
            steps = getattr(self, name)
            if len(steps) != self.num_stages or any(s < 1 for s in steps):
                raise ValueError(f"{name} must list {self.num_stages} positive step counts, got {list(steps)}")

    def units(self, latent_frames: int) -> int:
        """Sampling units: one per latent frame (autoregressive) or one for the whole video (joint)."""
        return 1 if self.temporal == "joint" else latent_frames

    def steps_for_unit(self, unit: int) -> tuple[int, ...]:
        return self.first_frame_steps if unit == 0 and self.temporal != "joint" else self.video_steps

    def guidance_for_unit(self, unit: int) -> float:
        return self.guidance_scale if unit == 0 and self.temporal != "joint" else self.video_guidance_scale

    def uses_cfg(self, unit: int) -> bool:
        """CFG runs a batch-2 (negative, positive) evaluation; guidance <= 1 means the conditional branch only."""
        return self.guidance_for_unit(unit) > 1.0

    def nfe(self, latent_frames: int) -> int:
        """Denoiser evaluations for a video, CFG branches counted separately."""
        return sum(sum(self.steps_for_unit(k)) * (2 if self.uses_cfg(k) else 1)
                   for k in range(self.units(latent_frames)))
