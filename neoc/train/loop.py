"""The shared training loop every neoc training pass uses (tiny-model build, distillations, finetunes).

Usage (one process, or unchanged under ``torchrun --nproc_per_node N``)::

    objective = MyObjective(components)             # nn.Module: forward(batch) -> loss or (loss, {metrics})
    optimizer = torch.optim.AdamW(objective.parameters(), lr=3e-4)
    trainer = Trainer(objective, optimizer, warmup_constant(100), TrainConfig(steps=1000, out_dir="out/x"))
    result = trainer.fit(lambda ctx: make_batch(ctx.generator, ctx.rank))

Contract:

* ``batch_fn(ctx: StepContext)`` builds one micro-batch (on the CPU is fine: tensors in dicts, lists, tuples and
  dataclasses are moved to the training device). All randomness of a step should come from
  ``ctx.generator``, seeded from ``(seed, step, micro, rank)``: then resuming from a checkpoint replays exactly
  the data an uninterrupted run would have seen, and the final weights are bit-identical.
* The objective's ``forward`` returns the loss (a scalar tensor), optionally with a dict of float metrics
  (the same keys every step: metrics are averaged across ranks with collectives).
  Calling the (DDP-wrapped) objective, not its submodules, is what makes gradient synchronisation happen.
* Gradient accumulation: ``grad_accum`` micro-batches per optimizer step (DDP syncs only on the last).
* Mixed precision: ``autocast="auto"`` = bf16 on a CUDA device that supports it, off on CPU; ``"bf16"`` forces
  it (also on CPU, where it is often faster for convolutions); master weights stay fp32.
* ``checkpoint_every`` steps (and at the end) a checkpoint is written (see :mod:`neoc.train.checkpoint`);
  ``resume=True`` continues from the newest one in ``out_dir``.
* Logs: TensorBoard scalars in ``out_dir/tb`` and a tqdm bar (quiet when stderr is not a TTY or ``CI`` is set).
* ``prefetch=N``: a background thread builds the next ``N`` micro-batches while the device trains (for a host-bound
  ``batch_fn``, e.g. caption sampling + tokenising on a GPU machine). Each is built from its own step generator, so
  the batches, losses and weights are the same as without it; ``batch_fn`` must then not read the model.
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from neoc.train import checkpoint as ckpt
from neoc.train import distributed as dist_utils

LRSchedule = Callable[[int], float]


# ---- learning-rate schedules (multipliers of each param group's base LR) --------------------------------
def constant() -> LRSchedule:
    return lambda step: 1.0


def warmup_constant(warmup_steps: int) -> LRSchedule:
    """Linear warm-up over ``warmup_steps``, then constant: extending a run is the same as resuming it."""
    return lambda step: min(1.0, (step + 1) / max(1, warmup_steps))


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> LRSchedule:
    """Linear warm-up, then cosine decay to ``min_ratio`` at ``total_steps``."""
    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return schedule


# ---- config / context / result -------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """What one training run does. ``out_dir=None`` trains without checkpoints or TensorBoard."""

    steps: int
    out_dir: str | os.PathLike | None = None
    grad_accum: int = 1
    seed: int = 0
    grad_clip: float | None = 1.0
    checkpoint_every: int = 0          # 0: only the final checkpoint
    keep_checkpoints: int = 2
    resume: bool = True
    log_every: int = 10
    autocast: str = "auto"             # "auto" | "bf16" | "off" (no fp16: it would need a loss scaler)
    strategy: str = "ddp"              # "ddp" | "fsdp" | "none" (only matters under torchrun)
    find_unused_parameters: bool = False
    ema_decay: float | None = None     # keep EMA weights (checkpointed) when set
    progress: bool | None = None       # None: a bar when stderr is a TTY and CI is unset
    tensorboard: bool = True
    name: str = "train"
    device: str | None = None          # None: cuda:LOCAL_RANK if available, else cpu
    prefetch: int = 0                  # micro-batches built ahead in a background thread (0: built in the step)

    def __post_init__(self):
        if self.steps < 0 or self.grad_accum < 1:
            raise ValueError(f"TrainConfig: steps must be >= 0 and grad_accum >= 1 (got {self.steps}, {self.grad_accum})")
        if self.autocast not in ("auto", "bf16", "off"):
            raise ValueError(f"TrainConfig.autocast: {self.autocast!r} (expected auto, bf16 or off)")
        if self.strategy not in ("ddp", "fsdp", "none"):
            raise ValueError(f"TrainConfig.strategy: {self.strategy!r} (expected ddp, fsdp or none)")
        if self.prefetch < 0:
            raise ValueError(f"TrainConfig.prefetch must be >= 0 (got {self.prefetch})")


@dataclass
class StepContext:
    """Passed to ``batch_fn``: which optimizer step / micro-batch / rank, and the step's own generator."""

    step: int
    micro: int
    rank: int
    world_size: int
    device: torch.device
    generator: torch.Generator


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    wall_seconds: float
    final_loss: float                   # mean loss over the last logged window (all ranks)
    wall_seconds_total: float = 0.0     # including the runs this one resumed
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss) per log window
    checkpoint: str | None = None


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors inside dicts / lists / tuples / dataclasses moved to ``device`` (a no-op on CPU)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: move_to_device(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


class BatchPrefetcher:
    """Builds the micro-batches of steps ``start .. steps-1`` in order in a daemon thread, ``depth`` ahead, each from
    the :class:`StepContext` the trainer would make for it; ``__call__(ctx)`` hands over the one for ``ctx``.
    An exception in ``batch_fn`` is raised in the training thread at the step that needed the batch."""

    def __init__(self, batch_fn: Callable[[StepContext], Any], make_ctx: Callable[[int, int], StepContext],
                 start: int, steps: int, grad_accum: int, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="batch-prefetch", daemon=True,
                                        args=(batch_fn, make_ctx, start, steps, grad_accum))
        self._thread.start()

    def _work(self, batch_fn, make_ctx, start, steps, grad_accum) -> None:
        for step in range(start, steps):
            for micro in range(grad_accum):
                try:
                    item = (step, micro, batch_fn(make_ctx(step, micro)), None)
                except BaseException as err:  # handed to the training thread
                    item = (step, micro, None, err)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set() or item[3] is not None:
                    return

    def __call__(self, ctx: StepContext) -> Any:
        step, micro, batch, err = self._queue.get()
        if err is not None:
            raise err
        if (step, micro) != (ctx.step, ctx.micro):
            raise RuntimeError(f"prefetched batch for step {step}.{micro}, the trainer asked for {ctx.step}.{ctx.micro}")
        return batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A 63-bit seed unique to (seed, step, micro, rank), independent of how the run got there."""
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, np.uint32).astype(np.uint64)
               .dot(np.array([1 << 32, 1], dtype=np.uint64)) & np.uint64((1 << 63) - 1))


def _progress_enabled(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


class Trainer:
    """Optimise ``model`` (an objective module returning its loss) with ``optimizer``.

    ``optimizer`` is an optimizer, or a factory ``module -> optimizer`` (required with FSDP, which replaces the
    parameters when it shards them). ``lr_schedule(step)`` multiplies each param group's initial LR (None:
    constant). Under ``torchrun`` the model is wrapped in DDP (or sharded with FSDP2) on construction;
    :attr:`module` is the plain module, :attr:`model` the wrapped one.
    """

    def __init__(self, model: nn.Module,
                 optimizer: torch.optim.Optimizer | Callable[[nn.Module], torch.optim.Optimizer],
                 lr_schedule: LRSchedule | None, config: TrainConfig):
        self.config = config
        self.info = dist_utils.init_distributed(config.device)
        self.module = model.to(self.info.device)
        if self._sharded() and isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError("FSDP replaces the parameters when sharding: pass an optimizer factory "
                             "(lambda module: torch.optim.AdamW(module.parameters(), ...)), not an optimizer")
        self.model = dist_utils.wrap_model(self.module, self.info, config.strategy, config.find_unused_parameters)
        if not isinstance(optimizer, torch.optim.Optimizer):
            optimizer = optimizer(self.module)  # built on the (possibly sharded) parameters
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule or constant()
        self.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, self.base_lrs):
            group["initial_lr"] = lr
        self.out_dir = Path(config.out_dir) if config.out_dir is not None else None
        self.step = 0
        self.losses: list[tuple[int, float]] = []
        self.ema: dict[str, torch.Tensor] | None = None
        self.previous_wall_seconds = 0.0  # wall time of the runs a resumed run continues
        self._fit_start = time.time()
        if config.ema_decay is not None:
            if config.strategy == "fsdp" and self.info.distributed:
                raise ValueError("TrainConfig.ema_decay is not supported with FSDP")
            self.ema = {k: v.detach().clone().float() for k, v in self.module.state_dict().items()
                        if v.is_floating_point()}

    # ---- state -----------------------------------------------------------------------------------------
    def _sharded(self) -> bool:
        return self.config.strategy == "fsdp" and self.info.distributed

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """Full fp32 state dict of the plain module (gathered from all ranks under FSDP)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if not self._sharded():
            return self.module.state_dict()
        return get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optimizer_state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=self._sharded())
        return get_optimizer_state_dict(self.module, self.optimizer, options=options)

    def ema_state_dict(self) -> dict[str, torch.Tensor] | None:
        """EMA weights merged into a full state dict (non-float buffers from the live model)."""
        if self.ema is None:
            return None
        state = dict(self.module.state_dict())
        state.update(self.ema)
        return state

    def save(self) -> Path | None:
        if self.out_dir is None:
            return None
        model_state = self.model_state_dict()  # collective under FSDP: every rank calls it
        optim_state = self.optimizer_state_dict()
        path = None
        if self.info.is_main:
            trainer_state = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()},
                             "lr_schedule": {"base_lrs": self.base_lrs}, "losses": self.losses,
                             "wall_seconds_total": self.previous_wall_seconds + time.time() - self._fit_start,
                             "world_size": self.info.world_size}
            path = ckpt.save_checkpoint(self.out_dir, self.step, model_state, optim_state, trainer_state,
                                        self.ema, keep=self.config.keep_checkpoints)
        dist_utils.barrier()
        return path

    def load(self, folder: str | os.PathLike) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        state = ckpt.load_checkpoint(folder)
        options = StateDictOptions(full_state_dict=True, strict=True)
        if self._sharded():
            set_model_state_dict(self.module, state["model"], options=options)
        else:
            self.module.load_state_dict(state["model"], strict=True)
        set_optimizer_state_dict(self.module, self.optimizer, state["optimizer"], options=options)
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError(f"{folder}: checkpoint has no EMA weights but the config keeps them")
            self.ema = {k: state["ema"][k].to(self.info.device).clone() for k in self.ema}
        tensors, rest = state["rng"]
        ckpt.restore_rng(tensors, rest)
        self.step = state["step"]
        self.losses = [tuple(x) for x in state["trainer"].get("losses", [])]
        self.previous_wall_seconds = float(state["trainer"].get("wall_seconds_total", 0.0))

    # ---- one step ----------------------------------------------------------------------------------------
    def _autocast(self):
        mode, device = self.config.autocast, self.info.device
        if mode == "off" or (mode == "auto" and not (device.type == "cuda" and torch.cuda.is_bf16_supported())):
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for name, value in self.module.state_dict().items():
                if name in self.ema:
                    self.ema[name].lerp_(value.detach().float(), 1.0 - decay)

    def _context(self, step: int, micro: int) -> StepContext:
        gen = torch.Generator().manual_seed(step_seed(self.config.seed, step, micro, self.info.rank))
        return StepContext(step, micro, self.info.rank, self.info.world_size, self.info.device, gen)

    def train_step(self, batch_fn: Callable[[StepContext], Any]) -> tuple[float, dict[str, float], float]:
        """One optimizer step over ``grad_accum`` micro-batches -> (loss, metrics, grad norm)."""
        cfg = self.config
        scale = self.lr_schedule(self.step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * scale
        self.model.train()
        total_loss, metric_sums = 0.0, {}
        for micro in range(cfg.grad_accum):
            batch = move_to_device(batch_fn(self._context(self.step, micro)), self.info.device)
            last = micro == cfg.grad_accum - 1
            sync = nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with self._autocast():
                    out = self.model(batch)
                loss, metrics = (out if isinstance(out, tuple) else (out, {}))
                (loss.float() / cfg.grad_accum).backward()
            total_loss += float(loss.detach()) / cfg.grad_accum
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v) / cfg.grad_accum
        params = [p for p in self.module.parameters() if p.grad is not None]
        if cfg.grad_clip is not None and params:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # DTensor under FSDP
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self._update_ema()
        return total_loss, metric_sums, grad_norm

    # ---- the loop ----------------------------------------------------------------------------------------
    def fit(self, batch_fn: Callable[[StepContext], Any]) -> TrainResult:
        cfg = self.config
        start_time = self._fit_start = time.time()
        resumed_from = 0
        if cfg.resume and self.out_dir is not None:
            last = ckpt.latest_checkpoint(self.out_dir)
            if last is not None:
                self.load(last)
                resumed_from = self.step
        if resumed_from == 0:
            torch.manual_seed(cfg.seed + self.info.rank)  # global RNG (dropout etc.); restored on resume
        writer = None
        if self.out_dir is not None and cfg.tensorboard and self.info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out_dir / "tb"))
        bar = None
        if self.info.is_main and _progress_enabled(cfg.progress):
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=cfg.name, dynamic_ncols=True, file=sys.stderr)
        window_loss, window_metrics, window_n, window_start = 0.0, {}, 0, time.time()
        last_path = None
        prefetcher = None
        if cfg.prefetch > 0 and self.step < cfg.steps:
            prefetcher = BatchPrefetcher(batch_fn, self._context, self.step, cfg.steps, cfg.grad_accum, cfg.prefetch)
            batch_fn = prefetcher
        try:
            while self.step < cfg.steps:
                loss, metrics, grad_norm = self.train_step(batch_fn)
                window_loss += loss
                window_n += 1
                for k, v in metrics.items():
                    window_metrics[k] = window_metrics.get(k, 0.0) + v
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    mean_loss = dist_utils.all_reduce_mean(window_loss / window_n, self.info.device)
                    means = {k: dist_utils.all_reduce_mean(v / window_n, self.info.device)
                             for k, v in sorted(window_metrics.items())}
                    self.losses.append((self.step, mean_loss))
                    if writer is not None:
                        writer.add_scalar(f"{cfg.name}/loss", mean_loss, self.step)
                        writer.add_scalar(f"{cfg.name}/lr", self.optimizer.param_groups[0]["lr"], self.step)
                        writer.add_scalar(f"{cfg.name}/grad_norm", grad_norm, self.step)
                        writer.add_scalar(f"{cfg.name}/seconds_per_step", (time.time() - window_start) / window_n,
                                          self.step)
                        for k, v in means.items():
                            writer.add_scalar(f"{cfg.name}/{k}", v, self.step)
                    window_loss, window_metrics, window_n, window_start = 0.0, {}, 0, time.time()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    last_path = self.save()
            if self.out_dir is not None:
                latest = ckpt.latest_checkpoint(self.out_dir)
                if latest is None or ckpt.checkpoint_step(latest) != self.step:
                    latest = self.save()
                last_path = latest
        finally:
            if prefetcher is not None:
                prefetcher.close()
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        final = self.losses[-1][1] if self.losses else float("nan")
        return TrainResult(steps=self.step, resumed_from=resumed_from, wall_seconds=time.time() - start_time,
                           final_loss=final, losses=list(self.losses),
                           wall_seconds_total=self.previous_wall_seconds + time.time() - start_time,
                           checkpoint=str(last_path) if last_path is not None else None)
