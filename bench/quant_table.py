"""SQNR per component of the W8A16 pipeline next to Neodragon's Table 9 (and toy quality before/after).

Builds ``builtin:pyramid-tiny`` (trained weights when shipped, else random init), applies the deployment passes
(static-shape, precompute-inputs, rope-rank-reduction, mask-value, t5-fp16-rescale) unless ``--no-deploy``, then
``quantize-w8a16``, and prints a markdown table: graph, scheme, calibration size, SQNR, and Table 9's module,
scheme, calibration size and deploy SNR. With trained weights the pass also reports toy-world quality of the
float and the simulated quantised pipeline.

    nice -n 19 python bench/quant_table.py --frames 17 --calib-denoiser 8 --calib-vae 4 --out quant.json

Slow on a shared 2-core CPU (each AIMET sim build traces the graph; the causal VAE decoder dominates): use
``--decoder toy`` for a quick look at the denoiser graphs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEPLOYMENT = ["static-shape", "precompute-inputs", "rope-rank-reduction", "mask-value", "t5-fp16-rescale"]


def build(args):
    import attrs
    import torch

    from neoc.ir.schedule import Schedule
    from neoc.zoo import builtin

    random_init = args.random_init or not builtin.TINY_WEIGHTS.is_file()
    torch.manual_seed(args.seed)
    pipe = builtin.build("builtin:pyramid-tiny", random_init=random_init)
    pipe.spec = attrs.evolve(pipe.spec, frames=args.frames)
    if args.schedule == "1-1-1":
        sched = pipe.schedule
        pipe.with_schedule(Schedule(first_frame_steps=(1, 1, 1), video_steps=(1, 1, 1),
                                    guidance_scale=sched.guidance_scale,
                                    video_guidance_scale=sched.video_guidance_scale, label="1-1-1"))
    if args.decoder == "toy":
        from neoc.testing import ToyDecoder

        pipe.replace_component("vae_decoder", ToyDecoder(pipe.spec.latent_channels))
    for module in pipe.components.values():
        module.eval()
    return pipe, random_init


def markdown(metrics: dict) -> str:
    lines = ["| graph | scheme | calib. | SQNR (dB) | Table 9 module | Table 9 scheme | Table 9 calib. | "
             "Table 9 SNR (dB) |", "|---|---|---|---|---|---|---|---|"]

    def fmt(value, digits=1):
        return "NA" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))

    for row in metrics["table"]:
        lines.append(f"| {row['graph']} | {row['scheme']} | {row['calibration_size'] or 'NA'} | "
                     f"{fmt(row['sqnr_db'])} | {row['paper_module']} | {row['paper_scheme']} | "
                     f"{fmt(row['paper_calibration_size'])} | {fmt(row['paper_sqnr_db'])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random-init", action="store_true", help="ignore shipped weights")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--schedule", choices=["1-1-1", "native"], default="1-1-1")
    parser.add_argument("--decoder", choices=["vae", "toy"], default="vae")
    parser.add_argument("--no-deploy", action="store_true", help="quantise without the deployment passes")
    parser.add_argument("--calib-denoiser", type=int, default=8)
    parser.add_argument("--calib-vae", type=int, default=4)
    parser.add_argument("--sqnr-prompts", type=int, default=2)
    parser.add_argument("--quality-videos", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("out/bench-quant"))
    parser.add_argument("--out", type=Path, default=None, help="write the metrics as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    import neoc.passes  # noqa: F401
    from neoc.deploy.testing import apply_pass

    pipe, random_init = build(args)
    deploy = {}
    if not args.no_deploy:
        for name in DEPLOYMENT:
            deploy[name] = apply_pass(pipe, name, args.work / name).metrics.get("max_abs_diff")
    start = time.perf_counter()
    result = apply_pass(pipe, "quantize-w8a16", args.work / "quantize-w8a16", calib_denoiser=args.calib_denoiser,
                        calib_vae_decoder=args.calib_vae, sqnr_prompts=args.sqnr_prompts,
                        quality_videos=args.quality_videos)
    metrics = dict(result.metrics)
    metrics.update(weights="random init" if random_init else "trained", frames=args.frames, schedule=args.schedule,
                   decoder=args.decoder, deployment_max_abs_diff=deploy,
                   seconds=round(time.perf_counter() - start, 1))
    print(markdown(metrics))
    for key in ("quality_float", "quality_quantized"):
        if key in metrics:
            print(f"{key}: total {metrics[key]['total']:.4f}")
    if "quality_note" in metrics:
        print("quality:", metrics["quality_note"])
    print(f"weights: {metrics['weights']}, {args.frames} frames, schedule {args.schedule}, "
          f"reload max abs diff {metrics['reload_max_abs_diff']:.3g}, {metrics['seconds']} s")
    if args.out:
        args.out.write_text(json.dumps(metrics, indent=2, default=str))


if __name__ == "__main__":
    main()
