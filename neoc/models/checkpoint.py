"""Safetensors-only checkpoint reading and strict, explained state-dict loading.

Released Pyramid-Flow folders (reference/pyramid-flow-facts.md §6) hold either one
``diffusion_pytorch_model.safetensors`` / ``model.safetensors`` or shards listed in a
``*.safetensors.index.json``. Pickled weights (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are refused:
loading them executes arbitrary code.

Key normalisation before matching (:func:`normalize_released_keys`):

* a leading ``dit.`` is stripped, like the reference pipeline's ``load_checkpoint`` does for training
  checkpoints;
* legacy diffusers attention names in VAE mid blocks (``query/key/value/proj_attn``) are renamed to
  ``to_q/to_k/to_v/to_out.0`` — diffusers does this on load (``_from_deprecated_attn_block``); the
  released file is expected to use the new names already (facts §6, unverified).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from neoc.errors import InputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_ATTENTION_KEY = re.compile(r"^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")


def _pickle_refusal(path: Path) -> InputError:
    return InputError(
        f"{path}: refusing to load a pickled checkpoint ({path.suffix}); pickles can run arbitrary code. "
        "Convert it once in a trusted environment, e.g. "
        "`python -c \"import torch, safetensors.torch as st; sd = torch.load('IN', map_location='cpu', "
        "weights_only=True); st.save_file({k: v.contiguous() for k, v in sd.items()}, 'OUT.safetensors')\"`, "
        "and point neoc at the .safetensors file or its folder."
    )


def _load_safetensors_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable safetensors file ({error})") from None


def read_safetensors_folder(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read all tensors of a checkpoint: a ``.safetensors`` file, or a folder with one such file or a
    sharded ``*.safetensors.index.json`` (its ``weight_map`` names the shard of every tensor)."""
    path = Path(folder)
    if not path.exists():
        raise InputError(f"{path}: checkpoint path does not exist")
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise _pickle_refusal(path)
        if path.name.endswith(".safetensors.index.json"):
            return _read_sharded(path)
        if path.suffix != ".safetensors":
            raise InputError(f"{path}: expected a .safetensors file or a folder holding one")
        return _load_safetensors_file(path)

    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise InputError(f"{path}: several shard indexes ({', '.join(p.name for p in indexes)}); keep one")
    if indexes:
        return _read_sharded(indexes[0])
    files = sorted(path.glob("*.safetensors"))
    if len(files) == 1:
        return _load_safetensors_file(files[0])
    if len(files) > 1:
        raise InputError(
            f"{path}: several .safetensors files ({', '.join(p.name for p in files)}) and no "
            "*.safetensors.index.json saying how they combine"
        )
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise _pickle_refusal(pickles[0])
    raise InputError(f"{path}: no .safetensors checkpoint in this folder")


def _read_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{index_path}: unreadable shard index, expected a 'weight_map' ({error})") from None
    state_dict: dict[str, torch.Tensor] = {}
    for shard_name in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard_name
        if shard_path.suffix in PICKLE_SUFFIXES:
            raise _pickle_refusal(shard_path)
        if not shard_path.is_file():
            raise InputError(f"{index_path}: shard {shard_name} is missing")
        state_dict.update(_load_safetensors_file(shard_path))
    missing = [key for key in weight_map if key not in state_dict]
    if missing:
        raise InputError(f"{index_path}: tensor {missing[0]!r} is listed in weight_map but absent from its shard")
    return state_dict


def normalize_released_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a leading ``dit.`` and rename legacy VAE attention keys (see module docstring)."""
    normalized: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.startswith("dit."):
            key = key[len("dit."):]
        legacy = _LEGACY_ATTENTION_KEY.match(key)
        if legacy:
            key = f"{legacy.group(1)}{LEGACY_ATTENTION_NAMES[legacy.group(2)]}.{legacy.group(3)}"
        normalized[key] = tensor
    return normalized


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source_name: str) -> nn.Module:
    """Load every tensor or raise :class:`InputError` naming the first missing or unexpected tensor,
    or the first shape mismatch (key, expected, got). Persistent buffers count (``pos_embed.pos_embed``).

    Tensors are copied into the module's parameters (cast to their dtype); a module on the ``meta``
    device takes the loaded tensors as they are (``assign=True``).
    """
    state_dict = normalize_released_keys(state_dict)
    expected = module.state_dict()
    for key in expected:
        if key not in state_dict:
            raise InputError(f"{source_name}: missing tensor {key!r} (expected shape {tuple(expected[key].shape)})")
    for key in state_dict:
        if key not in expected:
            raise InputError(f"{source_name}: unexpected tensor {key!r} (shape {tuple(state_dict[key].shape)})")
    for key, reference in expected.items():
        if tuple(state_dict[key].shape) != tuple(reference.shape):
            raise InputError(
                f"{source_name}: tensor {key!r} has shape {tuple(state_dict[key].shape)}, "
                f"expected {tuple(reference.shape)}"
            )
    on_meta = any(t.is_meta for t in expected.values())
    module.load_state_dict(state_dict, strict=True, assign=on_meta)
    return module
