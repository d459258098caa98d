"""A/B: does logit-normal timestep sampling teach the tiny denoiser its prompts' objects faster than uniform?

    python bench/timestep_sampling_ab.py --out out/tsab --scenes 32 --steps 600 \
        --sampling uniform logit_normal [--seed 0] [--batch 16] [--lr 5e-4] [--held-out 8]

For each sampling, the shipped ``builtin:pyramid-tiny`` denoiser-side roles (denoiser, context embedder, text
encoders) are fine-tuned with pyramidal flow matching on the same ``--scenes`` toy-world training clips (encoded
by the shipped VAE; captions re-worded per draw, first frames 35 % of the steps, as the build trains), same data
order and seed; only how each stage's training point is drawn differs
(:func:`neoc.train.flow_matching.sample_grid_index`). Then the pipeline (EMA weights, shipped guidance) generates
the ``--scenes`` scenes' captions (seed = index) and ``--held-out`` held-out prompts (as ``neoc eval --num``), and
the quality instrument scores both. ``--steps 0`` scores the shipped weights on the same scenes (the baseline).

This measures learning speed on a small scene set (the object needs ~300 exposures per scene to appear,
``docs/tiny-denoiser-notes.md``), not a full training run. Writes ``OUT/<sampling>-s<seed>.json`` and prints a
table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

def rounded(result: dict) -> dict:
    keep = {k: result[k] for k in ("total", "quality", "semantic", "dimensions")}
    return {k: round(v, 4) if isinstance(v, float) else {d: round(x, 4) for d, x in v.items()} for k, v in keep.items()}


def fine_tune(pipe, latents, args, sampling: str, run_dir: Path) -> dict:
    from neoc.prune.data import FlowData
    from neoc.train.flow_matching import PyramidFlowObjective
    from neoc.train.loop import Trainer, TrainConfig, warmup_constant
    from neoc.zoo.build_tiny import DENOISER_ROLES

    objective = PyramidFlowObjective(*(pipe.components[r] for r in DENOISER_ROLES))
    data = FlowData(latents, pipe.prompt_encoder, args.batch, num_stages=3, gamma=1.0 / 3.0,
                    first_frame_prob=0.35, timestep_sampling=sampling, logit_mean=args.logit_mean,
                    logit_std=args.logit_std)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=args.lr, weight_decay=0.01)
    config = TrainConfig(steps=args.steps, out_dir=run_dir, seed=args.seed, checkpoint_every=0, keep_checkpoints=1,
                         log_every=25, grad_clip=1.0, ema_decay=args.ema, name=f"tsab-{sampling}", resume=False)
    trainer = Trainer(objective, optimizer, warmup_constant(20), config)
    result = trainer.fit(data)
    ema = trainer.ema_state_dict()
    state = objective.state_dict()
    objective.load_state_dict({k: v.to(state[k].dtype) for k, v in ema.items()}, strict=True)
    objective.eval()
    return {"train_seconds": round(result.wall_seconds, 1), "final_loss": round(result.final_loss, 5),
            "losses": [(s, round(v, 5)) for s, v in result.losses]}


@torch.no_grad()
def score_scenes(pipe, latents, count: int) -> dict:
    import numpy as np

    from neoc.data.toyworld import caption
    from neoc.eval.quality import score_videos

    videos = []
    for index in range(count):
        text = caption(latents.scenes[index], np.random.default_rng(10_000 + index))  # a fresh wording
        videos.append(pipe.generate(text, seed=index).clamp(-1, 1))
    return score_videos(torch.cat(videos), latents.scenes[:count])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=32, help="toy-world training clips to fine-tune on")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--sampling", nargs="+", default=["uniform", "logit_normal"])
    parser.add_argument("--logit-mean", type=float, default=0.0)
    parser.add_argument("--logit-std", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", type=int, default=8, help="held-out eval prompts (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from neoc.eval.pipeline_quality import evaluate_pipeline
    from neoc.prune.data import encode_toy_latents
    from neoc.zoo.builtin import build

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for sampling in args.sampling:
        torch.manual_seed(args.seed)
        pipe = build("builtin:pyramid-tiny")
        latents = encode_toy_latents(pipe, args.scenes, seed=1234, cache_dir=args.out / "cache")
        start = time.time()
        train = fine_tune(pipe, latents, args, sampling, args.out / f"{sampling}-s{args.seed}") if args.steps else {}
        scenes = rounded(score_scenes(pipe, latents, args.scenes))
        held = rounded(evaluate_pipeline(pipe, num=args.held_out, seed=0, quiet=True)) if args.held_out else None
        row = {"sampling": sampling, "seed": args.seed, "steps": args.steps, "batch": args.batch, "lr": args.lr,
               "scenes": args.scenes, "logit_mean": args.logit_mean, "logit_std": args.logit_std,
               "train": train, "train_scenes": scenes, "held_out": held, "seconds": round(time.time() - start, 1)}
        name = f"{sampling}-s{args.seed}" + ("" if args.steps else "-base")
        (args.out / f"{name}.json").write_text(json.dumps(row, indent=1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| sampling | seed | steps | train scenes: total / semantic (object / colour / motion) | held-out: total / "
          "semantic |")
    for row in rows:
        s, h = row["train_scenes"], row["held_out"]
        d = s["dimensions"]
        held = f"{h['total']:.3f} / {h['semantic']:.3f}" if h else "-"
        print(f"| {row['sampling']} | {row['seed']} | {row['steps']} | {s['total']:.3f} / {s['semantic']:.3f} "
              f"({d['object_class']:.2f} / {d['color']:.2f} / {d['motion']:.2f}) | {held} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
