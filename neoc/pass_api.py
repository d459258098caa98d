"""The pass contract: typed config, preconditions, run, postconditions, ordering rules, metrics, artifacts.

Borrowed shape: torch.fx passes (``requires -> call -> ensures``, a result with ``modified``), Olive (a typed
config per pass, a registry by name), ModelOpt (a pass declares which passes must precede it or may not follow
it), ExecuTorch-QNN (one small pass per file).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Iterable

import attrs

from neoc.errors import CheckFailed, PassNotImplemented


@attrs.frozen
class NoConfig:
    """A pass without parameters."""


@attrs.define
class EvalData:
    """Data the passes measure quality on (recipe ``eval:``)."""

    prompts: Path | None = None
    videos: Path | None = None


@attrs.define
class PassContext:
    """What a pass may use besides the pipeline: seed, its own artifact folder, eval data, logging, progress."""

    seed: int
    work_dir: Path
    eval: EvalData = attrs.field(factory=EvalData)
    profile: str = "tiny"
    quiet: bool = False
    log: logging.Logger = attrs.field(factory=lambda: logging.getLogger("neoc"))
    previous: tuple[str, ...] = ()  # names of passes that ran before this one
    extras: dict = attrs.field(factory=dict)  # shared measurements (e.g. baseline quality) keyed by name

    def progress(self, iterable: Iterable, desc: str, total: int | None = None):
        from neoc.progress import progress

        return progress(iterable, desc=desc, total=total, quiet=self.quiet)

    def artifact(self, name: str) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir / name


@attrs.define
class PassResult:
    pipeline: Any
    modified: bool
    metrics: dict[str, Any] = attrs.field(factory=dict)
    artifacts: dict[str, str] = attrs.field(factory=dict)  # name -> path relative to the run folder


class Pass:
    """Base class. Subclasses set the class attributes and implement :meth:`run`.

    Ordering rules, checked for the whole recipe before anything runs:

    * ``requires``: passes that must appear earlier in the recipe;
    * ``runs_after``: passes that, when present, must appear earlier;
    * ``forbids_after``: passes that may not appear later (e.g. nothing structural after quantisation).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    implemented: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ()
    runs_after: ClassVar[tuple[str, ...]] = ()
    forbids_after: ClassVar[tuple[str, ...]] = ()
    #: semantics-preserving passes verify ``max_abs_diff`` on the same inputs themselves
    semantics_preserving: ClassVar[bool] = False
    #: paper section, shown by ``neoc explain``
    paper: ClassVar[str] = ""

    def __init__(self, config: Any):
        self.config = config

    # -- contract -------------------------------------------------------------------------------
    def check_preconditions(self, pipeline, ctx: PassContext) -> None:
        """Raise :class:`CheckFailed` with a reason when the pass cannot apply to ``pipeline``."""

    def run(self, pipeline, ctx: PassContext) -> PassResult:
        raise PassNotImplemented(f"pass '{self.name}' is not implemented yet")

    def check_postconditions(self, pipeline, result: PassResult, ctx: PassContext) -> None:
        """Raise :class:`CheckFailed` when the result breaks what the pass promises."""

    def analyze(self, pipeline) -> None:
        """Apply the pass's *architectural* effect in place, without training (for ``neoc analyze --recipe``).

        Default: no architectural change (deployment passes keep the same parameters and NFE).
        """

    # -- driver ---------------------------------------------------------------------------------
    def apply(self, pipeline, ctx: PassContext) -> tuple[PassResult, float]:
        if not self.implemented:
            raise PassNotImplemented(f"pass '{self.name}' is not implemented yet")
        start = time.perf_counter()
        self.check_preconditions(pipeline, ctx)
        result = self.run(pipeline, ctx)
        if not isinstance(result, PassResult):
            raise CheckFailed(f"pass '{self.name}' returned {type(result).__name__}, not PassResult")
        self.check_postconditions(result.pipeline, result, ctx)
        return result, time.perf_counter() - start
