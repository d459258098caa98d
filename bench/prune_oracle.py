"""Oracle for ``prune-blocks``: the toy quality of ``builtin:pyramid-tiny`` with every set of ``--size`` removable
blocks dropped at once, no finetune (what the best possible block choice could start from).

    python bench/prune_oracle.py [--videos 4] [--size 2] [--threads 2] [--out out/prune-oracle.jsonl]

One JSON line per block set (the first: none removed, the teacher), on the first ``--videos`` held-out toy prompts
with seeds 0.. and the native schedule, scored like ``neoc eval``. ~30 s a set at 4 videos on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch


def main() -> int:
    from neoc.eval.pipeline_quality import eval_prompts, generate_videos
    from neoc.eval.quality import score_videos
    from neoc.prune.surgery import removable_blocks, without_blocks
    from neoc.sources import load_source

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:pyramid-tiny")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--size", type=int, default=2, help="blocks removed together")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="out/prune-oracle.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_source(args.model)
    items = eval_prompts(args.videos, 0, None)
    denoiser = pipe.component("denoiser")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sets = [()] + list(itertools.combinations(removable_blocks(len(denoiser.transformer_blocks)), args.size))
    with out.open("w") as sink:
        for removed in sets:
            start = time.time()
            with torch.no_grad(), without_blocks(denoiser, list(removed)):
                videos = generate_videos(pipe, [p for p, _ in items], seed=0, quiet=True)
            scores = score_videos(videos, [t for _, t in items])
            line = json.dumps({"removed": list(removed), "total": scores["total"], "quality": scores["quality"],
                               "semantic": scores["semantic"], "dimensions": scores["dimensions"],
                               "seconds": time.time() - start})
            print(line, flush=True)
            sink.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
