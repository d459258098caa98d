"""AIMET quantisation simulation of one graph: build, calibrate, measure, export and reload encodings.

* :func:`build_sim` — ``aimet_torch.QuantizationSimModel`` over a deep copy of the graph, W8A16 =
  ``default_param_bw=8, default_output_bw=16`` with an HTP config (``htp_v73`` = Snapdragon X Elite; per-channel
  int8 weights, uint16 activations), min-max ("tf") or SQNR-searched ("tf_enhanced") ranges.
* :func:`calibrate` — ``sim.compute_encodings`` over recorded calls.
* :func:`adaround` — AIMET AdaRound (Nagel et al. 2020) before the sim: learns each weight's up/down rounding on
  the calibration calls; the rounded weights and their frozen parameter encodings go into the sim (Table 9 uses
  it for QuickSRNet).
* :func:`export_encodings` / :func:`load_sim` — the encodings as AIMET's torch-format JSON dict
  (``{"activation_encodings": {module: {"input"|"output": {index: enc}}}, "param_encodings": {param: [enc per
  channel]}}``, each ``enc`` with ``min, max, scale, offset, bitwidth, dtype, is_symmetric``), and a fresh sim
  with them loaded (``QuantizationSimModel.load_encodings``, strict).
* :func:`snap_to_json_grid` — puts a calibrated sim on the grid its JSON describes (the float32 round trip can
  move a scale by an ulp) and returns those encodings: a sim loaded from them gives bit-identical outputs. :func:`quantizer_grid` / :func:`compare_grids` check that the snap kept every
  quantizer (set, per-channel shape, bitwidth, symmetry, offsets; scales to float32 rounding).
* :func:`sqnr_db` — ``10 log10(sum ref^2 / sum (ref - out)^2)`` pooled over held-out calls.

What the sim quantises: every module AIMET wraps (Linear, Conv, norms, activations as modules, and neoc's own
leaf modules: see :mod:`neoc.quant.aimet_modules`) — weights and module outputs. Tensor math written as
functions between modules (residual adds, adaLN modulation, SDPA internals, F.gelu / F.silu) stays float in this
module-level simulation; the HTP graph quantises those too, so the sim's SQNR is an upper bound of the device's
(the hexagon target measures the device side in HTP simulation). AIMET's ``prepare_model`` would turn those
functions into modules, but in aimet-torch 2.42 it drops the ``attn_mask`` of ``scaled_dot_product_attention``
and GELU's ``approximate='tanh'`` (checked on the tiny MMDiT: the prepared float graph differs by 1e-2), so neoc
does not use it.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Sequence

import attrs
import torch
from torch import nn

from neoc.errors import CheckFailed
from neoc.quant.calibration import ComponentCall
from neoc.quant.graphs import QuantGraph


@attrs.frozen
class SimSettings:
    """How a graph is simulated (JSON-able; recorded with its encodings)."""

    param_bw: int = 8
    output_bw: int = 16
    config: str = "htp_v73"  # aimet config alias (htp_v73 = X Elite, htp_v79 = 8 Elite) or a file
    quant_scheme: str = "tf"  # "tf" (min-max) or "tf_enhanced" (SQNR-searched ranges)

    def as_dict(self) -> dict:
        return attrs.asdict(self)


def _aimet():
    import neoc.quant.aimet_modules  # noqa: F401  (registers neoc's leaf modules)
    from aimet_common.defs import QuantScheme
    from aimet_torch.quantsim import QuantizationSimModel

    return QuantizationSimModel, QuantScheme


def _scheme(name: str):
    _, QuantScheme = _aimet()
    return {"tf": QuantScheme.post_training_tf, "tf_enhanced": QuantScheme.post_training_tf_enhanced}[name]


def quantizable_layers(module: nn.Module) -> int:
    """Layers whose weights a W8A16 sim quantises (Linear, Conv*): 0 means there is nothing to quantise."""
    return sum(1 for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                                             nn.ConvTranspose2d, nn.ConvTranspose3d)))


def build_sim(graph: QuantGraph, example: Sequence[torch.Tensor], settings: SimSettings,
              module: nn.Module | None = None):
    """A QuantizationSimModel over a copy of ``graph.module`` (or of ``module``, e.g. AdaRound weights)."""
    from neoc.quant.aimet_modules import ensure_registered

    QuantizationSimModel, _ = _aimet()
    model = copy.deepcopy(module if module is not None else graph.module).eval()
    ensure_registered(model)
    with torch.no_grad():
        return QuantizationSimModel(model, tuple(example), quant_scheme=_scheme(settings.quant_scheme),
                                    default_param_bw=settings.param_bw, default_output_bw=settings.output_bw,
                                    config_file=settings.config, in_place=True)


def calibrate(sim, graph: QuantGraph, calls: Sequence[ComponentCall]) -> None:
    def forward_pass(model, _):
        for call in calls:
            graph.run(model, call)

    sim.compute_encodings(forward_pass, None)


def adaround(graph: QuantGraph, calls: Sequence[ComponentCall], settings: SimSettings, iterations: int,
             work_dir: Path) -> tuple[nn.Module, Path]:
    """AdaRound the graph's weights on ``calls``: returns (module with the rounded weights, param-encodings
    file). The float component is not touched (AdaRound runs on a copy)."""
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters

    _aimet()
    inputs = [graph.inputs(call) for call in calls]
    loader = torch.utils.data.DataLoader(_ListDataset(inputs), batch_size=None, shuffle=False)
    params = AdaroundParameters(data_loader=loader, num_batches=len(inputs), default_num_iterations=iterations,
                                forward_fn=lambda model, batch: model(*batch))
    work_dir.mkdir(parents=True, exist_ok=True)
    prefix = graph.name.replace("/", ".") + ".adaround"
    model = copy.deepcopy(graph.module).eval()
    from neoc.quant.aimet_modules import ensure_registered

    ensure_registered(model)
    rounded = Adaround.apply_adaround(model, inputs[0], params, path=str(work_dir), filename_prefix=prefix,
                                      default_param_bw=settings.param_bw,
                                      default_quant_scheme=_scheme(settings.quant_scheme),
                                      default_config_file=settings.config)
    return rounded, work_dir / f"{prefix}.encodings"


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def export_encodings(sim) -> dict:
    """The sim's encodings as a JSON-able dict in AIMET's torch format (string keys, as JSON stores them)."""
    activation, param = sim.get_activation_param_encodings()
    return json.loads(json.dumps({"activation_encodings": activation, "param_encodings": param}))


def load_sim(graph: QuantGraph, example: Sequence[torch.Tensor], settings: SimSettings, encodings: dict,
             module: nn.Module | None = None):
    """A fresh sim of ``graph`` with ``encodings`` loaded (strict: every encoding must find its quantizer;
    quantizers without an encoding are removed, as in the calibrated sim)."""
    sim = build_sim(graph, example, settings, module)
    sim.load_encodings(encodings, strict=True, partial=False)
    return sim


@torch.no_grad()
def sqnr_db(reference: Sequence[torch.Tensor], quantized: Sequence[torch.Tensor]) -> float | None:
    """Pooled SQNR in dB over pairs of outputs; ``inf`` when identical, None when an output is not finite."""
    signal = noise = 0.0
    for ref, out in zip(reference, quantized, strict=True):
        ref, out = ref.double(), out.double()
        if not (torch.isfinite(ref).all() and torch.isfinite(out).all()):
            return None
        signal += float(ref.pow(2).sum())
        noise += float((ref - out).pow(2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


@torch.no_grad()
def run_graph(module: nn.Module, graph: QuantGraph, calls: Sequence[ComponentCall]) -> list[torch.Tensor]:
    module.eval()
    return [graph.run(module, call).float() for call in calls]


def _quantizers(model: nn.Module) -> dict[str, nn.Module]:
    from aimet_torch.v2.quantization.base import QuantizerBase

    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizerBase)}


@torch.no_grad()
def quantizer_grid(sim) -> dict[str, dict]:
    """Every initialized quantizer of ``sim`` -> the grid it quantizes on (what a forward pass uses): float32
    ``scale`` and ``offset`` tensors, bitwidth range and symmetry."""
    grid = {}
    for name, quantizer in _quantizers(sim.model).items():
        if quantizer.is_initialized():
            grid[name] = {"scale": quantizer.get_scale().detach().clone(),
                          "offset": quantizer.get_offset().detach().clone(),
                          "qmin": int(quantizer.qmin), "qmax": int(quantizer.qmax),
                          "symmetric": bool(quantizer.symmetric)}
    return grid


#: float32 ulps (relative 2^-23 each) a scale may move when AIMET's JSON round trip recomputes it
SCALE_ULPS = 8


def compare_grids(calibrated: dict[str, dict], reloaded: dict[str, dict], name: str) -> int:
    """Check that loading encodings kept every calibrated quantizer with the same grid: same set of quantizers,
    same per-channel/per-tensor shape, bitwidth, symmetry and offsets, and scales equal up to ``SCALE_ULPS``
    float32 ulps (the only thing the JSON round trip may change, see :func:`snap_to_json_grid`). Returns how
    many quantizers moved by those ulps; raises naming the first quantizer that differs in any other way."""
    missing = sorted(set(calibrated) - set(reloaded))
    extra = sorted(set(reloaded) - set(calibrated))
    if missing or extra:
        raise CheckFailed(f"quantize-w8a16: {name}: the exported encodings do not cover the calibrated quantizers "
                          f"(lost on reload: {missing[:4]}; enabled only after reload: {extra[:4]})")
    moved = 0
    for qname, before in calibrated.items():
        after = reloaded[qname]
        for key in ("qmin", "qmax", "symmetric"):
            if before[key] != after[key]:
                raise CheckFailed(f"quantize-w8a16: {name}: quantizer {qname}: {key} {before[key]} became "
                                  f"{after[key]} on reload")
        if before["scale"].shape != after["scale"].shape:
            raise CheckFailed(f"quantize-w8a16: {name}: quantizer {qname}: encoding shape "
                              f"{list(before['scale'].shape)} (per-channel/per-tensor) became "
                              f"{list(after['scale'].shape)} on reload")
        if not torch.equal(before["offset"], after["offset"]):
            raise CheckFailed(f"quantize-w8a16: {name}: quantizer {qname}: offsets changed on reload")
        relative = ((before["scale"] - after["scale"]).abs() / before["scale"].abs()).max()
        if float(relative) > SCALE_ULPS * 2.0 ** -23:
            raise CheckFailed(f"quantize-w8a16: {name}: quantizer {qname}: scale moved by {float(relative):.3g} "
                              "(relative) on reload: more than float32 rounding")
        moved += int(not torch.equal(before["scale"], after["scale"]))
    return moved


def snap_to_json_grid(sim) -> dict:
    """Export ``sim``'s encodings and load them back into it: the sim is then exactly what the returned
    encodings say (what a reload of them gives, bit for bit), and that is what the pass measures and records.

    AIMET's JSON writes each range as ``min = (offset + qmin) * scale``, ``max = (offset + qmax) * scale`` in
    float32, and a load recomputes ``scale = (max - min) / (qmax - qmin)`` in float32; that lands one float32 ulp
    away from the calibrated scale for some quantizers (8 of 57 activation quantizers of the trained tiny VAE
    decoder; offsets and parameter encodings come back unchanged; AIMET's own deprecation note on
    ``load_encodings`` calls it "roundtrip loss"). An ulp moves values that sit on a rounding tie to the
    neighbouring step, and a deep network can amplify single steps (the trained causal-VAE decoder's residual
    stream reaches +-4e5, 1 LSB = 10.6, before a GroupNorm: 0.046 max abs diff on a 1.08 output, pooled 55 dB
    below the signal). The round trip is not a fixed point in general (exporting the loaded sim can move a scale
    by another ulp), but a load is a deterministic function of the JSON: loading the same encodings into any sim
    of the graph gives bit-identical outputs, which is what the pass checks on the written file.
    """
    encodings = export_encodings(sim)
    sim.load_encodings(encodings, strict=True, partial=False)
    return encodings


def _encoding_changes(before: dict, after: dict, path: str = "") -> list[str]:
    """Where two encodings dicts differ (``path: before -> after`` per changed value)."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [c for key in sorted(set(before) | set(after), key=str)
                for c in _encoding_changes(before.get(key), after.get(key), f"{path}/{key}")]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [c for i, (x, y) in enumerate(zip(before, after)) for c in _encoding_changes(x, y, f"{path}[{i}]")]
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


def reload_difference(recorded: Sequence[torch.Tensor], reloaded: Sequence[torch.Tensor], name: str) -> float:
    """Max abs difference between the outputs the pass measured and those of a sim loaded from the written
    encodings file: 0 by construction (:func:`snap_to_json_grid`: the measured sim is a load of the same
    encodings), so any difference is an error (an encoding that did not load, a quantizer enabled
    differently ...)."""
    diff = max(float((x - y).abs().max()) for x, y in zip(recorded, reloaded, strict=True))
    if diff != 0.0:
        scale = max(float(x.abs().max()) for x in recorded) or 1.0
        raise CheckFailed(f"quantize-w8a16: {name}: reloaded encodings give different outputs (max diff {diff:g}, "
                          f"output scale {scale:g})")
    return diff
