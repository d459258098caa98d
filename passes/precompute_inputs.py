"""``precompute-inputs``: timestep embeddings and per-stage constants precomputed (Neodragon §4.1).

"The input merge function of DiT's forward pass computes constant information for each stage [...] as we run a
fixed amount of timesteps, we also have timestep embeddings precomputed as inputs to the DiT graph." The pass
switches the denoiser (a :class:`~neoc.deploy.denoiser.DeployDenoiser`) to its ``precomputed`` call form: the
pipeline graph computes, outside the DiT and shared between the calls that need the same value,

* the timestep embedding ``temb = MLP(sinusoid(t)) + MLP(pooled CLIP)`` — once per (timestep, text rows), i.e.
  once per step of the schedule rather than once per latent frame;
* the RoPE table of each call layout — a cached constant (no tensor inputs);
* the attention mask of each call layout (text padding x static causal/padding structure) — once per layout;
* the positional embeddings of each clip layout — crops of the sincos table;

and feeds them to the denoiser, whose graph is then the DiT body alone (:mod:`neoc.deploy.precompute`). Token
counts and shapes are static per stage already (``static-shape``).

Self-check (``max_abs_diff``): the pipeline's video before and after on the same prompt and seed, on a short
schedule (1 step per stage, the pipeline's guidance) and at most ``check_frames`` frames, plus every distinct
denoiser call of the pipeline in both forms on the same random inputs (``max_abs_diff_denoiser``).
"""

from __future__ import annotations

import attrs
import torch

from neoc.config import in_range
from neoc.errors import CheckFailed
from neoc.pass_api import Pass, PassResult
from neoc.passes.static_shape import TRAINING
from neoc.registry import register_pass

CHECK_PROMPT = "a red circle moves from left to right on a blue background"


@attrs.frozen
class PrecomputeInputsConfig:
    tolerance: float = attrs.field(default=1e-4, metadata={"help": "max_abs_diff allowed, video and denoiser"})
    check_frames: int = attrs.field(default=17, validator=in_range(1),
                                    metadata={"help": "frames of the self-check video (short 1-1-1 schedule)"})


def check_pipeline(pipeline, frames: int):
    """A copy of ``pipeline`` on the short check schedule (1-1-1, same guidance) with at most ``frames`` frames."""
    from neoc.ir.schedule import Schedule

    copy = pipeline.clone()
    spec = pipeline.spec
    if frames < spec.frames:
        copy.spec = attrs.evolve(spec, frames=max(1, 1 + 8 * ((frames - 1) // 8)))
    sched = pipeline.schedule
    copy.with_schedule(Schedule(first_frame_steps=(1,) * sched.num_stages, video_steps=(1,) * sched.num_stages,
                                guidance_scale=sched.guidance_scale, video_guidance_scale=sched.video_guidance_scale,
                                label="precompute-check"))
    return copy


def precomputed_input_counts(pipeline) -> dict[str, int]:
    """How many distinct precomputed values the pipeline graph computes, per kind, and the DiT calls."""
    from neoc.deploy import precompute as pre

    counts = {"denoiser_calls": 0, "timestep_embeddings": 0, "rope_tables": 0, "attention_masks": 0,
              "position_sets": 0}
    kinds = {pre.rope_table: "rope_tables", pre.joint_attention_mask: "attention_masks",
             pre.clip_positions: "position_sets"}
    for node in pipeline.graph_module.graph.nodes:
        if node.op == "call_function" and node.target in kinds:
            counts[kinds[node.target]] += 1
        elif node.op == "call_module" and node.meta.get("role") == "denoiser_inputs":
            counts["timestep_embeddings"] += 1
        elif node.meta.get("role") == "denoiser":
            counts["denoiser_calls"] += 1
    return counts


@register_pass
class PrecomputeInputs(Pass):
    name = "precompute-inputs"
    summary = "Fold timestep embeddings and per-stage constants into graph inputs/constants"
    paper = "Neodragon §4.1"
    Config = PrecomputeInputsConfig
    implemented = True
    semantics_preserving = True
    forbids_after = TRAINING

    def check_preconditions(self, pipeline, ctx) -> None:
        from neoc.deploy.denoiser import DeployDenoiser, require_mmdit

        denoiser, mmdit = require_mmdit(pipeline, "precompute-inputs")
        if isinstance(denoiser, DeployDenoiser) and denoiser.precomputed:
            raise CheckFailed("precompute-inputs: the denoiser already takes precomputed inputs")
        if mmdit.pos_embed.add_temporal_sincos:
            raise CheckFailed("precompute-inputs: a temporal sincos position embedding is not supported (only the "
                              "RoPE / no-temporal-embedding denoisers)")
        if not pipeline.has("clip_encoders"):
            raise CheckFailed("precompute-inputs: the timestep embedding needs the pooled CLIP projection, and the "
                              "pipeline has no clip_encoders")
        if pipeline.prompt_encoder is None:
            raise CheckFailed("precompute-inputs: the self-check generates a video, but the pipeline has no "
                              "tokenizers")

    def run(self, pipeline, ctx) -> PassResult:
        from neoc.deploy.denoiser import deploy_denoiser
        from neoc.deploy.precompute import precompute_call
        from neoc.deploy.probe import check_tolerance, denoiser_probe_calls, max_abs_diff, run_calls

        tolerance = self.config.tolerance
        # ---- denoiser: every distinct call, standard vs precomputed form, same inputs
        denoiser = deploy_denoiser(pipeline)
        calls = denoiser_probe_calls(pipeline, denoiser.mmdit, ctx.seed)
        with torch.no_grad():
            precomputed_calls = [precompute_call(denoiser, call) for call in calls]
        diff_denoiser = max_abs_diff(run_calls(denoiser, calls), run_calls(denoiser, precomputed_calls))

        # ---- the pipeline's video on the short check schedule, before and after
        before = check_pipeline(pipeline, self.config.check_frames)
        after = before.clone()
        wrapped = deploy_denoiser(after)
        wrapped.precomputed = True
        after.replace_component("denoiser", wrapped)
        inputs = before.prepare_inputs(CHECK_PROMPT, ctx.seed)
        diff_video = max_abs_diff([before.run_graph(inputs)], [after.run_graph(inputs)])

        diff = max(diff_video, diff_denoiser)
        check_tolerance(self.name, diff, tolerance)

        denoiser.precomputed = True
        pipeline.replace_component("denoiser", denoiser)
        return PassResult(pipeline, True, {"max_abs_diff": diff, "max_abs_diff_video": diff_video,
                                           "max_abs_diff_denoiser": diff_denoiser, "calls_checked": len(calls),
                                           "check_frames": before.spec.frames,
                                           "precomputed": precomputed_input_counts(pipeline)})

    def check_postconditions(self, pipeline, result, ctx) -> None:
        for node in pipeline.denoiser_nodes():
            if node.kwargs.get("temb") is None or node.kwargs.get("attention_mask") is None:
                raise CheckFailed(f"precompute-inputs: denoiser call {node.name} still computes its own inputs")
