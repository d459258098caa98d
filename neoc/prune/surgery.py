"""Block surgery on the MMDiT denoiser: remove blocks (in place or on a copy), drop one temporarily, index maps."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Sequence

from torch import nn


def num_blocks(denoiser: nn.Module) -> int:
    return len(denoiser.transformer_blocks)


def removable_blocks(count: int) -> list[int]:
    """Every block but the last: the final block is ``context_pre_only`` (its text stream is discarded), so it has
    no text score and the model needs it to stay the final block."""
    return list(range(count - 1))


def kept_blocks(count: int, removed: Sequence[int]) -> list[int]:
    gone = set(removed)
    return [i for i in range(count) if i not in gone]


def check_removal(count: int, removed: Sequence[int]) -> None:
    last = count - 1
    for index in removed:
        if index == last:
            raise ValueError(f"block {last} is the context_pre_only final block and cannot be removed")
        if not 0 <= index < last:
            raise ValueError(f"block {index} does not exist (the denoiser has {count} blocks)")
    if len(set(removed)) != len(removed):
        raise ValueError(f"removed blocks {list(removed)} repeat an index")


def remove_blocks(denoiser: nn.Module, removed: Sequence[int]) -> None:
    """Drop MMDiT blocks in place and record the new ``num_layers`` in the denoiser's config (so a run folder
    rebuilds the pruned architecture)."""
    count = num_blocks(denoiser)
    check_removal(count, list(removed))
    blocks = denoiser.transformer_blocks
    denoiser.transformer_blocks = nn.ModuleList(blocks[i] for i in kept_blocks(count, removed))
    denoiser.config["num_layers"] = len(denoiser.transformer_blocks)


def pruned_copy(denoiser: nn.Module, removed: Sequence[int]) -> nn.Module:
    """A trainable deep copy of ``denoiser`` without the ``removed`` blocks (the original is untouched, and the
    copy's parameters require grad even when the original was frozen, e.g. as a teacher)."""
    student = copy.deepcopy(denoiser).requires_grad_(True)
    student.config = dict(denoiser.config)
    remove_blocks(student, removed)
    return student


@contextmanager
def without_blocks(denoiser: nn.Module, removed: Sequence[int]) -> Iterator[nn.Module]:
    """Temporarily run ``denoiser`` without ``removed`` blocks (the same module objects; restored on exit)."""
    original = denoiser.transformer_blocks
    check_removal(len(original), list(removed))
    denoiser.transformer_blocks = nn.ModuleList(original[i] for i in kept_blocks(len(original), removed))
    try:
        yield denoiser
    finally:
        denoiser.transformer_blocks = original
