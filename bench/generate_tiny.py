"""Time a native-schedule 49-frame ``builtin:pyramid-tiny`` generation and write frame strips of samples.

    python bench/generate_tiny.py [--out docs/samples] [--from-build out/build-tiny] [--threads 1] [--score]

Native schedule: [20, 20, 20] steps for the first latent frame, [10, 10, 10] after, CFG as shipped
(480 denoiser evaluations incl. CFG, then the causal-VAE decode). Writes ``tiny-<i>.png`` (frames 0, 8, ..., 48
left to right) and ``README.md`` listing each strip's prompt and the timings. ``--from-build`` uses a
``neoc.zoo.build_tiny`` output folder instead of the shipped weights. ``--score`` also scores the samples with
the toy-world quality instrument (neoc.eval.quality), when its probe weights exist.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

PROMPTS = (
    "a red circle moves to the right over a plain black background",
    "a large blue square rises over a white gradient",
    "a yellow star rotates on a textured teal background",
)
STRIP_FRAMES = (0, 8, 16, 24, 32, 40, 48)


def frame_strip(video: torch.Tensor, frames=STRIP_FRAMES) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> uint8 [H, len(frames) * W, 3]."""
    picked = video[:, list(frames)].clamp(-1, 1)  # [3, n, H, W]
    strip = picked.permute(2, 1, 3, 0).reshape(video.shape[2], -1, 3)  # [H, n*W, 3]
    return ((strip + 1) * 127.5).round().to(torch.uint8).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/samples"))
    parser.add_argument("--from-build", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core CPU more threads oversubscribe)")
    parser.add_argument("--score", action="store_true")
    parser.add_argument("--zoom", type=int, default=3, help="nearest-neighbour enlargement of the strips (64x64 frames)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from PIL import Image

    from neoc.zoo.build_tiny import candidate_pipeline, chosen_guidance, generate

    start = time.time()
    if args.from_build is not None:
        pipe = candidate_pipeline(args.from_build, chosen_guidance(args.from_build))
    else:
        from neoc.zoo.builtin import build

        pipe = build("builtin:pyramid-tiny")
    load_seconds = time.time() - start
    pipe.graph_module  # emit the sampler graph outside the timed region
    args.out.mkdir(parents=True, exist_ok=True)
    videos, timings = [], []
    for index, prompt in enumerate(PROMPTS):
        start = time.time()
        video = generate(pipe, prompt, seed=index)
        timings.append(time.time() - start)
        videos.append(video)
        strip = Image.fromarray(frame_strip(video))
        strip = strip.resize((strip.width * args.zoom, strip.height * args.zoom), Image.NEAREST)
        strip.save(args.out / f"tiny-{index}.png")
        print(f"[{index}] {timings[-1]:.1f} s  {prompt}", flush=True)
    scores = None
    if args.score:
        try:
            from neoc.eval.quality import score_videos

            scores = score_videos(torch.stack(videos), list(PROMPTS))
            print(json.dumps(scores, indent=1))
        except Exception as err:
            print(f"quality instrument unavailable: {err}", file=sys.stderr)
    lines = ["# builtin:pyramid-tiny samples", "",
             f"Native schedule (first frame [20,20,20], later frames [10,10,10]), CFG "
             f"{pipe.schedule.guidance_scale:g} / {pipe.schedule.video_guidance_scale:g}, NFE {pipe.nfe()}; "
             f"frames {', '.join(map(str, STRIP_FRAMES))} left to right (shown {args.zoom}x, nearest); "
             f"seed = sample index.", "",
             f"Written by `python bench/generate_tiny.py`: {torch.get_num_threads()} torch threads, "
             f"{min(timings):.1f}-{max(timings):.1f} s per 49-frame video (pipeline load {load_seconds:.1f} s).", ""]
    for index, prompt in enumerate(PROMPTS):
        lines += [f"`tiny-{index}.png`: \"{prompt}\"", "", f"![{prompt}](tiny-{index}.png)", ""]
    if scores is not None:
        lines += ["Quality instrument on these 3 samples: " + json.dumps(
            {k: round(v, 3) for k, v in scores.items() if k != "dimensions"}), ""]
    (args.out / "README.md").write_text("\n".join(lines))
    print(json.dumps({"seconds_per_video": timings, "load_seconds": load_seconds, "nfe": pipe.nfe()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
