"""Saving and loading a pipeline as a run folder: ``manifest.json`` + one safetensors file per component.

Layout of ``pipeline/``::

    manifest.json          format, spec, schedule, components {role: builder, config, file, sha256}, lineage
    <role>.safetensors     the component's state dict
    tokenizers/            the prompt encoder's tokenizer files (JSON)

The content hash of a pipeline (:func:`pipeline_hash`) covers the manifest and every tensor, and keys the
pass cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import attrs
import torch
from safetensors.torch import load_file, save_file

from neoc import __version__
from neoc.errors import InputError
from neoc.ir.components import build_component, describe_component, load_prompt_encoder
from neoc.ir.pipeline import ROLES, Pipeline
from neoc.ir.schedule import PipelineSpec, Schedule

FORMAT = "neoc-pipeline/1"


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def state_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        if t.device.type != "meta":
            h.update(_tensor_bytes(t))
    return h.hexdigest()


def _plain_state(module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage: clone every tensor
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def _jsonable(obj):
    return json.loads(json.dumps(attrs.asdict(obj), default=list))


def pipeline_manifest(pipe: Pipeline) -> dict:
    components = {}
    for role, module in pipe.components.items():
        builder, config = describe_component(module)
        components[role] = {"builder": builder, "config": config, "file": f"{role}.safetensors",
                            "sha256": state_hash(module.state_dict())}
    tokenizers = pipe.prompt_encoder.describe() if pipe.prompt_encoder is not None else None
    schedule = _jsonable(pipe.schedule)
    if schedule.get("temporal") == "autoregressive":  # the default: left out, so existing content hashes hold
        schedule.pop("temporal")
    return {"format": FORMAT, "neoc_version": __version__, "source": pipe.source,
            "spec": _jsonable(pipe.spec), "schedule": schedule, "components": components,
            "tokenizers": tokenizers, "info": pipe.info}


def pipeline_hash(pipe: Pipeline) -> str:
    manifest = pipeline_manifest(pipe)
    manifest.pop("info", None)
    manifest.pop("source", None)
    manifest.pop("neoc_version", None)
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def save_pipeline(pipe: Pipeline, folder: str | Path) -> Path:
    """Write atomically: a temporary sibling folder renamed into place when complete."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    manifest = pipeline_manifest(pipe)
    for role, module in pipe.components.items():
        save_file(_plain_state(module), str(tmp / manifest["components"][role]["file"]))
    if pipe.prompt_encoder is not None:
        pipe.prompt_encoder.save(tmp / "tokenizers")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def is_pipeline_folder(folder: str | Path) -> bool:
    return (Path(folder) / "manifest.json").is_file()


def load_pipeline(folder: str | Path, verify: bool = True) -> Pipeline:
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{folder}: not a neoc pipeline folder (no manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{manifest_path}: unreadable manifest: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"{manifest_path}: unsupported format {manifest.get('format')!r} (expected {FORMAT})")
    try:
        spec = PipelineSpec(**manifest["spec"])
        sched = manifest["schedule"]
        schedule = Schedule(**{k: tuple(v) if isinstance(v, list) else v for k, v in sched.items()})
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{manifest_path}: bad spec/schedule: {exc}") from None
    components = {}
    for role, entry in manifest.get("components", {}).items():
        if role not in ROLES:
            raise InputError(f"{manifest_path}: unknown component role '{role}'")
        where = f"{manifest_path} component '{role}'"
        module = build_component(entry["builder"], entry["config"], where)
        weights = folder / entry["file"]
        if not weights.is_file():
            raise InputError(f"{weights}: missing weights file for component '{role}'")
        state = load_file(str(weights))
        if verify and state_hash(state) != entry["sha256"]:
            raise InputError(f"{weights}: content hash does not match the manifest (corrupt or edited)")
        from neoc.models.checkpoint import load_state_dict_strict

        load_state_dict_strict(module, state, str(weights))
        components[role] = module
    prompt_encoder = None
    if manifest.get("tokenizers"):
        prompt_encoder = load_prompt_encoder(folder / "tokenizers", manifest["tokenizers"], str(manifest_path))
    return Pipeline(spec, schedule, components, prompt_encoder, source=manifest.get("source", str(folder)),
                    info=manifest.get("info") or {})
