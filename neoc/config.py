"""Typed, frozen configs built from plain dicts (recipe entries), with errors that name the key.

Every pass and target declares an ``attrs`` frozen class; :func:`build_config` turns a recipe mapping into it,
rejecting unknown keys, wrong types and out-of-range values with :class:`~neoc.errors.InputError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import types
import typing
from typing import Any, Callable, Mapping

import attrs

from neoc.errors import InputError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def suggest(name: Any, known) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or ``""``; case-insensitive matches first."""
    import difflib

    known = [str(k) for k in known]
    text = str(name)
    for k in known:
        if k.lower() == text.lower():
            return f" (did you mean '{k}'?)"
    close = difflib.get_close_matches(text, known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _what(value: Any) -> str:
    """``4.0 (a float)`` — the value and its YAML type, for type errors."""
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", type(None): "null"}
    kind = kinds.get(type(value))
    if kind is None:
        kind = "a list" if isinstance(value, (list, tuple)) else "a mapping" if isinstance(value, dict) else \
            type(value).__name__
    return f"{value!r} ({kind})"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (after YAML parsing) and return the typed value.

    Strict: no string -> number conversion, no bool for int (YAML ``true`` is not ``1``), no float for int
    (``keep: 4.0`` is refused), no NaN/inf; an int is accepted where a float is expected.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
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
        raise InputError(f"{where}: expected {_type_name(tp)}, got {_what(value)}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if not any(type(value) is type(choice) and value == choice for choice in choices):
            hint = suggest(value, choices) if isinstance(value, str) else ""
            raise InputError(f"{where}: must be one of {', '.join(map(repr, choices))}; got {value!r}{hint}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {_what(value)}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {_what(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {_what(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected a number, got {_what(value)}")
        if not math.isfinite(value):
            raise InputError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {_what(value)}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {_what(value)}")
        return dict(value)
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


class ConfigValueError(ValueError):
    """A field validator's complaint, carrying the field name so the message can point at its line."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def build_config(cls: type, data: Mapping[str, Any] | None, where: str,
                 locate: Callable[[str], str] | None = None) -> Any:
    """Build the frozen config ``cls`` from ``data``; errors are :class:`InputError` naming the key.

    ``where`` prefixes error messages (e.g. ``"recipe.yaml:12: pass 'prune-blocks'"``); ``locate(key)``, when
    given, returns the prefix for one key instead (so the message names that key's own line).
    """
    if data is not None and not isinstance(data, Mapping):
        raise InputError(f"{where}: expected a mapping of parameters, got {_what(data)}")
    data = dict(data or {})
    prefix = locate or (lambda _key: where)
    fields = {f.name: f for f in attrs.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        known = ", ".join(sorted(fields)) or "(none)"
        raise InputError(f"{prefix(key)}: unknown key '{key}'{suggest(key, fields)} (known keys: {known})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix(name)}: {name}")
    missing = [n for n, f in fields.items() if f.default is attrs.NOTHING and n not in kwargs]
    if missing:
        raise InputError(f"{where}: missing required key '{missing[0]}'")
    try:
        return cls(**kwargs)
    except ConfigValueError as exc:
        raise InputError(f"{prefix(exc.key)}: {exc}") from None
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
            raise ConfigValueError(attribute.name, f"{attribute.name} must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ConfigValueError(attribute.name, f"{attribute.name} must be <= {hi}, got {value}")

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
