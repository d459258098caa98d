"""Typed, frozen configs built from plain dicts (recipe entries), with errors that name the key.

Every pass and target declares an ``attrs`` frozen class; :func:`build_config` turns a recipe mapping into it,
rejecting unknown keys, wrong types and out-of-range values with :class:`~neoc.errors.InputError`.
"""

from __future__ import annotations

import hashlib
import json
import typing
from typing import Any, Mapping

import attrs

from neoc.errors import InputError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (after YAML parsing) and return the typed value."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except InputError:
                continue
        raise InputError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise InputError(f"{where}: must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def build_config(cls: type, data: Mapping[str, Any] | None, where: str) -> Any:
    """Build the frozen config ``cls`` from ``data``; ``where`` prefixes error messages (e.g. 'recipe.yaml:12 prune-blocks')."""
    data = dict(data or {})
    fields = {f.name: f for f in attrs.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "(none)"
        raise InputError(f"{where}: unknown key '{unknown[0]}' (known keys: {known})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    missing = [n for n, f in fields.items() if f.default is attrs.NOTHING and n not in kwargs]
    if missing:
        raise InputError(f"{where}: missing required key '{missing[0]}'")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a config (tuples become lists)."""
    if config is None:
        return {}
    return json.loads(json.dumps(attrs.asdict(config, recurse=True), default=list))


def config_hash(config: Any) -> str:
    return hashlib.sha256(json.dumps(config_to_dict(config), sort_keys=True).encode()).hexdigest()[:16]


def in_range(lo: float | None = None, hi: float | None = None):
    """attrs validator: lo <= value <= hi (either bound optional)."""

    def check(_inst, attribute, value):
        if value is None:
            return
        if lo is not None and value < lo:
            raise ValueError(f"{attribute.name} must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ValueError(f"{attribute.name} must be <= {hi}, got {value}")

    return check


def describe_params(cls: type) -> dict[str, dict[str, Any]]:
    """``{param: {"type": ..., "default": ...}}`` for ``neoc passes --json``."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in attrs.fields(cls):
        default = None if f.default is attrs.NOTHING else f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if isinstance(default, tuple):
            default = list(default)
        out[f.name] = {"type": _type_name(hints[f.name]), "default": default,
                       "help": (f.metadata or {}).get("help", "")}
    return out
