"""Prompt corpora: read prompt files (one prompt per line) and split them train / eval.

Used by replace-text-encoder (distil on train prompts, report cosine/MSE on ``eval.prompts``, which are
never trained on) and by calibration. The shared corpus is the VBench prompt lists in
``<data root>/prompts`` (shared/data/README.md; Apache-2.0).

Split rule (deterministic, never overlapping): a prompt is "eval" when the first 8 hex digits of the
SHA-1 of its whitespace-normalised, lower-cased text, read as an integer, fall below
``eval_fraction * 16**8``. The split depends only on the text, so duplicates (across files too)
always land on the same side, and the rule needs no seed and no global shuffle.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

from neoc.data.videos import default_data_root
from neoc.errors import InputError

DEFAULT_EVAL_FRACTION = 0.1


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file. InputError if missing, unreadable or empty."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: prompt file does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: prompt file is not UTF-8 text (byte {err.start})") from err
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"{path}: prompt file holds no prompts (one prompt per line expected)")
    return prompts


def normalise_prompt(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def prompt_split(prompt: str, eval_fraction: float = DEFAULT_EVAL_FRACTION) -> str:
    """"eval" or "train" for one prompt (see module docstring)."""
    digest = hashlib.sha1(normalise_prompt(prompt).encode("utf-8")).hexdigest()
    return "eval" if int(digest[:8], 16) < eval_fraction * 16 ** 8 else "train"


def split_prompts(prompts: Iterable[str], split: str, eval_fraction: float = DEFAULT_EVAL_FRACTION) -> list[str]:
    """Prompts of one split ("train", "eval" or "all"), order kept, exact duplicates dropped."""
    if split not in ("train", "eval", "all"):
        raise InputError(f"split={split!r}: expected 'train', 'eval' or 'all'")
    seen: set[str] = set()
    chosen: list[str] = []
    for prompt in prompts:
        key = normalise_prompt(prompt)
        if key in seen:
            continue
        seen.add(key)
        if split == "all" or prompt_split(prompt, eval_fraction) == split:
            chosen.append(prompt)
    return chosen


def load_prompt_corpus(folder: str | os.PathLike | None = None, split: str = "all",
                       eval_fraction: float = DEFAULT_EVAL_FRACTION) -> list[str]:
    """Every ``*.txt`` prompt file of ``folder`` (default: ``<data root>/prompts``), merged, one split."""
    folder = Path(folder) if folder is not None else default_data_root() / "prompts"
    if not folder.is_dir():
        raise InputError(f"{folder}: prompt folder does not exist (set NEOC_DATA_DIR or pass a folder)")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise InputError(f"{folder}: no *.txt prompt files in this folder")
    prompts: list[str] = []
    for path in files:
        prompts.extend(read_prompts(path))
    return split_prompts(prompts, split, eval_fraction)
