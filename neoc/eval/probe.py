"""The toy-world probe: a small video classifier that stands in for VBench's detectors.

VBench scores semantic dimensions with pretrained detectors (GRiT for object class / colour, UMT for
actions, Tag2Text for scene; component-facts.md §7) and quality dimensions partly with DINO features.
None of those weights exist offline, and none know the toy world, so neoc trains this probe on
ground-truth toy-world renders (``neoc/eval/train_probe.py``) and ships it as
``neoc/zoo/weights/quality-probe.safetensors``.

Architecture (~0.9 M parameters):
  input  video [B, 3, F, H, W] in [-1, 1]  -> resampled to [B, 3, 17, 64, 64]  (every 3rd of 49 frames)
  frame encoder, 2D, shared over frames: 4 conv3x3 (+GroupNorm, SiLU), strides 2,2,2,1
                                         -> [B*17, 64, 8, 8]
  frame descriptor: spatial max ++ spatial mean -> [B, 17, 128]. Max pooling keeps a small object's
                    evidence that a mean over mostly-background cells would dilute. This is the
                    per-frame feature (subject_consistency).
  shape / colour heads: per-frame Linear(128, classes), logits averaged over frames (every frame
                        carries the label, so every frame is supervised)
  temporal encoder, 3D: conv (3,3,3) stride (1,2,2) -> [B, 96, 17, 4, 4]
                        conv (3,3,3) stride (2,1,1) -> [B, 128, 9, 4, 4]
                        adaptive mean pool          -> [B, 128, 4, 2, 2]  (keeps coarse where/when, so
                                                        left vs right and grow vs shrink stay separable)
  embedding: Linear(2048 + 128, 128) SiLU Linear(128, 64) on (3D features ++ frame-mean descriptor)
             -> [B, 64]  (the clip feature for the Fréchet distance)
  heads on the embedding: motion, background, background_color.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from neoc.data.toyworld import ATTRIBUTE_CLASSES
from neoc.errors import InputError

PROBE_WEIGHTS = Path(__file__).resolve().parents[1] / "zoo" / "weights" / "quality-probe.safetensors"
PROBE_FRAMES = 17
PROBE_SIZE = 64
EMBED_DIM = 64
FRAME_DIM = 128
FRAME_HEADS = ("shape", "color")  # read per frame from the frame descriptor
HEADS = tuple(ATTRIBUTE_CLASSES)  # shape, color, motion, background, background_color


def _conv2d_block(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1), nn.GroupNorm(8, out_ch), nn.SiLU())


def _conv3d_block(in_ch: int, out_ch: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_ch, out_ch, 3, stride, 1), nn.GroupNorm(8, out_ch), nn.SiLU())


def resample_for_probe(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1] -> [B, 3, 17, 64, 64]: evenly spaced frames, area-resized frames."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise InputError(f"probe input: expected video [B, 3, F, H, W], got {tuple(video.shape)}")
    batch, _, frames, height, width = video.shape
    frame_ids = torch.linspace(0, frames - 1, PROBE_FRAMES).round().long()
    picked = video.float()[:, :, frame_ids]                                  # [B, 3, 17, H, W]
    if (height, width) != (PROBE_SIZE, PROBE_SIZE):
        flat = picked.transpose(1, 2).reshape(batch * PROBE_FRAMES, 3, height, width)
        flat = F.interpolate(flat, size=(PROBE_SIZE, PROBE_SIZE), mode="area")
        picked = flat.reshape(batch, PROBE_FRAMES, 3, PROBE_SIZE, PROBE_SIZE).transpose(1, 2)
    return picked.contiguous()


class ToyProbe(nn.Module):
    """Video classifier + feature extractor for the toy world (see module docstring)."""

    def __init__(self):
        super().__init__()
        self.frame_encoder = nn.Sequential(
            _conv2d_block(3, 24, 2),    # 64 -> 32
            _conv2d_block(24, 48, 2),   # 32 -> 16
            _conv2d_block(48, 64, 2),   # 16 -> 8
            _conv2d_block(64, 64, 1),   # 8
        )
        self.temporal_encoder = nn.Sequential(
            _conv3d_block(64, 96, (1, 2, 2)),   # [96, 17, 4, 4]
            _conv3d_block(96, 128, (2, 1, 1)),  # [128, 9, 4, 4]
            nn.AdaptiveAvgPool3d((4, 2, 2)),    # [128, 4, 2, 2]
        )
        self.embedding = nn.Sequential(nn.Linear(128 * 16 + FRAME_DIM, 128), nn.SiLU(), nn.Linear(128, EMBED_DIM))
        self.frame_heads = nn.ModuleDict({name: nn.Linear(FRAME_DIM, len(ATTRIBUTE_CLASSES[name]))
                                          for name in FRAME_HEADS})
        self.heads = nn.ModuleDict({name: nn.Linear(EMBED_DIM, len(classes))
                                    for name, classes in ATTRIBUTE_CLASSES.items() if name not in FRAME_HEADS})
        # Reference statistics of ground-truth eval renders, filled by train_probe (used by quality.py):
        self.register_buffer("reference_mean", torch.zeros(EMBED_DIM))            # clip-embedding mean
        self.register_buffer("reference_cov", torch.eye(EMBED_DIM))               # clip-embedding covariance
        self.register_buffer("frame_feature_mean", torch.zeros(FRAME_DIM))        # per-frame feature mean
        self.register_buffer("frame_feature_std", torch.ones(FRAME_DIM))          # per-frame feature std

    @staticmethod
    def describe(frame_maps: torch.Tensor) -> torch.Tensor:
        """Frame descriptor: spatial max ++ spatial mean of frame-encoder maps [N, 64, h, w] -> [N, 128]."""
        return torch.cat([frame_maps.amax(dim=(2, 3)), frame_maps.mean(dim=(2, 3))], dim=1)

    def frame_logits(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-frame heads (shape, colour) for single frames [N, 3, 64, 64]: {name: [N, classes]}."""
        descriptor = self.describe(self.frame_encoder(frames))
        return {name: head(descriptor) for name, head in self.frame_heads.items()}

    def encode(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of a batch of videos [B, 3, F, H, W] in [-1, 1].

        Returns ``embedding`` [B, 64] and ``frame_features`` [B, 17, 128] (spatial max ++ mean of the
        frame encoder output, one vector per sampled frame).
        """
        clip = resample_for_probe(video)                                        # [B, 3, 17, 64, 64]
        batch = clip.shape[0]
        frames = clip.transpose(1, 2).reshape(batch * PROBE_FRAMES, 3, PROBE_SIZE, PROBE_SIZE)
        frame_maps = self.frame_encoder(frames)                                 # [B*17, 64, 8, 8]
        descriptor = self.describe(frame_maps)                                  # [B*17, 128]
        frame_features = descriptor.reshape(batch, PROBE_FRAMES, FRAME_DIM)            # [B, 17, 128]
        volume = frame_maps.reshape(batch, PROBE_FRAMES, 64, 8, 8).transpose(1, 2)     # [B, 64, 17, 8, 8]
        pooled = self.temporal_encoder(volume).flatten(1)                        # [B, 128*4*2*2]
        embedding = self.embedding(torch.cat([pooled, frame_features.mean(1)], dim=1))  # [B, 64]
        return {"embedding": embedding, "frame_features": frame_features}

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head ({name: [B, classes]}) plus the ``embedding`` and ``frame_features``."""
        features = self.encode(video)
        logits = {name: head(features["embedding"]) for name, head in self.heads.items()}
        for name, head in self.frame_heads.items():
            logits[name] = head(features["frame_features"]).mean(1)  # [B, 17, C] -> [B, C]
        return {**logits, **features}


def save_probe(probe: ToyProbe, path: str | Path, metadata: dict | None = None) -> Path:
    """Write the probe as safetensors (metadata: JSON strings)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous() for name, tensor in probe.state_dict().items()}
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
    return path


def load_probe(path: str | Path = PROBE_WEIGHTS) -> ToyProbe:
    """Load the shipped probe (safetensors only). InputError naming the file or tensor on mismatch."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: probe weights not found (train them: python -m neoc.eval.train_probe)")
    state = load_file(str(path))
    probe = ToyProbe()
    expected = probe.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(f"{path}: probe tensors do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise InputError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(expected[name].shape)}")
    probe.load_state_dict(state)
    return probe.eval()


def probe_available(path: str | Path = PROBE_WEIGHTS) -> bool:
    return Path(path).is_file()
