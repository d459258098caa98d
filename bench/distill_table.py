"""A Neodragon Table-6-like table for ``builtin:pyramid-tiny``: step-distillation method x schedule x NFE x CPU
latency x toy-world quality, plus the end-to-end rows of §4 (first-frame generator, QuickSRNet 2x).

    nice -n 10 python bench/distill_table.py --out out/distill-bench --rows all --steps 300 --videos 8

Rows (each cached as ``OUT/rows/<name>.json``; trained students as ``OUT/students/<name>.safetensors``, and
training checkpoints under ``OUT/train/<name>`` so an interrupted run resumes):

=====================  ======================================================================================
``native``             the teacher at its native schedule (first frame 20-20-20, later 10-10-10, CFG)
``teacher-4-4-4``      the undistilled teacher at 4-4-4 / 1-1-1 (CFG kept)
``teacher-1-1-1``
``dmd-1-1-1``          Pyramidal DMD distilled at 1-1-1, sampled at 1-1-1
``dmd-1-1-1@4-4-4``    the same student sampled at 4-4-4 (Table 6's DMD rows use a 1-1-1 distillation schedule)
``progressive-1-1-1``  Pyramidal progressive distillation at 1-1-1 / 4-4-4
``progressive-4-4-4``
``e2e``                dmd-1-1-1 + the first-frame generator (``--first-frame``), then + QuickSRNet 2x
=====================  ======================================================================================

Quality is the toy-world instrument (:func:`neoc.eval.quality.score_videos`) on the same eval prompts and seeds as
``neoc eval``; CPU latency is the mean wall time per video of that generation on this machine (shared, 1 thread:
compare rows of one run only). ``--mp4 PROMPT`` writes the end-to-end video of one prompt.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ALL_ROWS = ["native", "teacher-4-4-4", "teacher-1-1-1", "dmd-1-1-1", "dmd-1-1-1@4-4-4", "progressive-1-1-1",
            "progressive-4-4-4", "e2e"]


def load_teacher(model: str, from_build: str | None = None):
    from neoc import sources

    pipe = from_build_folder(Path(from_build)) if from_build else sources.load_source(model)
    for m in pipe.components.values():
        m.eval()
    return pipe


def from_build_folder(folder: Path):
    """A ``builtin:pyramid-tiny`` teacher from a ``neoc.zoo.build_tiny`` output folder before the weights ship:
    the build's VAE, refined decoder and latent normalisation, the EMA weights of the latest denoiser checkpoint
    (denoiser + text side), and the CFG the build's sweep chose (7 / 5 before that stage has run)."""
    import shutil
    import tempfile

    from neoc.train import checkpoint as ckpt
    from neoc.zoo.build_tiny import candidate_pipeline, chosen_guidance

    latest = ckpt.latest_checkpoint(folder / "denoiser")
    with tempfile.TemporaryDirectory() as tmp:  # the build may rotate its checkpoints while we read
        local = Path(shutil.copytree(latest, Path(tmp) / latest.name))
        state = ckpt.load_checkpoint(local)
    guidance = chosen_guidance(folder)
    pipe = candidate_pipeline(folder, guidance, {**state["model"], **(state["ema"] or {})},
                              source=f"builtin:pyramid-tiny (build {folder})")
    pipe.info["weights"] = {"file": f"{latest} (EMA)", "training": {"denoiser_step": state["step"]}}
    print(f"[distill-bench] teacher from {latest} (step {state['step']}, EMA), CFG {guidance[0]:g} / {guidance[1]:g}",
          flush=True)
    return pipe


def quality_of(pipe, videos_fn, num: int, seed: int) -> dict:
    """Score ``videos_fn(prompt, seed) -> video`` on the eval prompts (timed)."""
    from neoc.eval.pipeline_quality import eval_prompts
    from neoc.eval.quality import score_videos

    items = eval_prompts(num, seed)
    start = time.perf_counter()
    videos = [videos_fn(prompt, seed + i).clamp(-1, 1) for i, (prompt, _) in enumerate(items)]
    seconds = (time.perf_counter() - start) / len(items)
    result = score_videos(torch.cat([v.float() for v in videos]), [t for _, t in items])
    result["seconds_per_video"] = seconds
    result["num_videos"] = len(items)
    return result


def graph_row(pipe, schedule, num, seed) -> dict:
    pipe.with_schedule(schedule)
    q = quality_of(pipe, lambda p, s: pipe.generate(p, s), num, seed)
    return {"nfe": pipe.nfe(), "quality": q}


