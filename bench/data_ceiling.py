"""What the toy-world instrument gives the data itself: the eval prompts' ground-truth clips, as rendered and after a
round trip through the model's VAE, scored like generated videos (the ceiling a student trained on those latents
could reach).

    python bench/data_ceiling.py --videos 32            # builtin:pyramid-tiny, the first 32 held-out prompts

The clips are rendered at 128x128 and resampled to the model's video layout exactly as the scorer resamples its
references, so "rendered" scores 1.0 on every quality dimension by construction and its semantic is the probe's
accuracy on clean clips. Quoted in ``docs/distill-table.md``.
"""

from __future__ import annotations

import argparse
import json

import torch


def reference_clips(pipe, items) -> torch.Tensor:
    """The prompts' ground-truth clips rendered at 128x128, resampled to the pipeline's video layout [N, 3, F, H, W]."""
    from neoc.data.toyworld import NUM_FRAMES, render_float
    from neoc.eval.quality import _match_layout

    spec = pipe.spec  # the decoder's video layout
    return _match_layout(torch.stack([render_float(scene, NUM_FRAMES, 128) for _, scene in items]),
                         spec.frames, spec.height, spec.width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:pyramid-tiny")
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from neoc import sources
    from neoc.eval.pipeline_quality import eval_prompts
    from neoc.eval.quality import score_videos

    pipe = sources.load_source(args.model)
    items = eval_prompts(args.videos, args.seed)
    clips = reference_clips(pipe, items)
    encoder, decoder = pipe.components["vae_encoder"].eval(), pipe.components["vae_decoder"].eval()
    with torch.no_grad():
        round_trip = torch.cat([decoder(encoder(clip[None])).clamp(-1, 1) for clip in clips])
    scenes = [scene for _, scene in items]
    for name, videos in (("rendered", clips), ("vae round trip", round_trip)):
        result = score_videos(videos, scenes)
        print(json.dumps({"videos": name, **{k: round(result[k], 4) for k in ("total", "quality", "semantic")},
                          "dimensions": {k: round(v, 3) for k, v in result["dimensions"].items()}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
