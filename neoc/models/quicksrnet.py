"""QuickSRNet (Berger et al., CVPR 2023 MAI workshop; component-facts.md §4): the Neodragon 2x upsampler (§4).

A plain VGG-like network chosen for fixed-point NPUs: conv3x3(3 -> C) + Hardtanh(0, 1), ``num_intermediate`` x
[conv3x3(C -> C) + Hardtanh(0, 1)], conv3x3(C -> 3 s^2), an optional input-to-output ("ito") anchor (a 1x1 conv
3 -> 3 s^2 initialised to copy each colour into its s^2 sub-pixels, i.e. nearest-neighbour upsampling; trainable
in Large), a Hardtanh(0, 1) clip and a depth-to-space (PixelShuffle). No BatchNorm, no ReLU.

Variants: ``small`` C=32, 2 intermediate convs (22,860 params at 2x); ``medium`` C=32, 5 (50,604); ``large`` C=64,
11, with the anchor (414,972). Small and Medium fold the residual into the initialisation instead: every conv gets
+1 on its centre-tap diagonal and the last conv +1 at ``[o, o // s^2, centre]``, so an untrained network is a
nearest-neighbour upsampler. neoc's default ``init="bicubic"`` puts (3x3-truncated) bicubic interpolation taps
into the last conv instead of the single centre tap (an untrained Small/Medium is then ~ a bicubic upsampler;
``"bilinear"`` is exact bilinear): the first three channels of every conv carry the image unchanged, the other
channels are random features, the last conv's random part and all biases start at zero, so training starts at
interpolation quality and a short
training on toy data beats it (``init="nearest"`` is the reference initialisation). Convs pad by edge replication
(the reference zero-pads), which keeps the interpolating start exact at the frame border too.

:class:`QuickSRNet` works on images ``[B, 3, H, W]`` in [0, 1]; :class:`VideoUpsampler` is the pipeline component
(``upsampler`` role): video ``[B, 3, F, H, W]`` in [-1, 1] -> ``[B, 3, F, sH, sW]`` in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

VARIANTS = {
    "small": {"channels": 32, "num_intermediate": 2, "use_ito": False},
    "medium": {"channels": 32, "num_intermediate": 5, "use_ito": False},
    "large": {"channels": 64, "num_intermediate": 11, "use_ito": True},
}


def _cubic(x: float, a: float = -0.75) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
    if x < 2:
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
    return 0.0


def interpolation_taps(scale: int, kind: str = "bicubic") -> torch.Tensor:
    """[scale, 3] 1D weights of source pixels (i-1, i, i+1) for each output sub-pixel of a x``scale`` upsample
    (``align_corners=False``: sub-pixel ``a`` samples source position ``i + (a + 0.5) / scale - 0.5``).

    ``bilinear`` is exact; ``bicubic`` (Keys, a = -0.75, PyTorch's kernel) is truncated to the 3x3 support, the
    weight of the dropped far tap folded into its neighbour so the taps still sum to 1."""
    taps = torch.zeros(scale, 3)
    for a in range(scale):
        d = (a + 0.5) / scale - 0.5
        if kind == "bilinear":
            if d < 0:
                taps[a, 0], taps[a, 1] = -d, 1.0 + d
            else:
                taps[a, 1], taps[a, 2] = 1.0 - d, d
            continue
        for k, offset in enumerate((-1, 0, 1)):
            taps[a, k] = _cubic(offset - d)
        far = _cubic(-2 - d) if d < 0 else _cubic(2 - d)
        taps[a, 0 if d < 0 else 2] += far
    return taps


class QuickSRNet(nn.Module):
    def __init__(self, scale: int = 2, channels: int = 32, num_intermediate: int = 2, use_ito: bool = False,
                 variant: str | None = None, init_scale: float = 1.0, init: str = "bicubic"):
        super().__init__()
        if init not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"QuickSRNet init {init!r}: expected bicubic, bilinear or nearest")
        self.init_scale, self.init = init_scale, init
        if scale not in (2, 3, 4):
            raise ValueError(f"QuickSRNet: scale must be 2, 3 or 4, got {scale}")
        self.scale, self.channels, self.num_intermediate, self.use_ito = scale, channels, num_intermediate, use_ito
        self.variant = variant
        out = 3 * scale * scale
        pad = dict(padding=1, padding_mode="replicate")
        self.conv_first = nn.Conv2d(3, channels, 3, **pad)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, **pad) for _ in range(num_intermediate))
        self.conv_last = nn.Conv2d(channels, out, 3, **pad)
        self.act = nn.Hardtanh(0.0, 1.0)
        self.anchor = nn.Conv2d(3, out, 1) if use_ito else None
        self.shuffle = nn.PixelShuffle(scale)
        self._initialise()

    @classmethod
    def from_variant(cls, variant: str, scale: int = 2) -> "QuickSRNet":
        if variant not in VARIANTS:
            raise ValueError(f"QuickSRNet variant {variant!r}: expected one of {', '.join(VARIANTS)}")
        return cls(scale=scale, variant=variant, **VARIANTS[variant])

    @torch.no_grad()
    def _initialise(self) -> None:
        s2 = self.scale * self.scale
        if self.anchor is not None:  # nearest-neighbour anchor: output channel o copies colour o // s^2
            self.anchor.weight.zero_()
            self.anchor.bias.zero_()
            for o in range(3 * s2):
                self.anchor.weight[o, o // s2, 0, 0] = 1.0
            if self.init != "nearest":  # start exactly at the anchor (the reference adds a random conv_last)
                self.conv_last.weight.zero_()
                self.conv_last.bias.zero_()
            return
        for conv in [self.conv_first, *self.convs]:
            conv.weight.mul_(self.init_scale)
            conv.bias.zero_()
            # the first 3 channels carry the image unchanged (y = x there); the others are random features
            keep = min(3, conv.in_channels, conv.out_channels) if self.init != "nearest" else min(conv.in_channels,
                                                                                                  conv.out_channels)
            if self.init != "nearest":
                conv.weight[:keep].zero_()
            for c in range(keep):
                conv.weight[c, c, 1, 1] += 1.0
        self.conv_last.weight.zero_()  # the output starts as exact interpolation of the input
        self.conv_last.bias.zero_()
        taps = interpolation_taps(self.scale, self.init)  # [s, 3]: weights of source rows i-1, i, i+1
        for o in range(self.conv_last.out_channels):
            colour, sub = divmod(o, s2)
            a, b = divmod(sub, self.scale)
            if self.init != "nearest":
                self.conv_last.weight[o, colour] += torch.outer(taps[a], taps[b])
            else:
                self.conv_last.weight[o, colour, 1, 1] += 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv_first(x))
        for conv in self.convs:
            h = self.act(conv(h))
        h = self.conv_last(h)
        if self.anchor is not None:
            h = h + self.anchor(x)
        return self.shuffle(self.act(h))

    def describe(self) -> dict:
        return {"scale": self.scale, "channels": self.channels, "num_intermediate": self.num_intermediate,
                "use_ito": self.use_ito, "variant": self.variant, "init": self.init}


class VideoUpsampler(nn.Module):
    """Pipeline ``upsampler``: frames in [-1, 1] through an image SR network frame by frame (batched)."""

    def __init__(self, net: QuickSRNet, frames_per_batch: int = 64):
        super().__init__()
        self.net = net
        self.frames_per_batch = frames_per_batch

    @property
    def scale(self) -> int:
        return self.net.scale

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        frames = (frames.float() + 1.0) * 0.5
        out = torch.cat([self.net(chunk) for chunk in frames.split(self.frames_per_batch)])
        s = self.net.scale
        out = out * 2.0 - 1.0
        return out.reshape(b, f, c, h * s, w * s).permute(0, 2, 1, 3, 4).to(video.dtype)


def build_upsampler(config: dict, device: str | None = None) -> VideoUpsampler:
    def make():
        net = QuickSRNet(scale=int(config.get("scale", 2)), channels=int(config["channels"]),
                         num_intermediate=int(config["num_intermediate"]), use_ito=bool(config["use_ito"]),
                         variant=config.get("variant"), init=config.get("init", "bicubic"))
        return VideoUpsampler(net, int(config.get("frames_per_batch", 64)))

    if device == "meta":
        with torch.device("meta"):
            return make()
    return make()


def describe_upsampler(module: VideoUpsampler) -> dict:
    return {**module.net.describe(), "frames_per_batch": module.frames_per_batch}
