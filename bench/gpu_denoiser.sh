#!/usr/bin/env bash
# Train the builtin:pyramid-tiny denoiser on one GPU (the device tool's H100/H200) from the shipped VAE.
#
#   bash bench/gpu_denoiser.sh OUT WALL_SECONDS [--set KEY=VALUE ...]
#
# 1. the package's VAE (neoc/zoo/weights/pyramid-tiny-vae.safetensors) becomes OUT/vae2 (stages vae, vae2 marked
#    done: the latent space of the shipped pipeline is kept, so its decoder / TAEHV / SR stay valid);
# 2. stage encode on the CPU cores (ENC_PROCS processes, default 14);
# 3. stages measure + denoiser on the GPU (one process), stopped after WALL_SECONDS (checkpoints every
#    den_checkpoint_every steps; the same command resumes from them, and a constant LR + EMA make a run stopped at
#    step N equal to one asked for den_steps=N);
# 4. the last checkpoint's EMA weights (fp16, what `build_tiny --stages write` ships) + summaries into $OUT
#    (the device tool's return folder) when OUT_DIR_RETURN is set.
# The --set items go to every stage; record them with the write stage that ships the result.
# --set den_init=shipped warm-starts the denoiser-side roles from the package's weights instead of training from
# scratch (the measure stage then keeps the shipped latent normalisation, after checking its own measurement
# agrees), so one device session's wall budget adds to the last one's. --set den_fg_weight=5 weighs the object's
# latent cells in the flow-matching loss (measured on 2 CPU cores: held-out semantic 0.610 vs 0.554 after 2,250
# continuation steps; docs/tiny-denoiser-notes.md); a small batch (--set den_batch=32) gives more updates per second.
# The 2026-11-22 run made 2.6 steps/s at batch 256 on an H100 (not profiled there; building one batch of 256 --
# caption sampling + tokenising -- takes ~65 ms on the 2-core dev CPU); --set den_prefetch=4 builds the next
# batches in a background thread (same batches, same weights; not yet timed on a GPU).
set -uo pipefail
out=$1; wall=$2; shift 2
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python - "$out" <<'PY' || exit 1
import json, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from neoc.zoo.builtin import TINY_VAE_WEIGHTS, VAE_ROLES
out = Path(sys.argv[1]); (out / "vae2").mkdir(parents=True, exist_ok=True)
target = out / "vae2" / "vae.safetensors"
if not target.is_file():
    t = {k: v.float() for k, v in load_file(str(TINY_VAE_WEIGHTS)).items() if k.split(".")[0] in VAE_ROLES}
    save_file(t, str(target))
    for stage in ("vae", "vae2"):  # not run here: no wall time recorded
        (out / f".{stage}.done.json").write_text(json.dumps({"stage": stage, "from": str(TINY_VAE_WEIGHTS)}))
print(f"[gpu_denoiser] VAE: {target}", flush=True)
PY
python -m neoc.zoo.build_tiny --out "$out" --stages encode --procs "${ENC_PROCS:-14}" "$@" || exit 1
timeout "$wall" python -m neoc.zoo.build_tiny --out "$out" --stages measure,denoiser --procs 1 "$@"
echo "[gpu_denoiser] training exit $? (124 = stopped at the wall budget)"
if [ -n "${OUT_DIR_RETURN:-}" ]; then
python - "$out" "$OUT_DIR_RETURN" <<'PY'
import json, shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from neoc.train.checkpoint import latest_checkpoint
out, ret = Path(sys.argv[1]), Path(sys.argv[2])
last = latest_checkpoint(out / "denoiser")
ema = {k: v.half().contiguous() for k, v in load_file(str(last / "ema.safetensors")).items()}
save_file(ema, str(ret / f"ema-fp16-{last.name}.safetensors"))
trainer = json.loads((last / "trainer.json").read_text())
(ret / "trainer-summary.json").write_text(json.dumps({k: trainer[k] for k in ("step", "losses", "wall_seconds_total", "config")}))
shutil.copy(out / "measure.json", ret / "measure.json")
print(f"[gpu_denoiser] returned {last.name}", flush=True)
PY
fi
