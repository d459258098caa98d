"""Component builders: how a saved component is rebuilt from its JSON config (no pickle, no code in files).

Every component class that can live in a run folder registers a builder under a stable name; the manifest
stores ``{"builder": name, "config": {...}}`` and the weights as safetensors. Loading only ever calls a
registered builder, so a run folder cannot make neoc execute arbitrary code.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

from neoc.errors import InputError

Builder = Callable[[dict], nn.Module]
_BUILDERS: dict[str, Builder] = {}
_CLASS_TO_BUILDER: dict[type, tuple[str, Callable[[nn.Module], dict]]] = {}

# Modules that register builders on import (model files). Extended by plugins through register_builder.
BUILDER_MODULES = ["neoc.zoo.components", "neoc.testing", "neoc.deploy.builders"]


def register_builder(name: str, cls: type, build: Builder, describe: Callable[[nn.Module], dict]) -> None:
    """``build(config) -> module`` and ``describe(module) -> config`` must round-trip."""
    _BUILDERS[name] = build
    _CLASS_TO_BUILDER[cls] = (name, describe)


def describe_component(module: nn.Module) -> tuple[str, dict]:
    for mod in BUILDER_MODULES:
        importlib.import_module(mod)
    entry = _CLASS_TO_BUILDER.get(type(module))
    if entry is None:
        raise TypeError(f"component class {type(module).__module__}.{type(module).__name__} has no registered "
                        "builder; call neoc.ir.components.register_builder for it")
    name, describe = entry
    return name, describe(module)


def build_component(name: str, config: dict, where: str) -> nn.Module:
    for mod in BUILDER_MODULES:
        importlib.import_module(mod)
    if name not in _BUILDERS:
        raise InputError(f"{where}: unknown component builder '{name}' (known: {', '.join(sorted(_BUILDERS))})")
    try:
        return _BUILDERS[name](dict(config))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{where}: cannot build component '{name}' from its config: {exc}") from None


# ---- prompt encoders (tokenizers): rebuilt from their JSON description + files in tokenizers/ ----------
_PROMPT_ENCODERS: dict[str, Callable] = {}


def register_prompt_encoder(kind: str, load: Callable) -> None:
    """``load(folder, description) -> prompt encoder``; the encoder's ``describe()`` must carry ``kind``."""
    _PROMPT_ENCODERS[kind] = load


def load_prompt_encoder(folder, description: dict, where: str):
    for mod in BUILDER_MODULES:
        importlib.import_module(mod)
    kind = description.get("kind")
    if kind not in _PROMPT_ENCODERS:
        raise InputError(f"{where}: unknown tokenizer kind {kind!r} (known: {', '.join(sorted(_PROMPT_ENCODERS))})")
    return _PROMPT_ENCODERS[kind](folder, description)


# ---- plain torch layers used as components -------------------------------------------------------
def _linear_describe(m: nn.Linear) -> dict[str, Any]:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


register_builder("torch.Linear", nn.Linear, lambda c: nn.Linear(c["in_features"], c["out_features"], c["bias"]),
                 _linear_describe)