def save_student(module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))


def load_student(pipe, path: Path):
    import copy

    from safetensors.torch import load_file

    student = copy.deepcopy(pipe.component("denoiser"))
    student.load_state_dict(load_file(str(path)))
    return student.eval()


def train_student(pipe, name: str, method: str, schedule: str, args, out: Path):
    from neoc.distill.train import DistillSettings, distill

    path = out / "students" / f"{name}.safetensors"
    if path.is_file():
        return load_student(pipe, path), json.loads((out / "students" / f"{name}.json").read_text())
    settings = DistillSettings(method=method, schedule=schedule, steps=args.steps, batch_size=args.batch_size,
                               lr=args.lr, fake_lr=args.lr if args.fake_lr is None else args.fake_lr, data=args.data,
                               data_videos=args.data_videos, teacher_loss_weight=args.teacher_loss_weight,
                               ema_decay=args.ema, gan_weight=args.gan_weight, disc_lr=args.disc_lr,
                               gan_stages=tuple(args.gan_stages) if args.gan_stages else None,
                               gan_features=args.gan_features,
                               critic_warmup=args.critic_warmup, rollout=args.rollout,
                               fake_updates_per_student=args.fake_updates,
                               teacher_guidance_scale=args.teacher_cfg[0] if args.teacher_cfg else None,
                               teacher_video_guidance_scale=args.teacher_cfg[1] if args.teacher_cfg else None,
                               teacher_steps=args.teacher_steps, guard_every=args.guard_every,
                               seed=args.seed if args.train_seed is None else args.train_seed,
                               checkpoint_every=25, progress=False)
    result = distill(pipe, settings, out / "train" / name, resume=True, log=print, data=build_data(pipe, args))
    save_student(result.student, path)
    info = {"train_steps": result.train.steps, "train_seconds": result.seconds, "final_loss": result.train.final_loss,
            "data": result.data_source, "guard": result.guard[-1] if result.guard else None,
            "settings": {k: v for k, v in settings.__dict__.items()}}
    (out / "students" / f"{name}.json").write_text(json.dumps(info, indent=1))
    return result.student, info


def build_data(pipe, args):
    """With ``--from-build``: the build's own normalised toy-world latents and captions (no re-encoding)."""
    if not args.from_build:
        return None
    from safetensors.torch import load_file

    from neoc.distill.data import DistillData
    from neoc.distill.pyramid import encode_prompts

    folder = Path(args.from_build)
    latents = load_file(str(folder / "latents.safetensors"))["video_latents"][:args.data_videos].float()
    captions = [v["caption"] for v in json.loads((folder / "latents.json").read_text())["videos"]][:args.data_videos]
    cond, uncond = encode_prompts(pipe, captions)
    return DistillData(latents, cond, uncond, captions, "toyworld (build latents)")


def run_rows(pipe, rows: list[str], args, out: Path) -> dict:
    from neoc.distill.train import student_schedule, teacher_schedule
    from neoc.zoo.builtin import native_schedule

    (out / "rows").mkdir(parents=True, exist_ok=True)
    base = pipe.schedule
    teacher = pipe.component("denoiser")
    results = {}

    def cached(name, fn):
        path = out / "rows" / f"{name}.json"
        if path.is_file() and not args.force:
            results[name] = json.loads(path.read_text())
            return results[name]
        print(f"[distill-bench] {name} ...", flush=True)
        row = fn()
        path.write_text(json.dumps(row, indent=1))
        results[name] = row
        print(f"[distill-bench] {name}: total {row['quality']['total']:.4f} NFE {row['nfe']} "
              f"{row['quality']['seconds_per_video']:.2f} s/video", flush=True)
        return row

    def with_denoiser(module, schedule, extra=None):
        pipe.replace_component("denoiser", module)
        try:
            row = graph_row(pipe, schedule, args.videos, args.seed)
        finally:
            pipe.replace_component("denoiser", teacher)
            pipe.with_schedule(base)
        row.update(extra or {})
        return row

    if "native" in rows:
        cached("native", lambda: {"method": "teacher (CFG)", "schedule": "(20)10x3", **graph_row(
            pipe, native_schedule(base.guidance_scale, base.video_guidance_scale), args.videos, args.seed)})
        pipe.with_schedule(base)
    for name in ("4-4-4", "1-1-1"):
        if f"teacher-{name}" in rows:
            cached(f"teacher-{name}", lambda name=name: {"method": "teacher (CFG)", "schedule": name,
                                                         **with_denoiser(teacher, teacher_schedule(base, name))})
    for method in ("dmd", "progressive"):
        for name in ("1-1-1", "4-4-4"):
            row_name = f"{method}-{name}"
            if row_name not in rows and not (row_name == "dmd-1-1-1" and ("e2e" in rows or "dmd-1-1-1@4-4-4" in rows)):
                continue
            student, info = train_student(pipe, row_name, method, name, args, out)
            if row_name in rows:
                cached(row_name, lambda: {"method": method, "schedule": name, "distillation": name, "train": info,
                                          **with_denoiser(student, student_schedule(base, name))})
            if row_name == "dmd-1-1-1" and "dmd-1-1-1@4-4-4" in rows:  # Table 6: distilled at 1-1-1, run at 4-4-4
                cached("dmd-1-1-1@4-4-4", lambda: {"method": method, "schedule": "4-4-4", "distillation": name,
                                                   **with_denoiser(student, student_schedule(base, "4-4-4"))})
    if "e2e" in rows:
        cached("e2e-first-frame", lambda: e2e_row(pipe, teacher, out, args, upsample=False))
        cached("e2e-first-frame-sr", lambda: e2e_row(pipe, teacher, out, args, upsample=True))
    return results


