"""The target contract: a typed config and ``build(pipeline, ctx) -> TargetResult``."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from neoc.errors import PassNotImplemented
from neoc.pass_api import NoConfig, PassContext


@attrs.define
class TargetResult:
    graphs: list[dict[str, Any]] = attrs.field(factory=list)  # CONTRACT report.json target.graphs entries
    notes: list[str] = attrs.field(factory=list)


class Target:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    implemented: ClassVar[bool] = True

    def __init__(self, config: Any):
        self.config = config

    def build(self, pipeline, ctx: PassContext) -> TargetResult:
        raise PassNotImplemented(f"target '{self.name}' is not implemented yet")

    def host_pipeline(self, pipeline, result: TargetResult, ctx: PassContext):
        """The built graphs runnable on this machine (``generate(prompt, seed)``, ``nfe()``, ``summary()``), so the
        run times the compiled artifact rather than the torch pipeline it came from; None when the target's
        output cannot run here (then the torch pipeline is timed)."""
        return None
