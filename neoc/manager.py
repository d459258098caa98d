"""The pass manager: validate the whole order, run passes with checks, cache by content, record lineage.

Cache key = sha256(pass name, config hash, input pipeline content hash, neoc version). After a pass finishes,
its output pipeline is saved under ``passes/<index>-<name>/pipeline`` and ``pass.json`` is written last (the
completion marker). With ``resume=True`` a pass whose ``pass.json`` carries the same key and whose saved output
still verifies is loaded instead of re-run; a killed run therefore resumes at the first unfinished pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import attrs

from neoc import __version__, registry
from neoc.config import config_hash, config_to_dict
from neoc.errors import CheckFailed, InputError, NeocError
from neoc.ir.pipeline import Pipeline
from neoc.ir.runfolder import is_pipeline_folder, load_pipeline, pipeline_hash, save_pipeline
from neoc.pass_api import EvalData, PassContext
from neoc.recipe import PassEntry, validate_order

log = logging.getLogger("neoc")


def cache_key(name: str, cfg_hash: str, input_hash: str) -> str:
    text = json.dumps([name, cfg_hash, input_hash, __version__])
    return hashlib.sha256(text.encode()).hexdigest()


@attrs.define
class PassRecord:
    name: str
    status: str  # done | skipped | failed
    seconds: float
    metrics: dict = attrs.field(factory=dict)
    config: dict = attrs.field(factory=dict)
    config_hash: str = ""
    input_hash: str = ""
    output_hash: str = ""
    cache_key: str = ""
    cached: bool = False
    artifacts: dict = attrs.field(factory=dict)
    error: str | None = None
    cpu_seconds: float | None = None  # process CPU time (all threads): the pass's cost on a loaded machine
    reason: str | None = None  # why a pass was skipped (e.g. its preconditions refused this pipeline)

    def to_report(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 3),
                "metrics": self.metrics, "config": self.config, "cached": self.cached,
                **({"cpu_seconds": round(self.cpu_seconds, 3)} if self.cpu_seconds is not None else {}),
                "artifacts": self.artifacts, **({"error": self.error} if self.error else {}),
                **({"reason": self.reason} if self.reason else {})}

    def lineage(self) -> dict[str, Any]:
        return {"pass": self.name, "config_hash": self.config_hash, "input": self.input_hash,
                "output": self.output_hash, "cache_key": self.cache_key, "artifacts": self.artifacts}


class PassManager:
    def __init__(self, entries: list[PassEntry] | tuple[PassEntry, ...], run_dir: Path, seed: int = 0,
                 eval_data: EvalData | None = None, profile: str = "tiny", quiet: bool = False,
                 resume: bool = False, on_record: Callable[[PassRecord], None] | None = None,
                 on_refuse: str = "fail"):
        self.entries = list(entries)
        validate_order([e.name for e in self.entries])  # before anything runs
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.eval_data = eval_data or EvalData()
        self.profile = profile
        self.quiet = quiet
        self.resume = resume
        self.on_record = on_record
        self.on_refuse = on_refuse  # "skip": a pass whose preconditions fail is recorded as skipped, not raised
        self.records: list[PassRecord] = []
        self.extras: dict = {}

    def pass_dir(self, index: int, name: str) -> Path:
        return self.run_dir / "passes" / f"{index:02d}-{name}"

    def _cached(self, folder: Path, key: str) -> dict | None:
        marker = folder / "pass.json"
        if not (self.resume and marker.is_file() and is_pipeline_folder(folder / "pipeline")):
            return None
        try:
            info = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if info.get("cache_key") != key or info.get("status") != "done":
            return None
        return info

    def run(self, pipeline: Pipeline) -> Pipeline:
        for index, entry in enumerate(self.entries):
            cls = registry.get_pass(entry.name)
            folder = self.pass_dir(index, entry.name)
            input_hash = pipeline_hash(pipeline)
            cfg_hash = config_hash(entry.config)
            key = cache_key(entry.name, cfg_hash, input_hash)
            cached = self._cached(folder, key)
            if cached is not None:
                try:
                    pipeline = load_pipeline(folder / "pipeline")
                except InputError as exc:  # corrupt snapshot: run the pass again
                    log.warning("cached output of %s is unusable (%s); re-running", entry.name, exc)
                else:
                    record = PassRecord(entry.name, "done", cached.get("seconds", 0.0), cached.get("metrics", {}),
                                        config_to_dict(entry.config), cfg_hash, input_hash,
                                        cached.get("output_hash", ""), key, cached=True,
                                        artifacts=cached.get("artifacts", {}), cpu_seconds=cached.get("cpu_seconds"))
                    log.info("pass %s: cached (key %s)", entry.name, key[:12])
                    self._record(record)
                    continue
            ctx = PassContext(seed=self.seed, work_dir=folder / "artifacts", eval=self.eval_data,
                              profile=self.profile, quiet=self.quiet, log=log,
                              previous=tuple(e.name for e in self.entries[:index]), extras=self.extras)
            log.info("pass %s: running (%s)", entry.name, json.dumps(config_to_dict(entry.config)))
            instance = cls(entry.config)
            start = time.perf_counter()
            cpu_start = time.process_time()
            if self.on_refuse == "skip":
                try:
                    instance.check_preconditions(pipeline, ctx)
                except CheckFailed as exc:
                    log.info("pass %s: refused (%s); skipped", entry.name, exc)
                    record = PassRecord(entry.name, "skipped", time.perf_counter() - start,
                                        {"refused": str(exc)}, config_to_dict(entry.config), cfg_hash, input_hash,
                                        input_hash, key, reason=f"preconditions do not hold: {exc}")
                    self._record(record)
                    continue
            try:
                result, seconds = instance.apply(pipeline, ctx)
            except NeocError as exc:
                record = PassRecord(entry.name, "failed", time.perf_counter() - start, {},
                                    config_to_dict(entry.config), cfg_hash, input_hash, "", key, error=str(exc))
                self._record(record)
                raise
            except Exception as exc:
                record = PassRecord(entry.name, "failed", time.perf_counter() - start, {},
                                    config_to_dict(entry.config), cfg_hash, input_hash, "", key,
                                    error=f"{type(exc).__name__}: {exc}")
                self._record(record)
                raise
            pipeline = result.pipeline
            output_hash = pipeline_hash(pipeline)
            if not result.modified and output_hash != input_hash:
                raise CheckFailed(f"pass '{entry.name}' reported modified=False but changed the pipeline")
            pipeline.info.setdefault("lineage", []).append(
                {"pass": entry.name, "config_hash": cfg_hash, "input": input_hash, "output": output_hash})
            output_hash = pipeline_hash(pipeline)
            artifacts = {k: os.path.relpath(v, self.run_dir) if os.path.isabs(str(v)) else str(v)
                         for k, v in result.artifacts.items()}
            record = PassRecord(entry.name, "done" if result.modified else "skipped", seconds, result.metrics,
                                config_to_dict(entry.config), cfg_hash, input_hash, output_hash, key,
                                artifacts=artifacts, cpu_seconds=time.process_time() - cpu_start)
            save_pipeline(pipeline, folder / "pipeline")
            _write_json_atomic(folder / "pass.json", {**record.to_report(), "cache_key": key,
                                                      "input_hash": input_hash, "output_hash": output_hash})
            self._record(record)
        return pipeline

    def _record(self, record: PassRecord) -> None:
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
