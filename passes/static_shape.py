"""``static-shape``: one static denoiser graph per pyramid stage (Neodragon §4.1).

History clips are padded to the stage's longest history, with the attention mask and positional embeddings
fixed so that padding contributes nothing: the NPU needs 3 DiT graphs, not one per latent frame.

The longest history of a stage is the last latent frame's (reference/pyramid-flow-facts.md §4.4: previous frame
at the stage's resolution, the one before at half, all older at quarter). Every other latent frame's history is
a suffix of it in "frames back" order, so its real frames keep their clip (resolution level) and zero frames are
prepended inside each clip. The denoiser (a :class:`~neoc.deploy.denoiser.DeployDenoiser`) then gets per-frame

* ``frame_valid``: 0 for padding; padded image tokens follow the padded-text rule of the joint mask, so no real
  token attends them (and they only attend padding, never an empty row);
* ``frame_time``: the RoPE / causality time ids of the real frames are the reference ones (0 = the oldest real
  frame), padding gets 0.

Spatial positions depend only on each clip's resolution, so they are unchanged. The pipeline graph is re-emitted
with the padded calls (its emitter asks the denoiser for ``emit_static_inputs``) and the pass checks that each
stage has exactly one input signature and that every (latent frame, stage) call gives the same prediction.
"""

from __future__ import annotations

import attrs
import torch

from neoc.errors import CheckFailed
from neoc.pass_api import Pass, PassResult
from neoc.registry import register_pass

TRAINING = ("replace-text-encoder", "swap-decoder", "prune-blocks", "distill-steps")


@attrs.frozen
class StaticShapeConfig:
    tolerance: float = 1e-4


def static_layouts(pipeline) -> list:
    from neoc.deploy.denoiser import stage_layout

    S = pipeline.schedule.num_stages
    return [stage_layout(pipeline.spec, stage, S) for stage in range(S)]


def call_pairs(pipeline, mmdit, layouts, seed: int):
    """For every (latent frame, stage) of the graph: the reference call's inputs and the padded call's inputs,
    holding the same real latents, context and timestep."""
    from neoc.deploy.denoiser import pad_call_inputs
    from neoc.deploy.probe import call_inputs

    S = pipeline.schedule.num_stages
    gen = torch.Generator().manual_seed(int(seed))
    seen, pairs = set(), []
    for node in pipeline.denoiser_nodes():
        unit, stage = node.meta["unit"], node.meta["stage"]
        if (unit, stage) in seen:
            continue
        seen.add((unit, stage))
        call = call_inputs(mmdit, pipeline.spec, node.meta["signature"], node.meta["timestep"], gen)
        *history, current = call["sample"][0]
        batch = current.shape[0]
        clips, _, extra = pad_call_inputs(lambda target, *args: target(*args), layouts[stage], unit, stage, S,
                                          history, current, batch)
        pairs.append((call, {**call, "sample": [clips + [current]], **extra}))
    return pairs


@register_pass
class StaticShape(Pass):
    name = "static-shape"
    summary = "Pad each pyramid stage's history to its longest so the denoiser is 3 static graphs"
    paper = "Neodragon §4.1"
    Config = StaticShapeConfig
    implemented = True
    semantics_preserving = True
    forbids_after = TRAINING

    def check_preconditions(self, pipeline, ctx) -> None:
        from neoc.deploy.denoiser import DeployDenoiser, require_mmdit

        denoiser, mmdit = require_mmdit(pipeline, "static-shape")
        if isinstance(denoiser, DeployDenoiser) and denoiser.static_layout is not None:
            raise CheckFailed("static-shape: the denoiser already runs static per-stage shapes")
        if mmdit.pos_embed.add_temporal_sincos:
            raise CheckFailed("static-shape: a temporal sincos position embedding would shift with padding; "
                              "only the RoPE / no-temporal-embedding denoisers can be padded")

    def run(self, pipeline, ctx) -> PassResult:
        from neoc.deploy.denoiser import deploy_denoiser
        from neoc.deploy.probe import check_tolerance, max_abs_diff, run_calls

        signatures_before = sum(len(v) for v in pipeline.stage_signatures().values())
        denoiser = deploy_denoiser(pipeline)
        layouts = static_layouts(pipeline)
        pairs = call_pairs(pipeline, denoiser.mmdit, layouts, ctx.seed)
        before = run_calls(denoiser, [reference for reference, _ in pairs])
        after = run_calls(denoiser, [padded for _, padded in pairs])
        diff = max_abs_diff(before, after)
        check_tolerance(self.name, diff, self.config.tolerance)

        denoiser.set_static_layout(layouts)
        pipeline.replace_component("denoiser", denoiser)
        signatures = pipeline.stage_signatures()
        return PassResult(pipeline, True, {"max_abs_diff": diff, "calls_checked": len(pairs),
                                           "signatures_before": signatures_before,
                                           "signatures_after": sum(len(v) for v in signatures.values())})

    def check_postconditions(self, pipeline, result, ctx) -> None:
        for stage, signatures in pipeline.stage_signatures().items():
            histories = {history for history, _, _ in signatures}
            if len(histories) != 1:
                raise CheckFailed(f"static-shape: stage {stage} still has {len(histories)} history shapes")