def attach_e2e(pipe, teacher, out: Path, args):
    """dmd-1-1-1 student + first-frame generator (+ QuickSRNet) on the pipeline; returns the restore function."""
    import copy

    from neoc.distill.train import student_schedule
    from neoc.models.first_frame import TeacherFirstFrame

    base = pipe.schedule
    student = load_student(pipe, out / "students" / "dmd-1-1-1.safetensors")
    first = TeacherFirstFrame(copy.deepcopy(teacher).eval(), base.first_frame_steps, base.guidance_scale,
                              base.gamma)
    pipe.replace_component("denoiser", student)
    pipe.replace_component("first_frame", first)
    pipe.with_schedule(student_schedule(base, "1-1-1"))
    sr_path = Path(args.upsampler)
    if sr_path.is_file():
        from neoc.train.sr import load_upsampler

        pipe.replace_component("upsampler", load_upsampler(sr_path))

    def restore():
        pipe.replace_component("denoiser", teacher)
        pipe.replace_component("first_frame", None)
        pipe.replace_component("upsampler", None)
        pipe.with_schedule(base)

    return restore


def e2e_row(pipe, teacher, out: Path, args, upsample: bool) -> dict:
    from neoc.distill import e2e

    restore = attach_e2e(pipe, teacher, out, args)
    try:
        first_nfe = sum(pipe.component("first_frame").steps) * 2
        timings: dict = {}
        q = quality_of(pipe, lambda p, s: e2e.generate(pipe, p, s, upsample=upsample, timings=timings),
                       args.videos, args.seed)
        has_sr = upsample and pipe.has("upsampler")
        nfe = pipe.nfe() - sum(pipe.schedule.first_frame_steps) * (2 if pipe.schedule.uses_cfg(0) else 1)
        return {"method": "dmd + first frame" + (" + QuickSRNet 2x" if has_sr else ""), "schedule": "1-1-1",
                "distillation": "1-1-1", "nfe": nfe, "first_frame_nfe": first_nfe,
                "timings_per_video": {k: v / args.videos for k, v in timings.items()}, "quality": q}
    finally:
        restore()


def write_mp4(pipe, teacher, out: Path, args) -> list[str]:
    from neoc.data.videos import float_to_uint8, write_mp4 as write
    from neoc.distill import e2e

    restore = attach_e2e(pipe, teacher, out, args)
    paths = []
    try:
        for i, prompt in enumerate(args.mp4):
            video = e2e.generate(pipe, prompt, args.seed + i, upsample=True)[0]  # [3, F, H, W]
            frames = float_to_uint8(video)
            if frames.shape[-1] != 3:  # [3, F, H, W] -> [F, H, W, 3]
                frames = frames.permute(1, 2, 3, 0)
            path = out / f"e2e-{i}.mp4"
            write(frames, path, fps=pipe.spec.fps)
            paths.append(str(path))
            print(f"[distill-bench] {prompt!r} -> {path} ({tuple(frames.shape)})", flush=True)
    finally:
        restore()
    return paths


