"""Model sources (CONTRACT "Model sources"): builtin names, released Pyramid-Flow folders, run folders."""

from __future__ import annotations

from pathlib import Path

from neoc.errors import InputError
from neoc.ir.pipeline import Pipeline
from neoc.ir.runfolder import is_pipeline_folder, load_pipeline

BUILTINS = ("builtin:pyramid-tiny", "builtin:pyramid-flow-sd3", "builtin:bidit-tiny")
RELEASED_MARKERS = ("diffusion_transformer_384p", "diffusion_transformer_768p", "causal_video_vae")


def classify(source: str) -> tuple[str, Path | None]:
    """``(kind, path)`` with kind in builtin | run | released; raises InputError for anything else."""
    if not isinstance(source, str) or not source:
        raise InputError(f"model source must be a non-empty string, got {source!r}")
    if source.startswith("builtin:"):
        if source not in BUILTINS:
            raise InputError(f"unknown model source '{source}' (builtins: {', '.join(BUILTINS)})")
        return "builtin", None
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"model source '{source}': no such folder (expected a builtin name "
                         f"({', '.join(BUILTINS)}), a released Pyramid-Flow folder or a neoc run folder)")
    if not path.is_dir():
        raise InputError(f"model source '{source}': is a file; expected a folder")
    if is_pipeline_folder(path / "pipeline") or is_pipeline_folder(path):
        return "run", path
    if any((path / m).is_dir() for m in RELEASED_MARKERS):
        return "released", path
    raise InputError(f"model source '{source}': folder is neither a neoc run folder (pipeline/manifest.json) "
                     f"nor a released Pyramid-Flow folder ({', '.join(RELEASED_MARKERS)}/)")


def load_source(source: str, *, device: str = "cpu", random_init: bool = False) -> Pipeline:
    """Build the pipeline a source names. ``device='meta'`` builds shapes only (analysis)."""
    kind, path = classify(source)
    if kind == "run":
        folder = path / "pipeline" if is_pipeline_folder(path / "pipeline") else path
        return load_pipeline(folder)
    if kind == "released":
        from neoc.zoo.released import load_released_folder

        return load_released_folder(path, device=device)
    from neoc.zoo import builtin

    return builtin.build(source, device=device, random_init=random_init)
