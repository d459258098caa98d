"""Train and evaluate the QuickSRNet 2x upsampler (Neodragon §4) on toy-world frames and real clips.

    python -m neoc.train.sr --variant small --steps 2000 --out out/sr-small [--ship]

Data: high-resolution frames are toy-world *train* clips rendered at ``2 * size`` and frames of the *train* real
clips (``../shared/data/videos``) at ``2 * size``; the low-resolution input is their bicubic (antialiased)
downsample, as SR training sets are made (DIV2K bicubic track). Random ``crop``-pixel HR crops, L1 loss, AdamW,
on the shared :class:`neoc.train.loop.Trainer` (checkpoint / resume, DDP under torchrun). PSNR is measured on
held-out frames (toy-world *eval* scenes and *eval* real clips, full frames) against bicubic upsampling.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from neoc.models.quicksrnet import QuickSRNet, VideoUpsampler


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic antialiased downsample of images [B, 3, H, W] in [0, 1]."""
    h, w = hr.shape[-2:]
    return F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 1)


def bicubic_up(lr: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = lr.shape[-2:]
    return F.interpolate(lr, size=(h * scale, w * scale), mode="bicubic", align_corners=False).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (mean squared error over everything)."""
    mse = float(F.mse_loss(a.float(), b.float()))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def toy_frames(split: str, count: int, size: int, seed: int, frames_per_clip: int = 4) -> torch.Tensor:
    """``count`` toy-world clips of ``split`` at ``size`` px, ``frames_per_clip`` evenly spaced frames each,
    as images [N, 3, size, size] in [0, 1]."""
    from neoc.data.toyworld import NUM_FRAMES, ToyWorldDataset, render

    data = ToyWorldDataset(split, count, seed)
    ids = torch.linspace(0, NUM_FRAMES - 1, frames_per_clip).round().long().tolist()
    out = []
    for i in range(count):
        scene, _ = data.scene_and_caption(i)
        out.append(render(scene, NUM_FRAMES, size, frame_ids=ids).permute(0, 3, 1, 2).float() / 255.0)
    return torch.cat(out)


def real_frames(split: str, size: int, max_frames: int = 48, stride: int = 4) -> torch.Tensor:
    """Frames of the real clips of ``split`` at ``size`` px (empty when no clips are available)."""
    from neoc.data.videos import default_data_root, list_clips, read_clip, split_clips

    try:
        clips = split_clips(list_clips(default_data_root() / "videos"), split)
    except Exception:
        return torch.zeros(0, 3, size, size)
    out = []
    for clip in clips:
        video = read_clip(clip, size=size, max_frames=max_frames, frame_stride=stride)  # [3, F, H, W] in [-1, 1]
        out.append((video.permute(1, 0, 2, 3) + 1.0) * 0.5)
    return torch.cat(out) if out else torch.zeros(0, 3, size, size)


@dataclass
class SRSettings:
    variant: str = "small"
    scale: int = 2
    steps: int = 2000
    batch_size: int = 16
    crop: int = 64               # HR crop
    size: int = 64               # LR frame size of the toy pipeline (HR = scale * size)
    lr: float = 5e-4
    loss: str = "mse"            # mse (what PSNR measures) | l1
    toy_clips: int = 200
    real_max_frames: int = 48
    eval_toy_clips: int = 16
    seed: int = 0


class SRObjective(nn.Module):
    def __init__(self, net: QuickSRNet, loss: str = "mse"):
        super().__init__()
        self.net = net
        self.loss = loss

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        pred = self.net(batch["lr"])
        mse = F.mse_loss(pred, batch["hr"])
        loss = mse if self.loss == "mse" else F.l1_loss(pred, batch["hr"])
        return loss, {"mse": mse.detach()}


def make_batch(frames: torch.Tensor, generator: torch.Generator, batch_size: int, crop: int, scale: int) -> dict:
    index = torch.randint(0, frames.shape[0], (batch_size,), generator=generator)
    h, w = frames.shape[-2:]
    hr = []
    for i in index.tolist():
        y = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
        x = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
        patch = frames[i, :, y:y + crop, x:x + crop]
        if float(torch.rand((), generator=generator)) < 0.5:
            patch = patch.flip(-1)
        hr.append(patch)
    hr = torch.stack(hr)
    return {"lr": downscale(hr, scale), "hr": hr}


def training_frames(settings: SRSettings) -> torch.Tensor:
    hr_size = settings.scale * settings.size
    toy = toy_frames("train", settings.toy_clips, hr_size, settings.seed)
    real = real_frames("train", hr_size, settings.real_max_frames)
    return torch.cat([toy, real]) if real.numel() else toy


@torch.no_grad()
def evaluate(net: QuickSRNet, settings: SRSettings) -> dict:
    """PSNR of the network and of bicubic upsampling on held-out toy-world and real frames."""
    net.eval()
    hr_size = settings.scale * settings.size
    sets = {"toy": toy_frames("eval", settings.eval_toy_clips, hr_size, settings.seed)}
    real = real_frames("eval", hr_size, settings.real_max_frames)
    if real.numel():
        sets["real"] = real
    out = {}
    for name, hr in sets.items():
        lr = downscale(hr, settings.scale)
        out[name] = {"frames": int(hr.shape[0]), "psnr_db": psnr(net(lr).clamp(0, 1), hr),
                     "psnr_bicubic_db": psnr(bicubic_up(lr, settings.scale), hr)}
        out[name]["gain_db"] = out[name]["psnr_db"] - out[name]["psnr_bicubic_db"]
    return out


def train(settings: SRSettings, out_dir: str | Path | None, resume: bool = True, progress: bool | None = None):
    from neoc.train.loop import TrainConfig, Trainer, warmup_constant

    torch.manual_seed(settings.seed)
    net = QuickSRNet.from_variant(settings.variant, settings.scale)
    frames = training_frames(settings)
    objective = SRObjective(net, settings.loss)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=settings.lr, weight_decay=0.0)
    config = TrainConfig(steps=settings.steps, out_dir=out_dir, seed=settings.seed, grad_clip=1.0, resume=resume,
                         checkpoint_every=max(0, settings.steps // 4), progress=progress, autocast="off",
                         name=f"quicksrnet-{settings.variant}", log_every=50)
    trainer = Trainer(objective, optimizer, warmup_constant(20), config)
    result = trainer.fit(lambda ctx: make_batch(frames, ctx.generator, settings.batch_size, settings.crop,
                                                settings.scale))
    return trainer.module.net.eval(), result, int(frames.shape[0])


def save_upsampler(net: QuickSRNet, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={"config": json.dumps(net.describe()), "record": json.dumps(metadata)})


def load_upsampler(path: str | Path) -> VideoUpsampler:
    """A trained QuickSRNet file (written by :func:`save_upsampler`) as a pipeline ``upsampler`` component."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["config"])
    net = QuickSRNet(scale=config["scale"], channels=config["channels"],
                     num_intermediate=config["num_intermediate"], use_ito=config["use_ito"],
                     variant=config.get("variant"), init=config.get("init", "bicubic"))
    net.load_state_dict(load_file(str(path)), strict=True)
    return VideoUpsampler(net.eval())


def shipped_path(variant: str, scale: int = 2) -> Path:
    return Path(__file__).resolve().parents[1] / "zoo" / "weights" / f"quicksrnet-{variant}-{scale}x.safetensors"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--toy-clips", type=int, default=200)
    parser.add_argument("--out", default="out/sr")
    parser.add_argument("--ship", action="store_true", help="write the weights into neoc/zoo/weights")
    args = parser.parse_args(argv)
    settings = SRSettings(variant=args.variant, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          toy_clips=args.toy_clips)
    out = Path(args.out) / args.variant
    net, result, count = train(settings, out / "train")
    metrics = evaluate(net, settings)
    record = {"settings": settings.__dict__, "train_frames": count, "steps": result.steps,
              "final_loss": result.final_loss, "eval": metrics,
              "params": sum(p.numel() for p in net.parameters())}
    print(json.dumps(record, indent=1))
    (out / "record.json").write_text(json.dumps(record, indent=1))
    save_upsampler(net, out / f"quicksrnet-{args.variant}-2x.safetensors", record)
    if args.ship:
        save_upsampler(net, shipped_path(args.variant), record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