def markdown(results: dict) -> str:
    order = ["native", "teacher-4-4-4", "teacher-1-1-1", "dmd-1-1-1@4-4-4", "dmd-1-1-1", "progressive-4-4-4",
             "progressive-1-1-1", "e2e-first-frame", "e2e-first-frame-sr"]
    lines = ["| method | inference schedule | distillation schedule | NFE | CPU s/video | Tot. | Qual. | Sem. |",
             "|---|---|---|---|---|---|---|---|"]
    for name in order:
        if name not in results:
            continue
        r = results[name]
        q = r["quality"]
        nfe = str(r["nfe"]) + (f" + {r['first_frame_nfe']} (frame 0)" if "first_frame_nfe" in r else "")
        lines.append(f"| {r['method']} | {r['schedule']} | {r.get('distillation', 'N/A')} | {nfe} | "
                     f"{q['seconds_per_video']:.2f} | {q['total']:.4f} | {q['quality']:.4f} | {q['semantic']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from neoc.distill.train import DATA_SOURCES, DistillSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:pyramid-tiny")
    parser.add_argument("--from-build", default=None, help="teacher from a build_tiny folder (before weights ship)")
    parser.add_argument("--out", default="out/distill-bench")
    parser.add_argument("--rows", default="all", help=f"comma list of {', '.join(ALL_ROWS)} (or all)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--fake-lr", type=float, default=None, help="DMD fake score lr (default: --lr)")
    parser.add_argument("--data", default=DistillSettings.data, choices=DATA_SOURCES,
                        help="distillation latents: toy-world renders or the teacher's own samples")
    parser.add_argument("--teacher-loss-weight", type=float, default=DistillSettings.teacher_loss_weight,
                        help="DMD Cauchy teacher-loss weight")
    parser.add_argument("--gan-weight", type=float, default=DistillSettings.gan_weight,
                        help="DMD2-style GAN term on the data latents (default: off)")
    parser.add_argument("--disc-lr", type=float, default=DistillSettings.disc_lr,
                        help="discriminator head lr (default: the fake score's)")
    parser.add_argument("--gan-stages", type=int, nargs="+", default=None, metavar="STAGE",
                        help="pyramid stages with the GAN term (default: the last)")
    parser.add_argument("--gan-features", default=DistillSettings.gan_features, choices=("fake", "teacher"),
                        help="the GAN head reads the fake score's tokens (DMD2) or the frozen teacher's")
    parser.add_argument("--critic-warmup", type=int, default=DistillSettings.critic_warmup,
                        help="first steps train only the fake score and GAN head")
    parser.add_argument("--rollout", action="store_true",
                        help="DMD: the student learns on its own sampler run (backward simulation)")
    parser.add_argument("--teacher-cfg", type=float, nargs=2, default=None, metavar=("FIRST", "VIDEO"),
                        help="the teacher's CFG scales during distillation (default: the model's)")
    parser.add_argument("--fake-updates", type=int, default=DistillSettings.fake_updates_per_student,
                        help="DMD fake-score updates per student update")
    parser.add_argument("--ema", type=float, default=DistillSettings.ema_decay, help="student EMA decay (default: none)")
    parser.add_argument("--data-videos", type=int, default=64)
    parser.add_argument("--teacher-steps", type=int, default=16)
    parser.add_argument("--guard-every", type=int, default=100)
    parser.add_argument("--train-seed", type=int, default=None, help="the students' training seed (default: --seed)")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--upsampler", default=str(Path(__file__).resolve().parents[1] / "neoc" / "zoo" / "weights"
                                                   / "quicksrnet-small-2x.safetensors"))
    parser.add_argument("--mp4", nargs="*", default=[], help="prompts to render end to end (first frame + SR)")
    parser.add_argument("--force", action="store_true", help="recompute cached rows")
    args = parser.parse_args(argv)
    if args.from_build and args.data != DistillSettings.data:
        parser.error("--data: with --from-build the students train on the build's own latents")
    torch.set_num_threads(args.threads)
    rows = ALL_ROWS if args.rows == "all" else [r.strip() for r in args.rows.split(",") if r.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_teacher(args.model, args.from_build)
    results = run_rows(pipe, rows, args, out)
    if args.mp4:
        write_mp4(pipe, pipe.component("denoiser"), out, args)
    # every cached row, also those of earlier invocations
    for path in sorted((out / "rows").glob("*.json")):
        results.setdefault(path.stem, json.loads(path.read_text()))
    table = markdown(results)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
