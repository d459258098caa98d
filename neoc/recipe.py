"""Recipe files: safe YAML with line numbers, a strict schema, ``--set`` overrides and profiles.

A recipe is data, never code: YAML tags that construct Python objects are rejected, passes and targets are
resolved by name from the registry, and unknown keys anywhere are errors naming ``file:line``.

Schema (CONTRACT "Recipe files"), plus ``profiles``::

    model: builtin:pyramid-tiny      # optional; --model overrides
    seed: 0                           # optional, default 0
    profile: auto                     # optional: auto | <a key of profiles>
    eval: {prompts: FILE, videos: DIR}
    on_refuse: fail                   # optional: fail | skip (a pass whose preconditions do not hold is
                                      # recorded as "skipped" with its reason and the run goes on)
    passes: [{name: ..., <param>: ...}, ...]
    target: {name: hexagon, <param>: ...}
    profiles:                         # optional: named sets of --set style overrides
      tiny: {passes.prune-blocks.keep: 6}

``profile: auto`` picks ``tiny`` for ``builtin:pyramid-tiny`` and ``real`` for any other source, when the recipe
defines that profile. Precedence: recipe < profile < ``--set`` < ``--model``. Every value remembers where it came
from (``file:line``, ``file:line (profile 'tiny')``, ``--set KEY``, ``--model``), so errors and ``neoc explain``
point there. Numbers follow YAML 1.2 (``1e-4`` is a float); relative ``eval:`` paths in the file resolve against
the recipe's folder, those given with ``--set`` against the working directory.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import attrs
import yaml

from neoc import registry
from neoc.config import build_config, config_hash, config_to_dict, suggest
from neoc.errors import InputError, PassNotImplemented

TOP_LEVEL_KEYS = ("model", "seed", "profile", "eval", "on_refuse", "passes", "target", "profiles")
ON_REFUSE = ("fail", "skip")
EVAL_KEYS = ("prompts", "videos", "num_videos")
DEFAULT_EVAL_VIDEOS = 4  # toy-world quality: videos generated per measurement (before/after each pass)
DEFAULT_MODEL = "builtin:pyramid-tiny"


# ---------------------------------------------------------------------- YAML with line numbers
class LineDict(dict):
    """A mapping that remembers the line of each key (1-based) and, for values set by ``--set``, ``--model`` or
    a profile, where they came from instead (``origins``: key -> e.g. ``"--set passes.prune-blocks.keep"``)."""

    lines: dict
    origins: dict

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines = {}
        self.origins = {}

    def line_of(self, key) -> int | None:
        return getattr(self, "lines", {}).get(key)

    def origin_of(self, key) -> str | None:
        return getattr(self, "origins", {}).get(key)


class LineList(list):
    lines: list


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps key lines, rejects duplicate keys and reads ``1e-4`` as a float (YAML 1.2)."""


# YAML 1.1 (PyYAML) reads ``lr: 1e-4`` and ``1.0e5`` as *strings*; YAML 1.2 and every user read them as floats.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(None, None, "mapping keys must be plain scalars",
                                                    key_node.start_mark)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first at line {out.lines[key]})", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _yaml_problem(exc: yaml.YAMLError) -> tuple[int | None, str]:
    """``(line, message)`` for a PyYAML error; tags that would build Python objects get a plain message."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return None, f"invalid YAML: {exc}"
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    problem = exc.problem or str(exc)
    if "could not determine a constructor" in problem:
        found = re.search(r"tag '([^']*)'", problem)
        tag = found.group(1) if found else problem
        tag = tag.replace("tag:yaml.org,2002:", "!!")
        return line, f"YAML tag '{tag}' is not allowed: recipes are data, not code"
    if isinstance(exc, yaml.constructor.ConstructorError):
        return line, problem
    where = f" (column {mark.column + 1})" if mark is not None else ""
    context = f"{exc.context}, " if exc.context else ""
    return line, f"invalid YAML: {context}{problem}{where}"


def load_yaml(text: str, filename: str) -> Any:
    """Parse YAML safely (no Python tags) into :class:`LineDict`/:class:`LineList`; errors name ``file:line``."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except yaml.YAMLError as exc:
        line, problem = _yaml_problem(exc)
        raise InputError(f"{filename}{f':{line}' if line else ''}: {problem}") from None


