"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is one folder ``<run>/checkpoints/step-00000120/``:

* ``model.safetensors``     full (unsharded) model state dict, fp32 as trained;
* ``optimizer.safetensors`` optimizer state tensors flattened to ``"<param fqn>::<state name>"`` keys
  (Adam's ``exp_avg``, ``exp_avg_sq``, ``step``), keyed by parameter name, not position;
* ``ema.safetensors``       exponential-moving-average weights, when the trainer keeps them;
* ``rng.safetensors``       torch CPU (and CUDA) generator states (uint8 tensors);
* ``trainer.json``          step, optimizer param groups and non-tensor state, LR-schedule base rates,
  Python and NumPy RNG states, the train config and logged losses.

The folder is written under a temporary name and renamed, so a crash never leaves a half checkpoint that
:func:`latest_checkpoint` would pick. Only the main rank writes; every rank reads.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT = "neoc-train-checkpoint/1"
STEP_PREFIX = "step-"
KEY_SEP = "::"


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{STEP_PREFIX}{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.startswith(STEP_PREFIX) and p.name[len(STEP_PREFIX):].isdigit()
             and (p / "trainer.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def checkpoint_step(folder: str | os.PathLike) -> int:
    return int(Path(folder).name[len(STEP_PREFIX):])


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


# ---- tensors <-> safetensors ------------------------------------------------------------------------------
def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (copies also untie shared weights, which safetensors refuses)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}


def flatten_optimizer_state(optim_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``{"state": {fqn: {name: value}}, "param_groups": [...]}`` -> (tensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for fqn, entries in optim_state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{fqn}{KEY_SEP}{name}"] = value
            else:
                scalars.setdefault(fqn, {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in optim_state["param_groups"]]
    return _plain_tensors(tensors), {"scalars": scalars, "param_groups": groups}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        fqn, name = key.rsplit(KEY_SEP, 1)
        state.setdefault(fqn, {})[name] = value
    for fqn, entries in rest.get("scalars", {}).items():
        state.setdefault(fqn, {}).update(entries)
    groups = []
    for g in rest["param_groups"]:
        g = dict(g)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ---- RNG states ---------------------------------------------------------------------------------------------
def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{KEY_SEP}{index}"] = state
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    rest = {"python": [version, list(internal), gauss],
            "numpy": {"bit_generator": np_state["bit_generator"],
                      "state": {"key": [int(v) for v in np_state["state"]["key"]], "pos": int(np_state["state"]["pos"])},
                      "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])}}
    return tensors, rest


def restore_rng(tensors: dict[str, torch.Tensor], rest: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted((k for k in tensors if k.startswith(f"cuda{KEY_SEP}")), key=lambda k: int(k.split(KEY_SEP)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    version, internal, gauss = rest["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(rest["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)


# ---- save / load --------------------------------------------------------------------------------------------
def save_checkpoint(run_dir: str | os.PathLike, step: int, model_state: dict[str, torch.Tensor], optim_state: dict,
                    trainer_state: dict, ema_state: dict[str, torch.Tensor] | None = None,
                    keep: int | None = None) -> Path:
    """Write one checkpoint atomically; keep the newest ``keep`` (None: all). Call on the main rank only."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_plain_tensors(model_state), str(tmp / "model.safetensors"))
    optim_tensors, optim_rest = flatten_optimizer_state(optim_state)
    save_file(optim_tensors, str(tmp / "optimizer.safetensors"))
    if ema_state is not None:
        save_file(_plain_tensors(ema_state), str(tmp / "ema.safetensors"))
    rng_tensors, rng_rest = capture_rng()
    save_file(_plain_tensors(rng_tensors), str(tmp / "rng.safetensors"))
    payload = {"format": FORMAT, "step": int(step), "optimizer": optim_rest, "rng": rng_rest, **trainer_state}
    (tmp / "trainer.json").write_text(json.dumps(payload, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep is not None and keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: str | os.PathLike) -> dict:
    """-> {"step", "model", "optimizer" (torch layout), "ema" (or None), "rng": (tensors, rest), "trainer": json}."""
    folder = Path(folder)
    meta = json.loads((folder / "trainer.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder}/trainer.json: unknown checkpoint format {meta.get('format')!r}")
    ema_path = folder / "ema.safetensors"
    return {
        "step": int(meta["step"]),
        "model": load_file(str(folder / "model.safetensors")),
        "optimizer": unflatten_optimizer_state(load_file(str(folder / "optimizer.safetensors")), meta["optimizer"]),
        "ema": load_file(str(ema_path)) if ema_path.is_file() else None,
        "rng": (load_file(str(folder / "rng.safetensors")), meta["rng"]),
        "trainer": meta,
    }
