"""Progress bars (rich) that go quiet in CI or with ``--quiet``."""

from __future__ import annotations

import os
import sys
from typing import Iterable

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    return _QUIET or os.environ.get("CI", "").lower() in ("1", "true") or not sys.stderr.isatty()


def progress(iterable: Iterable, desc: str, total: int | None = None, quiet: bool = False):
    """Wrap ``iterable`` in a progress bar unless quiet; always returns an iterable of the same items."""
    if quiet or is_quiet():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=sys.stderr)
