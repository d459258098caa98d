"""Recipe files: safe YAML with line numbers, a strict schema, ``--set`` overrides and profiles.

A recipe is data, never code: YAML tags that construct Python objects are rejected, passes and targets are
resolved by name from the registry, and unknown keys anywhere are errors naming ``file:line``.

Schema (CONTRACT "Recipe files"), plus ``profiles``::

    model: builtin:pyramid-tiny      # optional; --model overrides
    seed: 0                           # optional, default 0
    profile: auto                     # optional: auto | <a key of profiles>
    eval: {prompts: FILE, videos: DIR}
    passes: [{name: ..., <param>: ...}, ...]
    target: {name: hexagon, <param>: ...}
    profiles:                         # optional: named sets of --set style overrides
      tiny: {passes.prune-blocks.keep: 6}

``profile: auto`` picks ``tiny`` for ``builtin:pyramid-tiny`` and ``real`` for any other source, when the recipe
defines that profile.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import attrs
import yaml

from neoc import registry
from neoc.config import build_config, config_hash, config_to_dict
from neoc.errors import InputError

TOP_LEVEL_KEYS = ("model", "seed", "profile", "eval", "passes", "target", "profiles")
EVAL_KEYS = ("prompts", "videos")
DEFAULT_MODEL = "builtin:pyramid-tiny"


# ---------------------------------------------------------------------- YAML with line numbers
class LineDict(dict):
    """A mapping that remembers the line of each key (1-based)."""

    lines: dict

    def line_of(self, key) -> int | None:
        return getattr(self, "lines", {}).get(key)


class LineList(list):
    lines: list


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps key lines and rejects duplicate keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(None, None, "mapping keys must be plain scalars",
                                                    key_node.start_mark)
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(text: str, filename: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or str(exc)
        if "could not determine a constructor" in problem:
            problem = f"YAML tag not allowed ({problem.split('tag')[-1].strip()}): recipes are data, not code"
        raise InputError(f"{filename}{line}: {problem}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{filename}: invalid YAML: {exc}") from None


# ---------------------------------------------------------------------- resolved recipe
@attrs.frozen
class PassEntry:
    name: str
    config: Any
    line: int | None = None

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)


@attrs.frozen
class TargetEntry:
    name: str
    config: Any
    line: int | None = None


@attrs.frozen
class Recipe:
    path: str
    model: str
    seed: int
    profile: str | None
    eval_prompts: Path | None
    eval_videos: Path | None
    passes: tuple[PassEntry, ...]
    target: TargetEntry | None
    raw: dict = attrs.field(eq=False, repr=False)

    def to_dict(self) -> dict:
        return {"recipe": self.path, "model": self.model, "seed": self.seed, "profile": self.profile,
                "eval": {"prompts": str(self.eval_prompts) if self.eval_prompts else None,
                         "videos": str(self.eval_videos) if self.eval_videos else None},
                "passes": [{"name": p.name, **config_to_dict(p.config)} for p in self.passes],
                "target": None if self.target is None else {"name": self.target.name,
                                                             **config_to_dict(self.target.config)}}


# ---------------------------------------------------------------------- --set overrides
def parse_set(items: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``a.b=v`` strings -> ``[(path, value)]``; values parse as YAML scalars/lists (safe)."""
    out = []
    for item in items or ():
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY=VALUE (e.g. passes.prune-blocks.keep=6)")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key:
            raise InputError(f"--set {item!r}: empty key")
        out.append((key, load_yaml(text, f"--set {key}") if text.strip() else ""))
    return out