def _mark_origin(value: Any, origin: str) -> Any:
    """Tag every key of a value that came from ``--set`` with that origin (its YAML lines are not the recipe's)."""
    if isinstance(value, LineDict):
        value.lines = {}
        value.origins = {key: origin for key in value}
        for child in value.values():
            _mark_origin(child, origin)
    elif isinstance(value, LineList):
        value.lines = [None] * len(value)
        for child in value:
            _mark_origin(child, origin)
    return value


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
    eval_num_videos: int = DEFAULT_EVAL_VIDEOS
    #: a pass whose preconditions do not hold: ``fail`` the run (exit 1) or ``skip`` it (status "skipped",
    #: the reason in the report) and go on with the unchanged pipeline
    on_refuse: str = "fail"

    def where(self, key: str) -> str:
        """Where a top-level value came from: ``recipe.yaml:3``, ``--model``, ``--set seed`` or the file name."""
        return _loc(self.path, self.raw, key)

    def param_origin(self, index: int, param: str) -> str | None:
        """For pass ``index``'s ``param``: the ``--set``/profile that set it, or None when the recipe file did."""
        entries = self.raw.get("passes") or []
        entry = entries[index] if index < len(entries) else None
        return entry.origin_of(param) if isinstance(entry, LineDict) else None

    def to_dict(self) -> dict:
        return {"recipe": self.path, "model": self.model, "seed": self.seed, "profile": self.profile,
                "on_refuse": self.on_refuse,
                "eval": {"prompts": str(self.eval_prompts) if self.eval_prompts else None,
                         "videos": str(self.eval_videos) if self.eval_videos else None,
                         "num_videos": self.eval_num_videos},
                "passes": [{"name": p.name, **config_to_dict(p.config)} for p in self.passes],
                "target": None if self.target is None else {"name": self.target.name,
                                                             **config_to_dict(self.target.config)}}


