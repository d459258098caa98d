"""Process-group helpers for the shared training loop: one process, or ``torchrun`` with DDP / FSDP.

``torchrun --nproc_per_node N -m some.module`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and opens the default process
group with ``nccl`` on CUDA and ``gloo`` on CPU. Without those variables everything runs as rank 0 of 1 and
no process group is created, so the same training script works plain and under ``torchrun``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, local rank, world size and the device it trains on."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Open the default process group when launched by ``torchrun`` (idempotent); else rank 0 of 1.

    ``device``: ``None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device is None:
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """Mean of a Python float over ranks (the float itself when not distributed)."""
    if not is_initialized():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def cleanup() -> None:
    """Destroy the default process group if this process opened one."""
    if is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, info: DistInfo, strategy: str = "ddp",
               find_unused_parameters: bool = False) -> torch.nn.Module:
    """Wrap for data-parallel training: ``ddp`` (replicated) or ``fsdp`` (sharded, FSDP2 ``fully_shard``).

    Returns ``model`` unchanged when the world has one process or ``strategy == "none"``.
    """
    if not info.distributed or strategy == "none":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)  # in place: parameters become DTensors sharded over the world
        return model
    raise ValueError(f"unknown distributed strategy {strategy!r} (expected 'ddp', 'fsdp' or 'none')")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DDP wrapper (FSDP2 shards in place, so it is its own module)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model
