"""Quantized definitions of neoc's own leaf modules for aimet-torch (``QuantizationMixin.implements``).

``QuantizationSimModel`` wraps every leaf module in a quantized twin. It knows ``torch.nn`` layers; a custom leaf
(one whose ``forward`` does tensor math itself) needs a registered definition or the sim refuses to build. Each
definition here quantizes what the HTP graph would carry as a tensor: the module's output(s) — at the sim's
activation bitwidth (16 for W8A16) — and its own parameters at the parameter bitwidth when the HTP config
enables them. Inputs stay float unless aimet's config enables input quantizers (it does for the model inputs).

Registered:

* denoiser: ``RMSNorm`` (q/k norm), ``TemporalRoPE`` / ``TemporalRoPE4D`` (the RoPE table, one output),
  ``ApplyRoPE6D`` / ``ApplyRoPE4D`` (rotated q and k, two outputs);
* VAE: ``CausalGroupNorm``, ``ChannelAffine``, ``LatentNorm``; Wan-style decoder: ``CausalConv3d``, ``ChannelRMSNorm``;
* anything else neoc defines later: :func:`register_leaf` with the same one-output rule (``ensure_registered``
  does it for every unknown leaf class found in a component, so a new component does not break the pass).

Importing this module imports aimet_torch (slow, ~10-20 s); callers import it lazily.
"""

from __future__ import annotations

import torch
from aimet_torch.nn import QuantizationMixin
from torch import nn

_REGISTERED: dict[type, type] = {}


def _quantize(quantizer, value):
    return quantizer(value) if quantizer is not None and isinstance(value, torch.Tensor) else value


def register_leaf(module_cls: type, num_outputs: int = 1) -> type:
    """Register a quantized twin of ``module_cls``: quantized first input (when aimet enables it), parameters
    and ``num_outputs`` outputs (a tensor, or the first ``num_outputs`` members of a returned tuple)."""
    if module_cls in _REGISTERED:
        return _REGISTERED[module_cls]

    def __quant_init__(self):
        QuantizationMixin.__quant_init__(self)
        self.output_quantizers = nn.ModuleList([None] * num_outputs)

    def forward(self, *args, **kwargs):
        if args:
            args = (_quantize(self.input_quantizers[0], args[0]), *args[1:])
        with self._patch_quantized_parameters():
            out = module_cls.forward(self, *args, **kwargs)
        if isinstance(out, tuple):
            return tuple(_quantize(self.output_quantizers[i], v) if i < num_outputs else v
                         for i, v in enumerate(out))
        return _quantize(self.output_quantizers[0], out)

    quantized = type(f"Quantized{module_cls.__name__}", (QuantizationMixin, module_cls),
                     {"__quant_init__": __quant_init__, "forward": forward, "__module__": __name__})
    QuantizationMixin.implements(module_cls)(quantized)
    _REGISTERED[module_cls] = quantized
    return quantized


def _register_known() -> None:
    from neoc.deploy.rope import ApplyRoPE4D, TemporalRoPE4D
    from neoc.models.causal_vae import CausalGroupNorm, ChannelAffine
    from neoc.models.latent_norm import LatentNorm
    from neoc.models.mmdit import ApplyRoPE6D, RMSNorm, TemporalRoPE

    for cls in (RMSNorm, TemporalRoPE, TemporalRoPE4D, CausalGroupNorm, ChannelAffine, LatentNorm):
        register_leaf(cls)
    for cls in (ApplyRoPE6D, ApplyRoPE4D):
        register_leaf(cls, num_outputs=2)
    try:
        from neoc.models.wan_decoder import CausalConv3d, ChannelRMSNorm

        register_leaf(CausalConv3d)
        register_leaf(ChannelRMSNorm)
    except ImportError:  # the Wan decoder is optional
        pass


def _aimet_knows(module_cls: type) -> bool:
    from aimet_torch.nn.fake_quant import _legacy_impl

    return (module_cls in QuantizationMixin.cls_to_qcls or module_cls in QuantizationMixin._ignored_module_types
            or module_cls in getattr(_legacy_impl.FakeQuantizationMixin, "cls_to_qcls", {}))


def ensure_registered(module: nn.Module) -> list[str]:
    """Register a one-output twin for every custom leaf class in ``module`` aimet cannot wrap yet; returns the
    names of the classes registered here (so a report can say which leaves got the generic rule)."""
    added = []
    for sub in module.modules():
        cls = type(sub)
        if list(sub.children()) or cls.forward is nn.Module.forward or _aimet_knows(cls):
            continue
        register_leaf(cls)
        added.append(f"{cls.__module__}.{cls.__name__}")
    return added


_register_known()