# ---------------------------------------------------------------------- --set overrides
def parse_set(items: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``a.b=v`` strings -> ``[(path, value)]``; values parse as YAML scalars/lists (safe: no Python tags).

    ``keep=4`` is the integer 4, ``lr=1e-4`` a float, ``socs=[x-elite]`` a list, ``mode=RM`` a string.
    """
    out = []
    for item in items or ():
        if not isinstance(item, str) or "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY=VALUE (e.g. --set passes.prune-blocks.keep=6)")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise InputError(f"--set {item!r}: expected KEY=VALUE with a dotted key such as "
                             "passes.prune-blocks.keep, seed or eval.prompts")
        if not text.strip():
            value: Any = ""
        else:
            try:
                value = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
            except yaml.YAMLError as exc:
                _, problem = _yaml_problem(exc)
                raise InputError(f"--set {item!r}: the value is not valid YAML: {problem}") from None
        out.append((key, _mark_origin(value, f"--set {key}")))
    return out


def apply_set(data: dict, key: str, value: Any, where: str) -> None:
    """Apply one override to the raw recipe mapping. ``passes.<name|index>.<param>`` addresses a pass entry.

    ``where`` names the override (``--set passes.prune-blocks.keep``, or a profile's ``file:line``); it is
    recorded as the origin of the value, so later errors about it point there, not at the recipe's line.
    """
    parts = key.split(".")
    head = parts[0]
    if head not in TOP_LEVEL_KEYS or head == "profiles":
        allowed = TOP_LEVEL_KEYS[:-1]
        raise InputError(f"{where}: unknown key '{head}'{suggest(head, allowed)} "
                         f"(top-level keys: {', '.join(allowed)})")
    if head == "passes":
        if len(parts) < 3:
            raise InputError(f"{where}: use passes.<name>.<param>=VALUE (e.g. passes.prune-blocks.keep=6)")
        entries = data.get("passes") or []
        if not isinstance(entries, list):
            raise InputError(f"{where}: the recipe's 'passes' is not a list")
        selector, rest = parts[1], parts[2:]
        if rest[0] == "name":
            raise InputError(f"{where}: a pass's name cannot be overridden; edit the recipe to change its passes")
        if selector.isdigit():
            index = int(selector)
            if index >= len(entries):
                raise InputError(f"{where}: the recipe has no pass at index {index} (it has {len(entries)})")
            matches = [entries[index]]
        else:
            matches = [e for e in entries if isinstance(e, dict) and e.get("name") == selector]
            if not matches:
                present = [str(e.get("name")) for e in entries if isinstance(e, dict)]
                from neoc import registry as _registry

                known = _registry.passes()
                hint = "" if selector in known else suggest(selector, present) or suggest(selector, known)
                raise InputError(f"{where}: the recipe has no pass named '{selector}'{hint} "
                                 f"(its passes: {', '.join(present) or 'none'})")
        for entry in matches:
            if not isinstance(entry, dict):
                raise InputError(f"{where}: pass entry {entry!r} is not a mapping")
            _set_path(entry, rest, value, where)
        return
    _set_path(data, parts, value, where)


def _set_path(node: dict, parts: list[str], value: Any, where: str) -> None:
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = LineDict()
            node[part] = child
            _record_origin(node, part, where)
        if not isinstance(child, dict):
            raise InputError(f"{where}: '{part}' is not a mapping")
        node = child
    node[parts[-1]] = value
    _record_origin(node, parts[-1], where)


def _record_origin(node: dict, key: str, where: str) -> None:
    if isinstance(node, LineDict):
        if not hasattr(node, "origins"):
            node.origins = {}
        node.origins[key] = where


# ---------------------------------------------------------------------- validation
def _loc(filename: str, mapping: Any, key: Any) -> str:
    """``file:line`` of ``key`` in ``mapping``, the override that set it, or the bare file name."""
    if isinstance(mapping, LineDict):
        origin = mapping.origin_of(key)
        if origin:
            return origin
        line = mapping.line_of(key)
        if line:
            return f"{filename}:{line}"
    return filename


def _from_command_line(mapping: Any, key: Any) -> bool:
    origin = mapping.origin_of(key) if isinstance(mapping, LineDict) else None
    return bool(origin) and origin.startswith("--")


def _resolve_path(value: Any, base: Path, where: str, kind: str) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: expected a path string, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base / path).resolve()
    if kind == "file" and not path.is_file():
        found = "is a folder, expected a file" if path.is_dir() else "file not found"
        raise InputError(f"{where}: {found}: {path}")
    if kind == "dir" and not path.is_dir():
        found = "is a file, expected a folder" if path.exists() else "folder not found"
        raise InputError(f"{where}: {found}: {path}")
    return path


def auto_profile(model: str, profiles: dict) -> str | None:
    wanted = "tiny" if model == DEFAULT_MODEL else "real"
    return wanted if wanted in profiles else None


def load_recipe(path: str | Path, model: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                check_eval_paths: bool = True) -> Recipe:
    """Read, override and validate a recipe. Raises :class:`InputError` naming ``file:line`` or the key.

    Relative ``eval:`` paths written in the recipe (or its profiles) resolve against the recipe's folder; those
    given with ``--set`` resolve against the current directory, like any other command-line path.
    """
    path = Path(path)
    filename = str(path)
    if path.is_dir():
        raise InputError(f"{filename}: is a folder; expected a recipe YAML file")
    if not path.is_file():
        raise InputError(f"{filename}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{filename}: cannot read recipe: {exc}") from None
    data = load_yaml(text, filename)
    if data is None:
        raise InputError(f"{filename}: the recipe is empty (expected a mapping with 'passes:')")
    if not isinstance(data, dict):
        raise InputError(f"{filename}:1: a recipe must be a mapping with 'passes:' "
                         f"(got a {type(data).__name__.replace('LineList', 'list')})")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise InputError(f"{_loc(filename, data, key)}: unknown top-level key '{key}'"
                             f"{suggest(key, TOP_LEVEL_KEYS)} (allowed: {', '.join(TOP_LEVEL_KEYS)})")

    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise InputError(f"{_loc(filename, data, 'profiles')}: 'profiles' must be a mapping of name -> overrides")
    sets = parse_set(overrides)
    # --model and --set model=... decide the profile; apply the profile, then the user's --set on top.
    chosen_model = model
    if not chosen_model:
        for key, value in sets:
            if key == "model":
                chosen_model = value
    chosen_model = chosen_model or data.get("model") or DEFAULT_MODEL
    profile_name = data.get("profile", "auto")
    profile_where = _loc(filename, data, "profile")
    for key, value in sets:
        if key == "profile":
            profile_name, profile_where = value, f"--set {key}"
    if profile_name is not None and not isinstance(profile_name, str):
        raise InputError(f"{profile_where}: 'profile' must be a profile name, got {profile_name!r}")
    if profile_name == "auto":
        profile_name = auto_profile(str(chosen_model), profiles)
    elif profile_name is not None and profile_name not in profiles:
        raise InputError(f"{profile_where}: unknown profile '{profile_name}'{suggest(profile_name, profiles)} "
                         f"(defined: {', '.join(map(str, profiles)) or 'none'})")
    data = copy.deepcopy(data)
    if profile_name is not None:
        overrides_of_profile = profiles[profile_name]
        if overrides_of_profile is None:
            overrides_of_profile = {}
        if not isinstance(overrides_of_profile, dict):
            raise InputError(f"{_loc(filename, profiles, profile_name)}: profile '{profile_name}' must be a mapping "
                             "of KEY: VALUE overrides")
        for key, value in overrides_of_profile.items():
            apply_set(data, str(key), value, f"{_loc(filename, overrides_of_profile, key)} (profile '{profile_name}')")
    for key, value in sets:
        if key != "profile":
            apply_set(data, key, value, f"--set {key}")
    if model:
        data["model"] = model
        _record_origin(data, "model", "--model")

    model_src = data.get("model") or DEFAULT_MODEL
    if not isinstance(model_src, str):
        raise InputError(f"{_loc(filename, data, 'model')}: 'model' must be a model source string "
                         f"(e.g. {DEFAULT_MODEL}), got {model_src!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"{_loc(filename, data, 'seed')}: 'seed' must be a non-negative integer, got {seed!r}")

    on_refuse = data.get("on_refuse", "fail")
    if on_refuse not in ON_REFUSE:
        raise InputError(f"{_loc(filename, data, 'on_refuse')}: 'on_refuse' must be one of "
                         f"{', '.join(ON_REFUSE)}, got {on_refuse!r}")

    eval_section = data.get("eval") or {}
    if not isinstance(eval_section, dict):
        raise InputError(f"{_loc(filename, data, 'eval')}: 'eval' must be a mapping with prompts/videos, "
                         f"got {eval_section!r}")
    for key in eval_section:
        if key not in EVAL_KEYS:
            raise InputError(f"{_loc(filename, eval_section, key)}: unknown key 'eval.{key}'"
                             f"{suggest(key, EVAL_KEYS)} (allowed: {', '.join(EVAL_KEYS)})")
    num_videos = eval_section.get("num_videos", DEFAULT_EVAL_VIDEOS)
    if isinstance(num_videos, bool) or not isinstance(num_videos, int) or not 0 <= num_videos <= 1000:
        raise InputError(f"{_loc(filename, eval_section, 'num_videos')}: eval.num_videos must be an integer in "
                         f"[0, 1000] (0 skips quality measurements), got {num_videos!r}")
    paths = {}
    for key, kind in (("prompts", "file"), ("videos", "dir")):
        if eval_section.get(key) is None:
            paths[key] = None
            continue
        from_cli = _from_command_line(eval_section, key) or _from_command_line(data, "eval")
        base = Path.cwd() if from_cli else path.resolve().parent
        paths[key] = _resolve_path(eval_section[key], base, f"{_loc(filename, eval_section, key)}: eval.{key}",
                                   kind if check_eval_paths else "any")

    raw_passes = data.get("passes")
    if raw_passes is None:
        raw_passes = []
    if not isinstance(raw_passes, list):
        raise InputError(f"{_loc(filename, data, 'passes')}: 'passes' must be a list of entries "
                         f"'- name: <pass>' with that pass's params, got {raw_passes!r}")
    lines = getattr(raw_passes, "lines", None) or [None] * len(raw_passes)
    entries = []
    for i, raw in enumerate(raw_passes):
        line = lines[i] if i < len(lines) else None
        where = f"{filename}:{line}" if line else f"{filename} passes[{i}]"
        if not isinstance(raw, dict):
            hint = ""
            if isinstance(raw, str):
                hint = f"; write '- name: {raw}'" if raw in registry.passes() else suggest(raw, registry.passes())
            raise InputError(f"{where}: each pass must be a mapping with a 'name' (got {raw!r}){hint}")
        if "name" not in raw:
            raise InputError(f"{where}: pass entry has no 'name' (keys: {', '.join(map(str, raw)) or 'none'})")
        name = raw["name"]
        if not isinstance(name, str):
            raise InputError(f"{_loc(filename, raw, 'name')}: pass name must be a string, got {name!r}")
        cls = registry.get_pass(name, where=f"{_loc(filename, raw, 'name')}: ")
        params = {k: v for k, v in raw.items() if k != "name"}

        def locate(key, raw=raw, name=name):
            return f"{_loc(filename, raw, key)}: pass '{name}'"

        config = build_config(cls.Config, params, f"{where}: pass '{name}'", locate=locate)
        entries.append(PassEntry(name, config, line))
    validate_order([e.name for e in entries], filename, [e.line for e in entries])

    target = None
    raw_target = data.get("target")
    if raw_target is not None:
        where = _loc(filename, data, "target")
        if isinstance(raw_target, str):
            raw_target = {"name": raw_target}
        if not isinstance(raw_target, dict) or "name" not in raw_target:
            raise InputError(f"{where}: 'target' must be a mapping with a 'name' "
                             f"(targets: {', '.join(registry.targets())}), got {raw_target!r}")
        tname = raw_target["name"]
        tcls = registry.get_target(str(tname), where=f"{_loc(filename, raw_target, 'name')}: ")

        def locate_target(key, raw=raw_target, name=tname):
            return f"{_loc(filename, raw, key)}: target '{name}'"

        tconfig = build_config(tcls.Config, {k: v for k, v in raw_target.items() if k != "name"},
                               f"{where}: target '{tname}'", locate=locate_target)
        target = TargetEntry(tcls.name, tconfig, data.line_of("target") if isinstance(data, LineDict) else None)

    return Recipe(path=filename, model=model_src, seed=seed, profile=profile_name, eval_prompts=paths["prompts"],
                  eval_videos=paths["videos"], passes=tuple(entries), target=target, raw=data,
                  eval_num_videos=num_videos, on_refuse=on_refuse)


def check_implemented(recipe: Recipe) -> None:
    """Refuse a recipe naming a pass or target whose algorithm is not built yet (exit 2, before anything runs)."""
    for entry in recipe.passes:
        if not registry.get_pass(entry.name).implemented:
            where = f"{recipe.path}:{entry.line}" if entry.line else recipe.path
            raise PassNotImplemented(f"{where}: pass '{entry.name}' is not implemented yet")
    if recipe.target is not None and not registry.get_target(recipe.target.name).implemented:
        where = f"{recipe.path}:{recipe.target.line}" if recipe.target.line else recipe.path
        raise PassNotImplemented(f"{where}: target '{recipe.target.name}' is not implemented yet")


def validate_order(names: list[str], filename: str = "recipe", lines: list | None = None) -> None:
    """Check every pass's ordering rules against the whole list, before anything runs."""
    lines = lines or [None] * len(names)
    table = registry.passes()

    def at(index: int) -> str:
        return f" (line {lines[index]})" if lines[index] else ""

    for i, name in enumerate(names):
        cls = table[name]
        where = f"{filename}:{lines[i]}" if lines[i] else filename
        earlier, later = names[:i], names[i + 1:]
        for req in cls.requires:
            if req not in earlier:
                raise InputError(f"{where}: pass '{name}' requires '{req}' earlier in the recipe")
        for dep in cls.runs_after:
            if dep in later:
                raise InputError(f"{where}: pass '{name}' must run after '{dep}', but '{dep}' comes later"
                                 f"{at(i + 1 + later.index(dep))}")
        for bad in cls.forbids_after:
            if bad in later:
                raise InputError(f"{where}: pass '{bad}'{at(i + 1 + later.index(bad))} may not follow '{name}' "
                                 f"('{name}' must be among the last of these passes)")
