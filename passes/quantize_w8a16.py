"""``quantize-w8a16``: AIMET W8A16 post-training quantisation per component (Neodragon §4.2, Table 9).

The paper quantises every deployed module with AIMET PTQ — int8 weights, int16 activations (W8A16) — except the
text encoders, which run in FP16; QuickSRNet additionally gets AdaRound (+7 dB). Calibration set sizes are per
module (50 for the VAE, 300 per DiT stage graph, 500 for SSD-1B and QuickSRNet). neoc follows Table 9:

=====================  ===========================  ===========================  =================
pipeline role          Table 9 module               scheme                       calibration key
=====================  ===========================  ===========================  =================
``text_encoder``       DistilT5                     FP16                         —
``clip_encoders``      CLIP L / CLIP G              FP16                         —
``context_embedder``,  CA (of "MMDiT+CA")           W8A16 (FP16 with             the calibration
``context_adapter``                                 ``context_w8a16: false``)    prompts' calls
``denoiser``           MMDiT, one graph per stage   W8A16 per stage graph        ``calib_denoiser``
``vae_encoder``        VAE Enc.                     W8A16                        ``calib_vae_encoder``
``vae_decoder``        VAE Dec. (or its TAEHV)      W8A16                        ``calib_vae_decoder``
``first_frame``        SSD1B UNet / Dec.            W8A16                        ``calib_first_frame``
``upsampler``          QuickSRNet                   W8A16 + AdaRound             ``calib_upsampler``
=====================  ===========================  ===========================  =================

Only components the pipeline graph actually calls are quantised (a T2V graph never calls the VAE encoder). The
context embedder / adapter runs once per prompt, so it does not ask for prompts of its own: it calibrates on the
calls of the prompts the other components needed (at most ``calib_denoiser``).

Each W8A16 graph is one ``aimet_torch.QuantizationSimModel`` (``default_param_bw=8, default_output_bw=16``, the
``htp_config`` HTP config: per-channel int8 weights); see :mod:`neoc.quant.sim` for what a module-level sim does
and does not quantise.

**Calibration** uses the inputs each component really receives: the pipeline generates toy-world *train* prompts
with the run's seed while forward hooks record every call (:mod:`neoc.quant.calibration`), until each component
has its calibration size (denoiser: per stage) or ``max_calibration_prompts`` is reached; calls are then picked
evenly over the recording. **SQNR** is
measured on held-out calls, recorded the same way from *eval* prompts with another seed: each W8A16 graph's sim
against the float graph, each FP16 component's half-precision copy against float32.

**The float pipeline is left intact** — quantisation is described, not applied: the sims work on copies, and the
pass records in ``pipeline.info["quantization"]`` (saved in the run folder's manifest)::

    {"format": "neoc-quant/1", "tool": "aimet_torch <version>",
     "settings": {"param_bw": 8, "output_bw": 16, "config": "htp_v73", "quant_scheme": "tf"},
     "components": {
       "text_encoder": {"scheme": "FP16", "sqnr_db": 61.2, "calibration_size": 0},
       "denoiser": {"scheme": "W8A16", "param_bw": 8, "output_bw": 16, "sqnr_db": <worst stage>,
                    "graphs": {"denoiser/stage0": {
                        "structure": {...how calls map to graph inputs, see neoc.quant.graphs...},
                        "calibration_size": 8, "heldout_calls": 7, "sqnr_db": 41.0,
                        "input_shapes": [[1, 16, 1, 4, 4], ...], "input_dtypes": ["float32", ...],
                        "encodings": {"activation_encodings": {...}, "param_encodings": {...}},
                        "encodings_inline": true, "encodings_sha256": "...",
                        "encodings_file": "passes/10-quantize-w8a16/artifacts/encodings/denoiser.stage0.json"}}},
       "upsampler": {"scheme": "W8A16+AdaRound", ..., "graphs": {"upsampler": {..., "weights_file": "...safetensors"}}}}}

``encodings`` is AIMET's torch-format encodings dict (module-name keys inside the graph wrappers of
:mod:`neoc.quant.graphs`; per-channel int8 weight encodings, uint16 activation encodings). It is always written
to ``encodings_file`` (path relative to the run folder, or absolute outside a run; ``encodings_sha256`` its
hash) and kept inline for the smallest graphs while the inline total stays under ``inline_encodings_kb``
(``encodings_inline`` says which; the tiny MMDiT's per-channel weight encodings are ~5 MB per stage graph, so
they stay in files). AdaRound changes weights, so an AdaRound graph also records the rounded
weights' safetensors file. :func:`neoc.quant.load_graph_sim` rebuilds any graph's sim from the pipeline and this
record (the hexagon target exports QDQ ONNX from it). The pass itself measures SQNR and quality with sims
*snapped* onto the recorded encodings, so the numbers describe exactly what is recorded: AIMET's JSON round trip
recomputes each scale in float32 from the written min/max, which can move it by one ulp (see
:func:`neoc.quant.sim.snap_to_json_grid`); the pass exports, loads them back into the sim and measures that,
after checking that the load kept every calibrated quantizer with the same grid up to those ulps.
``reload_max_abs_diff`` is how far a sim loaded from the written file is from the measured one: it must be 0.
Each graph's ``grid_snap`` record says what the snap did (``scales_moved``, ``max_abs_diff`` and ``sqnr_db`` of the
snapped vs the calibrated sim, next to ``calibrated_sqnr_db`` vs float): on the trained tiny VAE decoder at 49
frames an ulp moves its output by up to 0.046 at one pixel, 55 dB below the signal, while W8A16 itself is at 37 dB.

With trained weights (``builtin:pyramid-tiny``), the pass also scores the toy-world quality of the float and of
the simulated quantised pipeline (:func:`neoc.quant.simulate.simulated`) on the same prompts and seeds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Literal

import attrs
import torch

from neoc.config import in_range
from neoc.errors import CheckFailed
from neoc.pass_api import Pass, PassResult
from neoc.registry import register_pass
from neoc.eval.pipeline_quality import quality_skip_reason

ALL_OTHERS = ("replace-text-encoder", "swap-decoder", "prune-blocks", "distill-steps", "static-shape",
              "precompute-inputs", "rope-rank-reduction", "mask-value", "t5-fp16-rescale")

FORMAT = "neoc-quant/1"

#: Neodragon Table 9 (deploy SNR in dB; None = not reported / FP16), keyed by neoc graph name
PAPER_TABLE9 = {
    "text_encoder": ("DistilT5", "FP16", None, None),
    "clip_encoders": ("CLIP L / CLIP G", "FP16", None, None),
    "context_adapter": ("CA (in MMDiT+CA)", "W8A16", 300, None),
    "context_embedder": ("CA (in MMDiT+CA)", "W8A16", 300, None),
    "vae_encoder": ("VAE Enc.", "W8A16", 50, 40.0),
    "vae_decoder": ("VAE Dec.", "W8A16", 50, 35.0),
    "first_frame": ("SSD1B UNet / Dec.", "W8A16", 500, 33.0),
    "denoiser/stage0": ("MMDiT+CA [7x10x16]", "W8A16", 300, 29.0),
    "denoiser/stage1": ("MMDiT+CA [7x20x32]", "W8A16", 300, 22.0),
    "denoiser/stage2": ("MMDiT+CA [7x40x64]", "W8A16", 300, 24.0),
    "upsampler": ("QuickSRNet", "W8A16, AdaRound", 500, 48.0),
}


def _help(text: str) -> dict:
    return {"help": text}


@attrs.frozen
class QuantizeW8A16Config:
    param_bw: int = attrs.field(default=8, validator=in_range(4, 16), metadata=_help("weight bitwidth (W8)"))
    output_bw: int = attrs.field(default=16, validator=in_range(8, 16), metadata=_help("activation bitwidth (A16)"))
    calib_denoiser: int = attrs.field(default=300, validator=in_range(1),
                                      metadata=_help("calibration calls per DiT stage graph (paper 300)"))
    calib_vae_decoder: int = attrs.field(default=50, validator=in_range(1),
                                         metadata=_help("calibration calls of the VAE decoder (paper 50)"))
    calib_vae_encoder: int = attrs.field(default=50, validator=in_range(1),
                                         metadata=_help("calibration calls of the VAE encoder (paper 50)"))
    calib_first_frame: int = attrs.field(default=500, validator=in_range(1),
                                         metadata=_help("calibration calls of the first-frame generator (paper 500)"))
    calib_upsampler: int = attrs.field(default=500, validator=in_range(1),
                                       metadata=_help("calibration calls of the upsampler (paper 500)"))
    adaround_upsampler: bool = attrs.field(default=True, metadata=_help("AIMET AdaRound for the upsampler"))
    adaround_iterations: int = attrs.field(default=1000, validator=in_range(1),
                                           metadata=_help("AdaRound optimisation steps per layer"))
    fp16_text_encoders: bool = attrs.field(default=True, metadata=_help("report the FP16 text encoders"))
    context_w8a16: bool = attrs.field(default=True, metadata=_help(
        "W8A16 for the context embedder/adapter (Table 9's MMDiT+CA); false: FP16"))
    htp_config: Literal["htp_v69", "htp_v73", "htp_v75", "htp_v79", "htp_v81"] = attrs.field(
        default="htp_v73", metadata=_help("AIMET HTP config: htp_v73 = Snapdragon X Elite, htp_v79 = 8 Elite"))
    quant_scheme: Literal["tf", "tf_enhanced"] = attrs.field(
        default="tf", metadata=_help("range calibration: tf = min-max, tf_enhanced = SQNR search"))
    max_calibration_prompts: int = attrs.field(default=64, validator=in_range(1), metadata=_help(
        "cap on generated calibration prompts; a component short of its size then calibrates on what it got"))
    sqnr_prompts: int = attrs.field(default=2, validator=in_range(1),
                                    metadata=_help("held-out eval prompts whose calls measure SQNR"))
    quality_videos: int = attrs.field(default=4, validator=in_range(0), metadata=_help(
        "toy-quality videos, float vs simulated quantised (trained builtin:pyramid-tiny only; 0 skips)"))
    inline_encodings_kb: int = attrs.field(default=1024, validator=in_range(0), metadata=_help(
        "encodings kept inline in pipeline.info up to this total; larger ones only in their files"))


# ---- the plan: which graph gets which scheme ------------------------------------------------------------------
@attrs.define
class GraphPlan:
    name: str  # "denoiser/stage1", "vae_decoder", ...
    role: str
    scheme: str  # "W8A16", "W8A16+AdaRound", "FP16"
    calibration_size: int
    stage: int | None = None
    #: False: called once per prompt alongside the denoiser (the CA of "MMDiT+CA"): it takes the calls the prompts
    #: recorded for the others (at most ``calibration_size``) instead of asking for more prompts
    drives_prompts: bool = True


def quantization_plan(pipeline, cfg: QuantizeW8A16Config) -> list[GraphPlan]:
    from neoc.quant.calibration import called_roles

    plan = []
    for role in called_roles(pipeline):
        if role in ("text_encoder", "clip_encoders"):
            if cfg.fp16_text_encoders:
                plan.append(GraphPlan(role, role, "FP16", 0))
        elif role in ("context_embedder", "context_adapter"):
            plan.append(GraphPlan(role, role, "W8A16" if cfg.context_w8a16 else "FP16",
                                  cfg.calib_denoiser if cfg.context_w8a16 else 0, drives_prompts=False))
        elif role == "denoiser":
            stages = sorted({n.meta["stage"] for n in pipeline.denoiser_nodes()})
            plan += [GraphPlan(f"denoiser/stage{s}", role, "W8A16", cfg.calib_denoiser, s) for s in stages]
        elif role == "upsampler":
            plan.append(GraphPlan(role, role, "W8A16+AdaRound" if cfg.adaround_upsampler else "W8A16",
                                  cfg.calib_upsampler))
        else:
            size = {"vae_decoder": cfg.calib_vae_decoder, "vae_encoder": cfg.calib_vae_encoder,
                    "first_frame": cfg.calib_first_frame}[role]
            plan.append(GraphPlan(role, role, "W8A16", size))
    return plan


def _calls_for(entry: GraphPlan, calls: dict) -> list:
    recorded = calls.get(entry.role, [])
    if entry.stage is None:
        return recorded
    return [c for c in recorded if c.stage == entry.stage]


def _run_folder_path(path: Path, ctx) -> str:
    """``path`` relative to the run folder when the pass runs under a PassManager, else absolute."""
    work = Path(ctx.work_dir).resolve()
    if work.name == "artifacts" and work.parent.parent.name == "passes":
        return os.path.relpath(path.resolve(), work.parent.parent.parent)
    return str(path.resolve())


def _finite_or_none(value):
    return value if value is not None and math.isfinite(value) else None


@register_pass
class QuantizeW8A16(Pass):
    name = "quantize-w8a16"
    summary = "AIMET W8A16 simulation + encodings per component (FP16 text encoders, AdaRound upsampler)"
    paper = "Neodragon §4.2, Table 9"
    Config = QuantizeW8A16Config
    implemented = True
    forbids_after = ALL_OTHERS

    def check_preconditions(self, pipeline, ctx) -> None:
        from neoc.quant.sim import quantizable_layers

        if "quantization" in pipeline.info:
            raise CheckFailed("quantize-w8a16: the pipeline already carries quantisation encodings")
        if pipeline.prompt_encoder is None:
            raise CheckFailed("quantize-w8a16: calibration generates prompts, but the pipeline has no tokenizers")
        plan = quantization_plan(pipeline, self.config)
        w8 = [p for p in plan if p.scheme != "FP16"]
        if not any(quantizable_layers(pipeline.component(p.role)) for p in w8):
            raise CheckFailed("quantize-w8a16: nothing to quantise — no W8A16 component the pipeline calls has "
                              "Linear/Conv layers (roles: " + ", ".join(sorted({p.role for p in plan})) + ")")
        try:
            import aimet_torch  # noqa: F401
        except ImportError as exc:
            raise CheckFailed(f"quantize-w8a16 needs aimet-torch: {exc}") from None

    def run(self, pipeline, ctx) -> PassResult:
        from neoc.quant import calibration as cal
        from neoc.quant.sim import SimSettings

        cfg = self.config
        settings = SimSettings(cfg.param_bw, cfg.output_bw, cfg.htp_config, cfg.quant_scheme)
        plan = quantization_plan(pipeline, cfg)
        w8_plan = [p for p in plan if p.scheme != "FP16"]
        for module in pipeline.components.values():
            module.eval()

        # ---- calibration and held-out calls, recorded while the pipeline generates
        need = min(max((p.calibration_size for p in w8_plan if p.drives_prompts), default=1),
                   cfg.max_calibration_prompts)

        def enough(calls) -> bool:
            return all(len(_calls_for(p, calls)) >= (p.calibration_size if p.drives_prompts else 1)
                       for p in w8_plan)

        w8_roles = sorted({p.role for p in w8_plan})
        calib = cal.record_calls(pipeline, w8_roles, cal.calibration_prompts(need, ctx.seed, "train"), ctx.seed,
                                 enough, lambda items: ctx.progress(items, "quantize-w8a16 calibration"))
        heldout_seed = ctx.seed + 7919
        heldout = cal.record_calls(pipeline, sorted({p.role for p in plan}),
                                   cal.calibration_prompts(cfg.sqnr_prompts, heldout_seed, "eval"), heldout_seed,
                                   progress=lambda items: ctx.progress(items, "quantize-w8a16 held-out"))
        prompts_used = 1 + max((c.prompt_index for calls in calib.values() for c in calls), default=0)

        # ---- per graph: sim, calibration, SQNR, encodings
        records: dict[str, dict] = {}
        sims: dict[str, tuple] = {}
        artifacts: dict[str, str] = {}
        reload_diff = 0.0
        for entry in plan:
            held = _calls_for(entry, heldout)
            if not held:
                raise CheckFailed(f"quantize-w8a16: no held-out calls of {entry.name} were recorded")
            if entry.scheme == "FP16":
                records[entry.name] = self._fp16(pipeline, entry, held)
                continue
            chosen = cal.evenly_spaced(_calls_for(entry, calib), entry.calibration_size)
            if not chosen:
                raise CheckFailed(f"quantize-w8a16: no calibration calls of {entry.name} were recorded")
            record, graph, sim, diff, files = self._w8a16(pipeline, entry, chosen, held, settings, ctx)
            records[entry.name] = record
            sims[entry.name] = (graph, sim)
            artifacts.update(files)
            reload_diff = max(reload_diff, diff)

        info = self._info(records, settings)
        pipeline.info["quantization"] = info

        sqnr = {role: _finite_or_none(c["sqnr_db"]) for role, c in info["components"].items()}
        stage_sqnr = {str(r["structure"]["stage"]): _finite_or_none(r["sqnr_db"])
                      for name, r in info["components"].get("denoiser", {}).get("graphs", {}).items()}
        metrics = {"sqnr_db": sqnr, "denoiser_stage_sqnr_db": stage_sqnr, "table": self._table(records),
                   "calibration_prompts": prompts_used, "heldout_prompts": cfg.sqnr_prompts,
                   "fp16_components": [p.name for p in plan if p.scheme == "FP16"],
                   "settings": settings.as_dict(), "reload_max_abs_diff": reload_diff,
                   "grid_snap_max_abs_diff": max((r["grid_snap"]["max_abs_diff"] for r in records.values()
                                                 if "grid_snap" in r), default=0.0)}

        reason = quality_skip_reason(pipeline, cfg.quality_videos)
        if reason is not None:
            metrics["quality_note"] = f"skipped: {reason}"
        else:
            metrics.update(self._quality(pipeline, plan, sims, ctx))
        return PassResult(pipeline, modified=True, metrics=metrics, artifacts=artifacts)

    def check_postconditions(self, pipeline, result: PassResult, ctx) -> None:
        info = pipeline.info.get("quantization", {})
        for name, component in info.get("components", {}).items():
            if component["scheme"] != "FP16" and result.metrics["sqnr_db"].get(name) is None:
                raise CheckFailed(f"quantize-w8a16: {name}: non-finite SQNR {component['sqnr_db']!r}")

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _fp16(pipeline, entry: GraphPlan, held: list) -> dict:
        from neoc.quant.sim import sqnr_db
        from neoc.quant.simulate import _to_float, fp16_runner

        module = pipeline.component(entry.role)
        runner = fp16_runner(module)
        with torch.no_grad():
            reference = [_to_float(module(*c.args, **c.kwargs)) for c in held]
            halves = [runner(c.args, c.kwargs) for c in held]
        from neoc.quant.calibration import flat_tensors

        value = sqnr_db([t for r in reference for t in flat_tensors(r)], [t for h in halves for t in flat_tensors(h)])
        return {"scheme": "FP16", "sqnr_db": value, "calibration_size": 0, "heldout_calls": len(held),
                "note": None if value is not None else "non-finite FP16 output (overflow): see t5-fp16-rescale"}

    def _w8a16(self, pipeline, entry: GraphPlan, chosen: list, held: list, settings, ctx):
        from safetensors.torch import save_file

        from neoc.quant import graphs as qg
        from neoc.quant import sim as qs
        from neoc.quant.calibration import flat_tensors

        if entry.stage is not None:
            structure = qg.denoiser_structure(pipeline, entry.stage, chosen[0])
        else:
            structure = qg.component_structure(entry.role, chosen[0])
        graph = qg.build_graph(pipeline, entry.name, structure)
        example = graph.inputs(chosen[0])
        files: dict[str, str] = {}
        rounded = None
        stem = entry.name.replace("/", ".")
        notes = []
        if entry.scheme == "W8A16+AdaRound":
            rounded, param_file = qs.adaround(graph, chosen, settings, self.config.adaround_iterations,
                                              ctx.artifact("adaround"))
            if not json.loads(param_file.read_text()).get("param_encodings"):
                rounded = None
                notes.append("AdaRound found no layer it rounds (it handles Conv2d / Linear); plain W8A16")
        if rounded is not None:
            sim = qs.build_sim(graph, example, settings, rounded)
            sim.set_and_freeze_param_encodings(str(param_file))
            weights_path = ctx.artifact(f"adaround/{stem}.safetensors")
            save_file({k: v.detach().contiguous().clone() for k, v in rounded.state_dict().items()},
                      str(weights_path))
            files[f"{stem}.adaround_weights"] = str(weights_path)
        else:
            sim = qs.build_sim(graph, example, settings)
        qs.calibrate(sim, graph, chosen)
        calibrated = qs.run_graph(sim.model, graph, held)
        calibrated_grid = qs.quantizer_grid(sim)
        # from here on the sim is what the recorded encodings say (a reload — and QNN — gets exactly this):
        # snapped onto the JSON grid (float32 round trip of the scales), checked to have kept every quantizer;
        # SQNR and quality are measured on it
        encodings = qs.snap_to_json_grid(sim)
        scales_moved = qs.compare_grids(calibrated_grid, qs.quantizer_grid(sim), entry.name)
        quantized = qs.run_graph(sim.model, graph, held)
        reference = qs.run_graph(graph.module, graph, held)

        path = ctx.artifact(f"encodings/{stem}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(encodings))
        files[f"{stem}.encodings"] = str(path)
        text = path.read_bytes()
        # the written file, loaded back, must give exactly the measured outputs
        sim.load_encodings(json.loads(text), strict=True, partial=False)
        diff = qs.reload_difference(quantized, qs.run_graph(sim.model, graph, held), entry.name)
        snap_diff = max(float((x - y).abs().max()) for x, y in zip(calibrated, quantized))
        record = {"structure": structure, "calibration_size": len(chosen), "heldout_calls": len(held),
                  "sqnr_db": qs.sqnr_db(reference, quantized),
                  "grid_snap": {"scales_moved": scales_moved, "quantizers": len(calibrated_grid),
                                "max_abs_diff": snap_diff,
                                "sqnr_db": _finite_or_none(qs.sqnr_db(calibrated, quantized)),
                                "calibrated_sqnr_db": _finite_or_none(qs.sqnr_db(reference, calibrated))},
                  "input_shapes": [list(t.shape) for t in flat_tensors(example)],
                  "input_dtypes": [str(t.dtype).replace("torch.", "") for t in flat_tensors(example)],
                  "encodings_file": _run_folder_path(path, ctx), "encodings_sha256": hashlib.sha256(text).hexdigest(),
                  "encodings": encodings}
        if len(chosen) < entry.calibration_size:
            notes.append(f"calibrated on {len(chosen)} of the {entry.calibration_size} calls asked for "
                         f"(max_calibration_prompts {self.config.max_calibration_prompts})")
        if notes:
            record["notes"] = notes
        if rounded is not None:
            record["weights_file"] = _run_folder_path(Path(files[f"{stem}.adaround_weights"]), ctx)
        return record, graph, sim, diff, files

    def _info(self, records: dict, settings) -> dict:
        import aimet_torch

        components: dict[str, dict] = {}
        for record in records.values():  # strict JSON in the run folder: no Infinity / NaN
            record["sqnr_db"] = _finite_or_none(record["sqnr_db"])
        for name, record in records.items():
            if record.get("scheme") == "FP16":
                components[name] = record
                continue
            role = name.split("/")[0]
            entry = components.setdefault(role, {"scheme": "W8A16+AdaRound" if "weights_file" in record else "W8A16",
                                                 "param_bw": settings.param_bw, "output_bw": settings.output_bw,
                                                 "graphs": {}})
            entry["graphs"][name] = record
        for entry in components.values():
            if "graphs" in entry:
                values = [g["sqnr_db"] for g in entry["graphs"].values()]
                entry["sqnr_db"] = None if any(v is None for v in values) else min(values)
                entry["calibration_size"] = sum(g["calibration_size"] for g in entry["graphs"].values())
        # inline the encodings of the smallest graphs while the record stays under inline_encodings_kb; the
        # others are only in their files (encodings_file)
        graphs = sorted((g for entry in components.values() for g in entry.get("graphs", {}).values()),
                        key=lambda g: len(json.dumps(g["encodings"])))
        budget = self.config.inline_encodings_kb * 1024
        for graph in graphs:
            size = len(json.dumps(graph["encodings"]))
            graph["encodings_inline"] = size <= budget
            if size <= budget:
                budget -= size
            else:
                del graph["encodings"]
        return {"format": FORMAT, "tool": f"aimet_torch {getattr(aimet_torch, '__version__', '?')}",
                "settings": settings.as_dict(), "components": components}

    @staticmethod
    def _table(records: dict) -> list[dict]:
        rows = []
        for name, record in records.items():
            module, scheme, calib, sqnr = PAPER_TABLE9.get(name, (name, "?", None, None))
            rows.append({"graph": name, "scheme": record.get("scheme") or
                         ("W8A16+AdaRound" if "weights_file" in record else "W8A16"),
                         "calibration_size": record["calibration_size"], "sqnr_db": _finite_or_none(record["sqnr_db"]),
                         "paper_module": module, "paper_scheme": scheme, "paper_calibration_size": calib,
                         "paper_sqnr_db": sqnr})
        return rows

    def _quality(self, pipeline, plan: list[GraphPlan], sims: dict, ctx) -> dict:
        from neoc.eval.pipeline_quality import evaluate_pipeline
        from neoc.quant.simulate import fp16_runner, sim_runner, simulated

        num = self.config.quality_videos

        def score(p):
            result = evaluate_pipeline(p, num=num, seed=ctx.seed, quiet=ctx.quiet)
            return {k: v for k, v in result.items() if not k.startswith("_")}

        quality_float = score(pipeline)
        runners = {}
        for entry in plan:
            if entry.scheme == "FP16":
                runners[entry.role] = fp16_runner(pipeline.component(entry.role))
        for role in {entry.role for entry in plan if entry.scheme != "FP16"}:
            runners[role] = sim_runner(pipeline, role, {n: s for n, s in sims.items() if n.split("/")[0] == role})
        with simulated(pipeline, runners):
            quality_quantized = score(pipeline)
        return {"quality_float": quality_float, "quality_quantized": quality_quantized,
                "quality_total_drop": quality_float["total"] - quality_quantized["total"]}
