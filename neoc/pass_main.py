"""Run one training pass alone on a model source, in one process or under ``torchrun`` (``python -m
neoc.passes.<name> ...``). Rank 0 writes ``OUT/pipeline`` (unless ``--no-pipeline``) and ``OUT/metrics.json``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

import torch


def standalone_main(pass_cls, config_cls, module: str, summary_keys: Sequence[str], argv: list[str] | None = None,
                    eval_option: str | None = None, seed_before_load: bool = False) -> int:
    """``eval_option``: "prompts" or "videos" adds that ``--OPTION PATH`` (-> ``ctx.eval``); ``seed_before_load``
    seeds torch before building the model (``--random-init`` under torchrun: every rank builds the same weights)."""
    import yaml

    from neoc import sources
    from neoc.config import build_config
    from neoc.errors import NeocError
    from neoc.ir.runfolder import save_pipeline
    from neoc.pass_api import EvalData, PassContext
    from neoc.train import distributed as dist_utils

    name = pass_cls.name
    parser = argparse.ArgumentParser(prog=f"python -m {module}",
                                     description=f"Run the {name} pass alone (torchrun-ready).")
    parser.add_argument("--model", required=True, help="model source (builtin:..., a released folder, a run)")
    parser.add_argument("--random-init", action="store_true", help="random weights (builtin sources)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (training checkpoints resume here)")
    parser.add_argument("--seed", type=int, default=0)
    if eval_option:
        parser.add_argument(f"--{eval_option}", type=Path, default=None, help=f"evaluation {eval_option} (eval.{eval_option})")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a pass parameter (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--no-pipeline", action="store_true", help="write only metrics.json (no pipeline folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    params = {}
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        params[key] = yaml.safe_load(value)
    info = dist_utils.init_distributed()
    try:
        config = build_config(config_cls, params, "--set")
        if seed_before_load:
            torch.manual_seed(args.seed)
        pipeline = sources.load_source(args.model, random_init=args.random_init)
        eval_data = EvalData(**{eval_option: getattr(args, eval_option)}) if eval_option else EvalData()
        ctx = PassContext(seed=args.seed, work_dir=args.out / "artifacts", eval=eval_data, quiet=not info.is_main)
        result, seconds = pass_cls(config).apply(pipeline, ctx)
        if info.is_main:
            if not args.no_pipeline:
                save_pipeline(result.pipeline, args.out / "pipeline")
            (args.out / "metrics.json").write_text(json.dumps({"seconds": seconds, **result.metrics}, indent=2,
                                                              default=str))
            print(json.dumps({k: result.metrics.get(k) for k in summary_keys}, default=str))
    except NeocError as exc:
        print(f"error: {exc}")
        return exc.exit_code
    finally:
        dist_utils.cleanup()
    return 0