def apply_set(data: dict, key: str, value: Any, where: str) -> None:
    """Apply one override to the raw recipe mapping. ``passes.<name|index>.<param>`` addresses a pass entry."""
    parts = key.split(".")
    head = parts[0]
    if head not in TOP_LEVEL_KEYS or head == "profiles":
        raise InputError(f"{where}: unknown key '{head}' (top-level keys: {', '.join(TOP_LEVEL_KEYS[:-1])})")
    if head == "passes":
        if len(parts) < 3:
            raise InputError(f"{where}: use passes.<name>.<param>=VALUE")
        entries = data.get("passes") or []
        selector, rest = parts[1], parts[2:]
        if selector.isdigit():
            index = int(selector)
            if index >= len(entries):
                raise InputError(f"{where}: the recipe has no pass at index {index}")
            matches = [entries[index]]
        else:
            matches = [e for e in entries if isinstance(e, dict) and e.get("name") == selector]
            if not matches:
                raise InputError(f"{where}: the recipe has no pass named '{selector}'")
        for entry in matches:
            _set_path(entry, rest, value, where)
        return
    _set_path(data, parts, value, where)


def _set_path(node: dict, parts: list[str], value: Any, where: str) -> None:
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = LineDict()
            child.lines = {}
            node[part] = child
        if not isinstance(child, dict):
            raise InputError(f"{where}: '{part}' is not a mapping")
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------------- validation
def _loc(filename: str, mapping: Any, key: Any) -> str:
    line = mapping.line_of(key) if isinstance(mapping, LineDict) else None
    return f"{filename}:{line}" if line else filename


def _resolve_path(value: Any, base: Path, where: str, kind: str) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: expected a path string, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base / path).resolve()
    if kind == "file" and not path.is_file():
        raise InputError(f"{where}: file not found: {path}")
    if kind == "dir" and not path.is_dir():
        raise InputError(f"{where}: folder not found: {path}")
    return path


def auto_profile(model: str, profiles: dict) -> str | None:
    wanted = "tiny" if model == DEFAULT_MODEL else "real"
    return wanted if wanted in profiles else None


