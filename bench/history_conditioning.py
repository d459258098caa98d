"""How the tiny denoiser uses its history: per-frame probe readouts and conditioning swaps on the held-out prompts.

    python bench/history_conditioning.py --videos 16 --variants generated ground-truth noise:0.1
    python bench/history_conditioning.py --build out/cfg5 --step 3000 --guidance 3 2 --variants generated

Each variant samples every held-out prompt (seed ``i`` for prompt ``i``, as ``neoc eval``) with the Python mirror of
the graph sampler (``neoc.distill.sampling.sample_latents``) and changes only what each latent frame is conditioned
on; the videos are the *generated* latents decoded:

* ``generated``: the model's own history (what ``neoc eval`` scores; the same numbers);
* ``ground-truth``: teacher forcing: unit k is conditioned on the encoded ground-truth clip's frames 0..k-1, so the
  video shows how well one prediction step keeps what the history holds;
* ``noise:S``: the own history mixed with Gaussian noise, ``S n + (1 - S) x`` at full resolution before the pyramid
  is built (training corrupts history with ``S ~ U[0, 1/3]``; inference passes it clean).

Per variant: the instrument's scores, and the probe's per-frame probability of the prompt's shape and colour (its
two per-frame heads) at the 17 frames it reads, averaged over prompts, next to the same curves for the rendered clips
and their VAE round trip. Quoted in ``docs/tiny-denoiser-notes.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def frame_curves(probe, videos: torch.Tensor, scenes) -> dict[str, list[float]]:
    """{head: [17]}: mean over videos of the probe's per-frame probability of the prompt's shape / colour."""
    from neoc.data.toyworld import ATTRIBUTE_CLASSES
    from neoc.eval.probe import FRAME_HEADS, PROBE_FRAMES, PROBE_SIZE, resample_for_probe
    from neoc.eval.quality import _as_target

    with torch.no_grad():
        clip = resample_for_probe(videos)
        frames = clip.transpose(1, 2).reshape(-1, 3, PROBE_SIZE, PROBE_SIZE)
        logits = probe.frame_logits(frames)
    targets = [_as_target(scene, i)[1] for i, scene in enumerate(scenes)]  # {attribute: class name} per video
    curves = {}
    for head in FRAME_HEADS:
        probs = logits[head].softmax(-1).reshape(videos.shape[0], PROBE_FRAMES, -1)
        classes = list(ATTRIBUTE_CLASSES[head])
        rows = [probs[i, :, classes.index(attrs[head])] for i, attrs in enumerate(targets) if head in attrs]
        curves[head] = [round(float(x), 2) for x in torch.stack(rows).mean(0)]
    return curves


def history_hook(variant: str, truth: torch.Tensor, seed: int):
    """The ``history`` callable of ``sample_latents`` for a variant (None: the model's own history)."""
    if variant == "generated":
        return None
    if variant == "ground-truth":
        return lambda unit, generated: truth[:, :, :unit]
    if variant.startswith("noise:"):
        sigma = float(variant.split(":", 1)[1])
        if not 0.0 < sigma <= 1.0:
            raise SystemExit(f"--variants {variant}: the noise level must be in (0, 1]")
        gen = torch.Generator().manual_seed(1000 + seed)
        return lambda unit, generated: sigma * torch.randn(generated.shape, generator=gen) + (1 - sigma) * generated
    raise SystemExit(f"--variants {variant}: expected generated, ground-truth or noise:S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:pyramid-tiny")
    parser.add_argument("--build", type=Path, default=None,
                        help="score a build_tiny folder's denoiser checkpoint instead of --model")
    parser.add_argument("--step", type=int, default=None, help="with --build: the checkpoint (default: the latest)")
    parser.add_argument("--guidance", type=float, nargs=2, default=None,
                        help="with --build: first-frame / video CFG (default: the build's chosen)")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--variants", nargs="+", default=["generated", "ground-truth", "noise:0.1"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for variant in args.variants:
        history_hook(variant, torch.zeros(1), 0)  # bad names fail before any sampling

    from data_ceiling import reference_clips
    from tiny_checkpoint_eval import checkpoint_pipeline

    from neoc import sources
    from neoc.distill.pyramid import encode_prompts
    from neoc.distill.sampling import decode, sample_latents
    from neoc.eval.pipeline_quality import eval_prompts
    from neoc.eval.probe import load_probe
    from neoc.eval.quality import score_videos

    if args.build is not None:
        try:
            pipe = checkpoint_pipeline(args.build, args.step, args.guidance)
        except FileNotFoundError as exc:
            parser.error(str(exc))
    else:
        pipe = sources.load_source(args.model)
    probe = load_probe().eval()
    items = eval_prompts(args.videos)
    scenes = [scene for _, scene in items]
    clips = reference_clips(pipe, items)
    encoder, decoder = pipe.components["vae_encoder"].eval(), pipe.components["vae_decoder"].eval()
    with torch.no_grad():
        truths = [encoder(clip[None]) for clip in clips]
        round_trip = torch.cat([decoder(z).clamp(-1, 1) for z in truths])
    for name, videos in (("rendered", clips), ("vae round trip", round_trip)):
        print(json.dumps({"videos": name, "per_frame": frame_curves(probe, videos, scenes)}), flush=True)
    for variant in args.variants:
        start, videos = time.time(), []
        for i, (prompt, _) in enumerate(items):
            cond, uncond = encode_prompts(pipe, [prompt])
            latents = sample_latents(pipe, cond, uncond, pipe.draw_noise(i),
                                     history=history_hook(variant, truths[i], i))
            videos.append(decode(pipe, latents).clamp(-1, 1))
        videos = torch.cat(videos)
        result = score_videos(videos, scenes)
        print(json.dumps({"videos": variant, **{k: round(result[k], 3) for k in ("total", "quality", "semantic")},
                          "dimensions": {k: round(v, 2) for k, v in result["dimensions"].items()},
                          "per_frame": frame_curves(probe, videos, scenes), "seconds": round(time.time() - start)}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
