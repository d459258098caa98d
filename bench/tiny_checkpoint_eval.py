"""Score a ``builtin:pyramid-tiny`` denoiser checkpoint of a ``neoc.zoo.build_tiny`` folder before it ships.

    python bench/tiny_checkpoint_eval.py --build out/b67 [--step 9700] [--guidance 2 1.5] [--num 16] [--train 8]

The build's VAE, refined decoder and latent normalisation with the checkpoint's EMA denoiser-side roles; the
quality instrument on the first ``--num`` held-out toy prompts (seed 0, as ``neoc eval --num``) and on the first
``--train`` of the build's own training prompts (underfitting vs generalisation). Prints one JSON line each.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def rounded(result: dict) -> dict:
    keep = {k: result[k] for k in ("total", "quality", "semantic", "dimensions")}
    return {k: round(v, 3) if isinstance(v, float) else {d: round(x, 3) for d, x in v.items()} for k, v in keep.items()}


def checkpoint_pipeline(build: Path, step: int | None, guidance=None):
    """The build's pipeline with checkpoint ``step``'s EMA denoiser-side roles (None: the latest checkpoint) at
    ``guidance`` (first-frame, video CFG; None: the build's chosen, cfg.json). Prints which checkpoint it loaded."""
    from neoc.train import checkpoint as ckpt
    from neoc.zoo import build_tiny as bt

    folder = build / "denoiser" / "checkpoints"
    path = folder / f"step-{step:08d}" if step is not None else ckpt.latest_checkpoint(build / "denoiser")
    if path is None or not path.is_dir():
        raise FileNotFoundError(f"no checkpoint{' step ' + str(step) if step is not None else ''} under {folder}")
    state = ckpt.load_checkpoint(path)
    guidance = tuple(guidance) if guidance else bt.chosen_guidance(build)
    pipe = bt.candidate_pipeline(build, guidance, {**state["model"], **(state["ema"] or {})})
    print(f"checkpoint {path} (step {state['step']}, EMA), CFG {guidance[0]:g} / {guidance[1]:g}", flush=True)
    return pipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, required=True, help="a build_tiny output folder")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--guidance", type=float, nargs=2, default=None,
                        help="first-frame / video CFG (default: the build's chosen, cfg.json)")
    parser.add_argument("--num", type=int, default=16, help="held-out prompts")
    parser.add_argument("--train", type=int, default=8, help="training prompts (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from neoc.data.toyworld import ToyWorldDataset
    from neoc.eval.pipeline_quality import evaluate_pipeline
    from neoc.eval.quality import score_videos
    from neoc.zoo import build_tiny as bt
    from neoc.zoo.builtin import TINY_SIZE

    try:
        pipe = checkpoint_pipeline(args.build, args.step, args.guidance)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    held_out = evaluate_pipeline(pipe, num=args.num, seed=0, quiet=True)
    print(f"held-out {args.num}: {json.dumps(rounded(held_out))}", flush=True)
    if args.train:
        dataset = ToyWorldDataset("train", size=800, seed=bt.SEED + 10, frame_size=TINY_SIZE)  # the build's encode set
        videos, scenes = [], []
        with torch.no_grad():
            for index in range(args.train):
                _, text, scene = dataset[index]
                videos.append(pipe.generate(text, seed=index).clamp(-1, 1))
                scenes.append(scene)
        print(f"training prompts {args.train}: {json.dumps(rounded(score_videos(torch.cat(videos), scenes)))}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
