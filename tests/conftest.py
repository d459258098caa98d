"""Shared test fixtures: the CLI in-process (typer's CliRunner) and as a real subprocess, and recipe files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _single_intra_op_thread():
    """Every test runs with one torch intra-op thread: results do not depend on the core count, and on a shared
    2-core machine oversubscribed OpenMP threads made small-op graphs ~10-25x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _cli_runner():
    from typer.testing import CliRunner

    try:  # click < 8.2 mixes stderr into stdout unless asked not to; 8.2+ always keeps both
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


@pytest.fixture
def invoke():
    """``invoke("run", "r.yaml", "--out", "x")`` -> click Result (``exit_code``, ``stdout``, ``stderr``)."""
    from neoc.cli import app

    runner = _cli_runner()

    def _invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return _invoke


@pytest.fixture
def neoc_subprocess():
    """Run ``python -m neoc ARGS`` for real (the installed entry point's code path) -> CompletedProcess."""

    def _run(*args: str, cwd: Path | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("NEOC_DEBUG", None)
        return subprocess.run([sys.executable, "-m", "neoc", *[str(a) for a in args]], cwd=cwd or REPO_ROOT,
                              env=env, capture_output=True, text=True, timeout=timeout)

    return _run


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    """An empty folder for recipe files (kept apart from the working directory the CLI runs in)."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    return folder


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """An empty current directory for the command; tests assert it stays empty after bad input."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def write_recipe(recipe_dir: Path):
    """``write_recipe(text, name="bad.yaml")`` -> path; ``text`` is dedented; bytes are written as is."""

    def _write(text: str | bytes, name: str = "bad.yaml") -> Path:
        path = recipe_dir / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write
