"""A Table-3-like comparison of asymmetric decoders (Neodragon §3.2): native vs TAEHV vs Wan, same frozen encoder.

    python bench/decoder_table.py [--model builtin:pyramid-tiny | --from-build out/build-tiny]
                                  [--families taehv wan] [--set KEY=VALUE ...] [--videos DIR]
                                  [--out out/decoder-table] [--threads 1]

For every family it runs the ``swap-decoder`` pass on a fresh copy of the pipeline (same seed, same data, same
settings given with ``--set``, e.g. ``--set steps=400 --set patch_frames=17 --set patch_size=64``) and collects:
decoder parameters (this pipeline, and the real Pyramid-Flow SD3 scale built on the meta device), PSNR and LPIPS
of reconstructions of held-out clips through the frozen encoder (the eval clips, and toy-world eval videos), and
the decode latency of one 49-frame clip on this CPU, native and new timed in the same process. The native row
takes the best native latency over the runs. Writes ``table.md``, ``table.json`` and each family's sample PNG
(original / native / new frames) into ``--out``.

Not reproduced from the paper's Table 3: the "Orig. Enc." PSNR (each decoder with its own pretrained encoder —
no pretrained TAEHV / Wan weights exist offline) and VBench (see ``neoc eval``); Cosmos and LTX rows.
``--from-build`` takes a ``neoc.zoo.build_tiny`` output folder (trained VAE + measured latent normalisation),
for measuring before the shipped weights exist. ``--from-report RUN/report.json`` takes the rows of families a
``neoc run`` already measured with ``swap-decoder`` (same metrics, same process for native vs new) instead of
training them again; the other families are run here with that run's pass settings unless ``--set`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

PAPER_TABLE3 = {  # #params decoder, H100 latency (s), DAVIS PSNR with the pipeline's encoder (dB) — for reference
    "native": ("226M", 2.496, 29.12), "wan": ("74M", 1.666, 29.18), "taehv": ("10M", 0.851, 28.40)}


def load_pipeline(args):
    from neoc import sources

    if args.from_build is None:
        return sources.load_source(args.model, random_init=args.random_init)
    from neoc.models.latent_norm import LatentNorm
    from neoc.zoo.build_tiny import load_trained_vae

    pipe = load_trained_vae(args.from_build)
    try:  # the build's decoder-refinement stage (frozen encoder), when it exists, is the shipped native decoder
        from neoc.zoo.build_tiny import load_trained_decoder

        load_trained_decoder(args.from_build, pipe)
    except ImportError:
        pass
    measure = args.from_build / "measure.json"
    if measure.is_file():
        norm = LatentNorm(*json.loads(measure.read_text())["latent_norm"])
        pipe.component("vae_encoder").norm = norm
        pipe.component("vae_decoder").norm = norm
    # the shipped weights are the build's weights rounded to fp16 (builtin.save_role_weights) and read back as
    # fp32: round the same way, so the frozen encoder is bit-identical to the one `builtin:pyramid-tiny` ships
    # (swap-decoder keys its training checkpoints by the encoder's hash: a later run on the shipped weights with
    # the same settings and work folder resumes these)
    with torch.no_grad():
        for role in ("vae_encoder", "vae_decoder"):
            for tensor in pipe.component(role).state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())
    pipe.source = f"{args.from_build} (trained VAE, fp16-rounded as shipped; other components random)"
    return pipe


def real_scale_params() -> dict[str, int]:
    """Decoder parameters at the released Pyramid-Flow SD3 scale (meta device: shapes only)."""
    from types import SimpleNamespace

    from neoc.ir.pipeline import count_params
    from neoc.passes.swap_decoder import SwapDecoderConfig, build_decoder
    from neoc.zoo import model_configs as mc
    from neoc.zoo.components import build_vae_decoder

    real = SimpleNamespace(spec=SimpleNamespace(height=384, width=640, latent_channels=16))
    out = {"native": count_params(build_vae_decoder({"vae": mc.SD3_VAE_CONFIG, "norm": [0, 1, 0, 1]}, "meta"))}
    for family in ("taehv", "wan"):
        out[family] = count_params(build_decoder(real, SwapDecoderConfig(family=family), device="meta"))
    return out


def run_family(args, family: str, params: dict) -> dict:
    from neoc.config import build_config
    from neoc.pass_api import EvalData, PassContext
    from neoc.passes.swap_decoder import SwapDecoder, SwapDecoderConfig

    config = build_config(SwapDecoderConfig, {**params, "family": family}, "--set")
    pipeline = load_pipeline(args)
    ctx = PassContext(seed=args.seed, work_dir=args.out / family, eval=EvalData(videos=args.videos), quiet=True)
    start = time.time()
    result, _ = SwapDecoder(config).apply(pipeline, ctx)
    metrics = dict(result.metrics)
    metrics["pass_seconds"] = round(time.time() - start, 1)
    pngs = []
    for name, path in sorted(result.artifacts.items()):
        if str(path).endswith(".png"):
            target = args.out / f"{name}-{family}.png"
            shutil.copyfile(path, target)
            pngs.append(target.name)
    metrics["samples_png"] = ", ".join(pngs) or "—"
    return metrics


def rows_from_report(path: Path) -> tuple[dict[str, dict], dict]:
    """{family: metrics} and the pass params of the ``swap-decoder`` entries of a ``neoc run`` report.json."""
    report = json.loads(path.read_text())
    rows, params = {}, {}
    for entry in report.get("passes", []):
        if entry.get("name") != "swap-decoder" or entry.get("status") != "done":
            continue
        metrics = dict(entry["metrics"])
        pngs = [str((path.parent / p).resolve()) for p in (entry.get("artifacts") or {}).values()
                if str(p).endswith(".png")]
        metrics["samples_png"] = ", ".join(pngs) or "—"
        metrics["pass_seconds"] = entry.get("seconds")
        rows[metrics["family"]] = metrics
        params = {k: v for k, v in (entry.get("config") or {}).items() if k != "family"}
    if not rows:
        raise SystemExit(f"{path}: no finished swap-decoder pass in this report")
    return rows, params


def _m(value: float) -> str:
    return f"{value / 1e6:.2f}M"


def render(rows: dict[str, dict], real: dict[str, int], context: dict) -> str:
    first = next(iter(rows.values()))
    native = {
        "params": first["params_before"], "latency": min(r["decode_latency_native_s"] for r in rows.values()),
        "cpu": min(r.get("decode_cpu_native_s", float("nan")) for r in rows.values()),
        "psnr": first["psnr_native_db"], "lpips": first["lpips_native"],
        "psnr_toy": first.get("psnr_toy_native_db"), "lpips_toy": first.get("lpips_toy_native")}
    clip, evaluated = first["latency_clip"], first["eval_clip"]
    lines = ["# Asymmetric decoder distillation — decoder comparison (Neodragon Table 3 analogue)", "",
             f"- model: `{context['model']}`; eval: {first['eval_source']} {first['eval_clips']}, "
             f"{first['eval_windows']} window(s) of {evaluated['frames']}x{evaluated['height']}x{evaluated['width']} "
             f"through the frozen encoder (never trained on); toy-world eval videos as a second set",
             f"- latency: one {clip['frames']}-frame {clip['height']}x{clip['width']} decode ({clip['latent_frames']} "
             f"latent frames) on this CPU ({clip['threads']} torch thread(s)), best of {clip['repeats']} after a "
             f"warm-up; native and new timed in the same process on the same latents",
             f"- settings: `{json.dumps(context['set'])}`", ""]
    header = ["decoder", "#params (this pipeline)", "#params (SD3 scale)", f"decode {clip['frames']}f wall (s)",
              "decode CPU time (s)",
              "PSNR eval (dB)",
              "LPIPS eval", "PSNR toy (dB)", "LPIPS toy", "paper: #params / H100 s / DAVIS PSNR"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def fmt(value, spec=".2f"):
        return "—" if value is None else format(value, spec)

    def row(name, key, params, latency, cpu, psnr, lpips_value, psnr_toy, lpips_toy):
        paper = PAPER_TABLE3.get(key)
        paper_text = f"{paper[0]} / {paper[1]} / {paper[2]}" if paper else "—"
        lines.append(f"| {name} | {_m(params)} | {_m(real[key])} | {fmt(latency, '.3f')} | {fmt(cpu, '.3f')} | "
                     f"{fmt(psnr)} | "
                     f"{fmt(lpips_value, '.4f')} | {fmt(psnr_toy)} | {fmt(lpips_toy, '.4f')} | {paper_text} |")

    row("Pyramid-Flow native (causal 3D VAE decoder)", "native", native["params"], native["latency"], native["cpu"],
        native["psnr"], native["lpips"], native["psnr_toy"], native["lpips_toy"])
    names = {"taehv": "TAEHV modified (first TGrow 2x)", "wan": "Wan modified (3rd up-stage spatio-temporal)"}
    for family, r in rows.items():
        row(names[family], family, r["params_after"], r["decode_latency_new_s"], r.get("decode_cpu_new_s"),
            r["psnr_new_db"], r["lpips_new"], r.get("psnr_toy_new_db"), r.get("lpips_toy_new"))
    lines += ["", "Per family: params ratio native/new, PSNR gap native - new, training:"]
    for family, r in rows.items():
        by_frame = r.get("psnr_by_frame_db", {}).get("new", {})
        lines.append(f"- {family}: {r['params_ratio']:.1f}x fewer params, PSNR gap {r['psnr_gap_db']:+.2f} dB "
                     f"(first frame {fmt(by_frame.get('first_frame'))} dB, later frames "
                     f"{fmt(by_frame.get('later_frames'))} dB), "
                     f"speed-up {r['decode_speedup']:.1f}x, {r['train']['steps']} steps in {r['train']['seconds']:.0f} s "
                     f"{'(this process; resumed at step ' + str(r['train']['resumed_from']) + ') ' if r['train'].get('resumed_from') else ''}"
                     f"(final loss {r['train']['final_loss']:.4f}); samples: {r.get('samples_png', '—')}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:pyramid-tiny")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--from-build", type=Path, default=None, help="a neoc.zoo.build_tiny output folder")
    parser.add_argument("--families", nargs="+", default=["taehv", "wan"], choices=["taehv", "wan"])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--videos", type=Path, default=None, help="eval clips (default: the shared eval split)")
    parser.add_argument("--from-report", type=Path, default=None,
                        help="report.json of a `neoc run` with swap-decoder: reuse its family's row")
    parser.add_argument("--rows-from", type=Path, action="append", default=[],
                        help="a table.json this bench wrote before: reuse its rows (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("out/decoder-table"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = {}
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        params[key] = yaml.safe_load(value)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, reused = {}, {}
    for path in args.rows_from:
        table = json.loads(path.read_text())
        reused.update(table.get("rows", table))
    if args.from_report is not None:
        from_run, report_params = rows_from_report(args.from_report)
        reused.update(from_run)
        params = {**report_params, **params}
    for family in args.families:
        if family in reused:
            print(f"[decoder_table] {family}: reused ({args.from_report or ''} {args.rows_from})", file=sys.stderr,
                  flush=True)
            rows[family] = reused[family]
            continue
        print(f"[decoder_table] {family} ...", file=sys.stderr, flush=True)
        rows[family] = run_family(args, family, params)
        (args.out / "table.json").write_text(json.dumps(rows, indent=1, default=str))
    real = real_scale_params()
    context = {"model": str(args.from_build or args.model), "set": params}
    text = render(rows, real, context)
    (args.out / "table.md").write_text(text)
    (args.out / "table.json").write_text(json.dumps({"rows": rows, "real_scale_params": real, **context}, indent=1,
                                                    default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
