"""Registries of passes and targets: built-ins by subclassing + decorator, third parties by entry points.

A recipe names passes and targets; it never names Python code. Names resolve here, and only here.
Third-party packages declare ``[project.entry-points."neoc.passes"] my-pass = "pkg.module:MyPass"``.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TypeVar

from neoc.errors import InputError

_PASSES: dict[str, type] = {}
_TARGETS: dict[str, type] = {}
_loaded = False

T = TypeVar("T", bound=type)


def register_pass(cls: T) -> T:
    if not getattr(cls, "name", ""):
        raise TypeError(f"{cls.__name__} has no pass name")
    existing = _PASSES.get(cls.name)
    if existing is not None and existing is not cls:
        raise TypeError(f"pass name '{cls.name}' registered twice ({existing.__module__}, {cls.__module__})")
    _PASSES[cls.name] = cls
    return cls


def register_target(cls: T) -> T:
    if not getattr(cls, "name", ""):
        raise TypeError(f"{cls.__name__} has no target name")
    _TARGETS[cls.name] = cls
    return cls


def _load_entry_points(group: str, table: dict[str, type]) -> None:
    for ep in metadata.entry_points(group=group):
        if ep.name in table:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break neoc
            raise InputError(f"entry point '{ep.name}' ({ep.value}) in group {group} failed to load: {exc}") from None
        if getattr(cls, "name", None) != ep.name:
            raise InputError(f"entry point '{ep.name}' loads {ep.value}, whose name is {getattr(cls, 'name', None)!r}")
        table[ep.name] = cls


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    importlib.import_module("neoc.passes")
    importlib.import_module("neoc.targets")
    _load_entry_points("neoc.passes", _PASSES)
    _load_entry_points("neoc.targets", _TARGETS)
    _loaded = True


def passes() -> dict[str, type]:
    load_all()
    return dict(sorted(_PASSES.items()))


def targets() -> dict[str, type]:
    load_all()
    return dict(sorted(_TARGETS.items()))


def _suggest(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def get_pass(name: str, where: str = "") -> type:
    table = passes()
    if name not in table:
        raise InputError(f"{where}unknown pass '{name}'{_suggest(name, table)}; `neoc passes` lists them")
    return table[name]


def get_target(name: str, where: str = "") -> type:
    table = targets()
    if name not in table:
        raise InputError(f"{where}unknown target '{name}'{_suggest(name, table)}; targets: {', '.join(table)}")
    return table[name]
