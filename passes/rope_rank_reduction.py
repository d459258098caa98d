"""``rope-rank-reduction``: the temporal RoPE's 6D tensors rewritten as <=4D ops (Neodragon §4.1).

The reference builds a 6D rotation table ``[B, L, 1, Dh/2, 2, 2]`` and applies it to 6D views of q and k; the
NPU toolchain wants rank <= 4. The rewrite (:mod:`neoc.deploy.rope`) folds the 2x2 rotation into
``x * cos + swap_pairs(x) * sin`` with a ``[B, L, 2, Dh]`` cos/sin table, swapping the denoiser's
``temporal_rope`` and every attention's ``apply_rope`` module. The pass measures the highest tensor rank inside
the RoPE modules (a TorchDispatchMode over their ops) before and after, and checks the denoiser's outputs on the
same inputs.
"""

from __future__ import annotations

import attrs
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from neoc.config import in_range
from neoc.errors import CheckFailed
from neoc.pass_api import Pass, PassResult
from neoc.passes.static_shape import TRAINING
from neoc.registry import register_pass


@attrs.frozen
class RopeRankReductionConfig:
    max_rank: int = attrs.field(default=4, validator=in_range(2, 5))
    tolerance: float = 1e-4


class RankRecorder(TorchDispatchMode):
    """Highest rank of any tensor read or written by ops that run while a watched module is active."""

    def __init__(self, modules):
        super().__init__()
        self.max_rank = 0
        self._depth = 0
        self._handles = []
        for module in modules:
            self._handles.append(module.register_forward_pre_hook(self._enter))
            self._handles.append(module.register_forward_hook(self._leave))

    def _enter(self, *_):
        self._depth += 1

    def _leave(self, *_):
        self._depth -= 1

    def remove(self):
        for handle in self._handles:
            handle.remove()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._depth:
            for value in tree_flatten((args, kwargs, out))[0]:
                if isinstance(value, torch.Tensor):
                    self.max_rank = max(self.max_rank, value.dim())
        return out


def rope_modules(mmdit) -> list:
    return [mmdit.temporal_rope] + [block.attn.apply_rope for block in mmdit.transformer_blocks]


@torch.no_grad()
def rope_path_max_rank(denoiser, mmdit, call: dict) -> int:
    """Run one denoiser call and return the highest tensor rank inside the RoPE table and its applications."""
    recorder = RankRecorder(rope_modules(mmdit))
    try:
        with recorder:
            denoiser(**call)
    finally:
        recorder.remove()
    return recorder.max_rank


@register_pass
class RopeRankReduction(Pass):
    name = "rope-rank-reduction"
    summary = "Rewrite the 6D temporal-RoPE tensors into <=4D ops (fold sin/cos and broadcast dims)"
    paper = "Neodragon §4.1"
    Config = RopeRankReductionConfig
    implemented = True
    semantics_preserving = True
    forbids_after = TRAINING

    def check_preconditions(self, pipeline, ctx) -> None:
        from neoc.deploy.denoiser import DeployDenoiser, require_mmdit
        from neoc.models.mmdit import TemporalRoPE

        denoiser, mmdit = require_mmdit(pipeline, "rope-rank-reduction")
        if isinstance(denoiser, DeployDenoiser) and denoiser.rope_form == "4d":
            raise CheckFailed("rope-rank-reduction: the denoiser's RoPE is already reduced to 4D")
        if not isinstance(mmdit.temporal_rope, TemporalRoPE):
            raise CheckFailed("rope-rank-reduction: the denoiser has no 6D temporal RoPE (temp_pos_embed_type "
                              "is not 'rope')")

    def run(self, pipeline, ctx) -> PassResult:
        from neoc.deploy.denoiser import deploy_denoiser
        from neoc.deploy.probe import check_tolerance, denoiser_probe_calls, max_abs_diff, run_calls

        denoiser = deploy_denoiser(pipeline)
        mmdit = denoiser.mmdit
        calls = denoiser_probe_calls(pipeline, mmdit, ctx.seed)
        before = run_calls(denoiser, calls)
        rank_before = rope_path_max_rank(denoiser, mmdit, calls[0])

        denoiser.reduce_rope_rank()
        pipeline.replace_component("denoiser", denoiser)

        after = run_calls(denoiser, calls)
        rank_after = rope_path_max_rank(denoiser, mmdit, calls[0])
        diff = max_abs_diff(before, after)
        check_tolerance(self.name, diff, self.config.tolerance)
        if rank_after > self.config.max_rank:
            raise CheckFailed(f"rope-rank-reduction: a RoPE tensor still has rank {rank_after} "
                              f"> max_rank {self.config.max_rank}")
        return PassResult(pipeline, True, {"max_abs_diff": diff, "max_rank_before": rank_before,
                                           "max_rank_after": rank_after, "calls_checked": len(calls)})