def load_recipe(path: str | Path, model: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                check_eval_paths: bool = True) -> Recipe:
    """Read, override and validate a recipe. Raises :class:`InputError` naming ``file:line`` or the key."""
    path = Path(path)
    filename = str(path)
    if not path.is_file():
        raise InputError(f"{filename}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{filename}: cannot read recipe: {exc}") from None
    data = load_yaml(text, filename)
    if data is None:
        raise InputError(f"{filename}: the recipe is empty")
    if not isinstance(data, dict):
        raise InputError(f"{filename}: a recipe must be a mapping with 'passes:' (got {type(data).__name__})")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise InputError(f"{_loc(filename, data, key)}: unknown top-level key '{key}' "
                             f"(allowed: {', '.join(TOP_LEVEL_KEYS)})")

    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise InputError(f"{_loc(filename, data, 'profiles')}: 'profiles' must be a mapping of name -> overrides")
    sets = parse_set(overrides)
    # --model and --set model=... decide the profile; apply the profile, then the user's --set on top.
    chosen_model = model
    for key, value in sets:
        if key == "model":
            chosen_model = value
    chosen_model = chosen_model or data.get("model") or DEFAULT_MODEL
    profile_name = data.get("profile", "auto")
    for key, value in sets:
        if key == "profile":
            profile_name = value
    if profile_name == "auto":
        profile_name = auto_profile(str(chosen_model), profiles)
    elif profile_name is not None and profile_name not in profiles:
        raise InputError(f"{_loc(filename, data, 'profile')}: unknown profile '{profile_name}' "
                         f"(defined: {', '.join(profiles) or 'none'})")
    data = copy.deepcopy(data)
    if profile_name is not None:
        overrides_of_profile = profiles[profile_name]
        if not isinstance(overrides_of_profile, dict):
            raise InputError(f"{_loc(filename, profiles, profile_name)}: profile '{profile_name}' must be a mapping "
                             "of KEY: VALUE overrides")
        for key, value in overrides_of_profile.items():
            apply_set(data, str(key), value, f"{_loc(filename, overrides_of_profile, key)} profile {profile_name}")
    for key, value in sets:
        if key != "profile":
            apply_set(data, key, value, f"--set {key}")
    if model:
        data["model"] = model

    model_src = data.get("model") or DEFAULT_MODEL
    if not isinstance(model_src, str):
        raise InputError(f"{_loc(filename, data, 'model')}: 'model' must be a string model source")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"{_loc(filename, data, 'seed')}: 'seed' must be a non-negative integer, got {seed!r}")

    base = path.resolve().parent
    eval_section = data.get("eval") or {}
    if not isinstance(eval_section, dict):
        raise InputError(f"{_loc(filename, data, 'eval')}: 'eval' must be a mapping with prompts/videos")
    for key in eval_section:
        if key not in EVAL_KEYS:
            raise InputError(f"{_loc(filename, eval_section, key)}: unknown key 'eval.{key}' "
                             f"(allowed: {', '.join(EVAL_KEYS)})")
    prompts = videos = None
    if eval_section.get("prompts") is not None:
        prompts = _resolve_path(eval_section["prompts"], base, f"{_loc(filename, eval_section, 'prompts')} eval.prompts",
                                "file" if check_eval_paths else "any")
    if eval_section.get("videos") is not None:
        videos = _resolve_path(eval_section["videos"], base, f"{_loc(filename, eval_section, 'videos')} eval.videos",
                               "dir" if check_eval_paths else "any")

    raw_passes = data.get("passes")
    if raw_passes is None:
        raw_passes = []
    if not isinstance(raw_passes, list):
        raise InputError(f"{_loc(filename, data, 'passes')}: 'passes' must be a list of {{name: ..., params}}")
    lines = getattr(raw_passes, "lines", [None] * len(raw_passes))
    entries = []
    for i, raw in enumerate(raw_passes):
        line = lines[i] if i < len(lines) else None
        where = f"{filename}:{line}" if line else f"{filename} passes[{i}]"
        if not isinstance(raw, dict):
            raise InputError(f"{where}: each pass must be a mapping with a 'name' (got {raw!r})")
        if "name" not in raw:
            raise InputError(f"{where}: pass entry has no 'name'")
        name = raw["name"]
        if not isinstance(name, str):
            raise InputError(f"{where}: pass name must be a string, got {name!r}")
        cls = registry.get_pass(name, where=f"{where}: ")
        params = {k: v for k, v in raw.items() if k != "name"}
        key_where = f"{where} pass '{name}'"
        for k in params:
            if isinstance(raw, LineDict) and raw.line_of(k):
                key_where = f"{filename}:{raw.line_of(k)} pass '{name}'"
                break
        config = build_config(cls.Config, params, key_where)
        entries.append(PassEntry(name, config, line))
    validate_order([e.name for e in entries], filename, [e.line for e in entries])

    target = None
    raw_target = data.get("target")
    if raw_target is not None:
        where = _loc(filename, data, "target")
        if isinstance(raw_target, str):
            raw_target = {"name": raw_target}
        if not isinstance(raw_target, dict) or "name" not in raw_target:
            raise InputError(f"{where}: 'target' must be a mapping with a 'name'")
        tcls = registry.get_target(str(raw_target["name"]), where=f"{where}: ")
        tconfig = build_config(tcls.Config, {k: v for k, v in raw_target.items() if k != "name"},
                               f"{where} target '{raw_target['name']}'")
        target = TargetEntry(tcls.name, tconfig, data.line_of("target") if isinstance(data, LineDict) else None)

    return Recipe(path=filename, model=model_src, seed=seed, profile=profile_name, eval_prompts=prompts,
                  eval_videos=videos, passes=tuple(entries), target=target, raw=data)


def validate_order(names: list[str], filename: str = "recipe", lines: list | None = None) -> None:
    """Check every pass's ordering rules against the whole list, before anything runs."""
    lines = lines or [None] * len(names)
    table = registry.passes()
    for i, name in enumerate(names):
        cls = table[name]
        where = f"{filename}:{lines[i]}" if lines[i] else filename
        earlier, later = names[:i], names[i + 1:]
        for req in cls.requires:
            if req not in earlier:
                raise InputError(f"{where}: pass '{name}' requires '{req}' earlier in the recipe")
        for dep in cls.runs_after:
            if dep in later:
                raise InputError(f"{where}: pass '{name}' must run after '{dep}', but '{dep}' comes later")
        for bad in cls.forbids_after:
            if bad in later:
                raise InputError(f"{where}: pass '{bad}' may not follow '{name}' "
                                 f"('{name}' must be among the last of these passes)")
