"""Train the toy-world quality probe (``neoc/eval/probe.py``) and write its shipped weights.

Command (CPU, one thread, seeded):

    PYTHONPATH=. python3 -m neoc.eval.train_probe --steps 600 --frame-steps 400 --out neoc/zoo/weights/quality-probe.safetensors

Measured: 1709 s (28.5 min) on the shared 2-core dev machine under a load average of ~9
(phase 1 ~7 min, phase 2 ~21 min); expect far less on an idle machine.

Phase 1 (``--frame-steps`` x ``--frame-batch`` single frames): the frame encoder and the per-frame
shape/colour heads, one random probe frame from each of 64 different scenes per step. Shape needs
many distinct objects; whole clips give 17 near-identical views of one object (a clip-only run of
1000 steps reached only 48 % held-out shape accuracy).
Phase 2 (``--steps`` x ``--batch-size`` clips): all heads on whole clips.

Data: ground-truth renders of the toy world's TRAIN split (fresh scenes every step, never eval
scenes), with light degradations so the probe also reads generated videos: Gaussian blur, additive
pixel noise, low-frequency blotches, slight colour/contrast jitter, per-frame brightness flicker and
JPEG-like blockiness (2x block averaging + coarse quantisation). Each degradation is applied with
probability 1/2, independently.

After training it computes, on EVAL-split renders: held-out accuracy per head (clean and degraded),
and the reference statistics quality.py uses (clip-embedding mean/covariance, per-frame feature
mean/std). Accuracies and settings go to ``<out>.json`` beside the weights (and into the
safetensors metadata).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neoc.data.toyworld import NUM_FRAMES, ToyWorldDataset, attribute_index, render, render_float
from neoc.eval.probe import HEADS, PROBE_FRAMES, PROBE_SIZE, PROBE_WEIGHTS, ToyProbe, resample_for_probe, save_probe

PROBE_FRAME_IDS = torch.linspace(0, NUM_FRAMES - 1, PROBE_FRAMES).round().long().tolist()  # as resample_for_probe


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (xs / sigma) ** 2)
    return kernel / kernel.sum()


def blur_frames(clip: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every frame of [3, T, H, W] (reflect padding)."""
    kernel = _gaussian_kernel(sigma)
    radius = kernel.numel() // 2
    channels, frames, height, width = clip.shape
    flat = clip.reshape(channels * frames, 1, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return flat.reshape(channels, frames, height, width)


def degrade(clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random light degradations of one probe-resolution clip [3, 17, 64, 64] in [-1, 1]."""
    out = clip
    if rng.random() < 0.5:
        out = blur_frames(out, float(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.5:  # slight colour / contrast jitter (small enough to keep the colour name)
        gain = torch.from_numpy(rng.uniform(0.92, 1.08, size=3).astype(np.float32)).view(3, 1, 1, 1)
        contrast = float(rng.uniform(0.85, 1.15))
        offset = float(rng.uniform(-0.06, 0.06))
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * contrast * gain + mean + offset
    if rng.random() < 0.5:  # low-frequency blotches, like an under-trained generator's
        coarse = torch.from_numpy(rng.normal(0, 1, size=(3, out.shape[1], 4, 4)).astype(np.float32))
        blotch = F.interpolate(coarse, size=out.shape[-2:], mode="bicubic", align_corners=False)
        out = out + float(rng.uniform(0.02, 0.08)) * blotch
    if rng.random() < 0.5:  # per-frame brightness flicker
        flicker = torch.from_numpy(rng.normal(0, float(rng.uniform(0.01, 0.04)), size=out.shape[1]).astype(np.float32))
        out = out + flicker.view(1, -1, 1, 1)
    if rng.random() < 0.5:  # JPEG-like blockiness and quantisation
        factor = 2  # 4x blocks at 64 px would erase the smallest shapes
        small = F.avg_pool2d(out.transpose(0, 1), factor)
        out = F.interpolate(small, scale_factor=factor, mode="nearest").transpose(0, 1)
        levels = float(rng.choice([16.0, 32.0, 64.0]))
        out = torch.round((out + 1) * levels / 2) * 2 / levels - 1
    if rng.random() < 0.5:
        out = out + float(rng.uniform(0.01, 0.08)) * torch.from_numpy(rng.normal(0, 1, size=out.shape).astype(np.float32))
    return out.clamp(-1, 1)


def make_batch(dataset: ToyWorldDataset, indices: list[int], rng: np.random.Generator | None):
    """Probe-resolution clips [B, 3, 17, 64, 64] (degraded when ``rng`` is given) and labels {head: [B]}."""
    clips, labels = [], {name: [] for name in HEADS}
    for index in indices:
        scene, _ = dataset.scene_and_caption(index)
        clip = resample_for_probe(render_float(scene)[None])[0]  # [3, 17, 64, 64]
        clips.append(degrade(clip, rng) if rng is not None else clip)
        for name, value in attribute_index(scene).items():
            labels[name].append(value)
    return torch.stack(clips), {name: torch.tensor(values) for name, values in labels.items()}


@torch.no_grad()
def evaluate(probe: ToyProbe, dataset: ToyWorldDataset, degraded_seed: int | None, batch_size: int = 32) -> dict:
    """Accuracy per head on a whole dataset (clean, or degraded with a fixed seed)."""
    probe.eval()
    rng = None if degraded_seed is None else np.random.default_rng(degraded_seed)
    correct = {name: 0 for name in HEADS}
    for start in range(0, len(dataset), batch_size):
        indices = list(range(start, min(start + batch_size, len(dataset))))
        clips, labels = make_batch(dataset, indices, rng)
        outputs = probe(clips)
        for name in HEADS:
            correct[name] += int((outputs[name].argmax(-1) == labels[name]).sum())
    return {name: correct[name] / len(dataset) for name in HEADS}


@torch.no_grad()
def reference_statistics(probe: ToyProbe, dataset: ToyWorldDataset, batch_size: int = 32) -> None:
    """Fill the probe's reference buffers from clean ground-truth renders of ``dataset``."""
    probe.eval()
    embeddings, frame_features = [], []
    for start in range(0, len(dataset), batch_size):
        indices = list(range(start, min(start + batch_size, len(dataset))))
        clips, _ = make_batch(dataset, indices, None)
        features = probe.encode(clips)
        embeddings.append(features["embedding"])
        frame_features.append(features["frame_features"].reshape(-1, features["frame_features"].shape[-1]))
    embedding = torch.cat(embeddings).double()
    frames = torch.cat(frame_features)
    probe.reference_mean.copy_(embedding.mean(0).float())
    probe.reference_cov.copy_(torch.cov(embedding.T).float())
    probe.frame_feature_mean.copy_(frames.mean(0))
    probe.frame_feature_std.copy_(frames.std(0).clamp_min(1e-4))


def _cosine_schedule(optimizer, steps: int):
    warmup = max(1, steps // 50)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))


def pretrain_frames(probe: ToyProbe, steps: int, batch_size: int, seed: int, lr: float,
                    log_every: int = 50) -> None:
    """Phase 1: the frame encoder and per-frame heads (shape, colour) on single degraded frames.

    One random probe frame from each of ``batch_size`` different train scenes per step: many more
    distinct shapes per second than whole clips, which is what shape recognition needs.
    """
    rng = np.random.default_rng(seed + 1)
    frames_set = ToyWorldDataset("train", steps * batch_size, seed=seed + 1)
    parameters = list(probe.frame_encoder.parameters()) + list(probe.frame_heads.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    schedule = _cosine_schedule(optimizer, steps)
    started, running = time.time(), None
    probe.train()
    for step in range(steps):
        frames, labels = [], {name: [] for name in probe.frame_heads}
        for index in range(step * batch_size, (step + 1) * batch_size):
            scene, _ = frames_set.scene_and_caption(index)
            frame_id = int(PROBE_FRAME_IDS[rng.integers(len(PROBE_FRAME_IDS))])  # one of the probe's frames
            frame = render(scene, frame_ids=[frame_id]).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, 1, 128, 128]
            frame = F.interpolate(frame.transpose(0, 1), size=(PROBE_SIZE, PROBE_SIZE), mode="area")  # [1, 3, 64, 64]
            frames.append(degrade(frame.transpose(0, 1), rng)[:, 0])
            for name, value in attribute_index(scene).items():
                if name in labels:
                    labels[name].append(value)
        logits = probe.frame_logits(torch.stack(frames))                    # {name: [B, C]}
        loss = sum(F.cross_entropy(logits[name], torch.tensor(values), label_smoothing=0.02)
                   for name, values in labels.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % log_every == 0 or step == steps - 1:
            print(f"frames {step:5d}/{steps}  loss {running:.4f}  {time.time() - started:7.1f}s", flush=True)


def train(steps: int, batch_size: int, seed: int, lr: float, frame_steps: int = 0, frame_batch: int = 64,
          log_every: int = 50) -> tuple[ToyProbe, dict]:
    """Phase 1 (``frame_steps`` single-frame steps), then phase 2: all heads on whole clips."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    probe = ToyProbe()
    started_all = time.time()
    if frame_steps:
        pretrain_frames(probe, frame_steps, frame_batch, seed, lr, log_every)
    train_set = ToyWorldDataset("train", steps * batch_size, seed=seed)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    schedule = _cosine_schedule(optimizer, steps)
    started = time.time()
    running = None
    for step in range(steps):
        probe.train()
        indices = list(range(step * batch_size, (step + 1) * batch_size))
        clips, labels = make_batch(train_set, indices, rng)
        outputs = probe(clips)
        loss = sum(F.cross_entropy(outputs[name], labels[name], label_smoothing=0.02) for name in HEADS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:5d}/{steps}  loss {running:.4f}  lr {schedule.get_last_lr()[0]:.2e}  "
                  f"{time.time() - started:7.1f}s", flush=True)
    return probe, {"train_seconds": time.time() - started_all}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frame-steps", type=int, default=400, help="phase-1 single-frame steps")
    parser.add_argument("--frame-batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-size", type=int, default=384)
    parser.add_argument("--out", type=Path, default=PROBE_WEIGHTS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    probe, info = train(args.steps, args.batch_size, args.seed, args.lr, args.frame_steps, args.frame_batch)
    eval_set = ToyWorldDataset("eval", args.eval_size, seed=args.seed)
    accuracy_clean = evaluate(probe, eval_set, degraded_seed=None)
    accuracy_degraded = evaluate(probe, eval_set, degraded_seed=args.seed + 1)
    reference_statistics(probe, eval_set)
    report = {
        "command": f"python3 -m neoc.eval.train_probe --steps {args.steps} --batch-size {args.batch_size} "
                   f"--frame-steps {args.frame_steps} --frame-batch {args.frame_batch} "
                   f"--lr {args.lr} --seed {args.seed} --eval-size {args.eval_size}",
        "steps": args.steps, "frame_steps": args.frame_steps, "frame_batch": args.frame_batch, "batch_size": args.batch_size, "seed": args.seed, "threads": args.threads,
        "train_seconds": round(info["train_seconds"], 1),
        "params": sum(p.numel() for p in probe.parameters()),
        "heldout_accuracy": accuracy_clean,
        "heldout_accuracy_degraded": accuracy_degraded,
        "heldout_videos": args.eval_size,
    }
    save_probe(probe, args.out, metadata={"report": report})
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
