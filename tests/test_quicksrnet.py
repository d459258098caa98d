"""QuickSRNet 2x upsampler: variants, shapes, interpolating start, a tiny training beats bicubic, builder round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neoc.ir.components import build_component, describe_component
from neoc.models.quicksrnet import QuickSRNet, VideoUpsampler, interpolation_taps
from neoc.train import sr


@pytest.mark.parametrize("variant, params", [("small", 22_860), ("medium", 50_604), ("large", 414_972)])
def test_variants_shapes_and_params(variant, params):
    net = QuickSRNet.from_variant(variant)
    assert sum(p.numel() for p in net.parameters()) == params  # component-facts §4 counts at 2x
    x = torch.rand(2, 3, 12, 20)
    y = net(x)
    assert y.shape == (2, 3, 24, 40) and y.min() >= 0 and y.max() <= 1
    video = VideoUpsampler(net)(torch.rand(1, 3, 5, 12, 20) * 2 - 1)
    assert video.shape == (1, 3, 5, 24, 40) and video.abs().max() <= 1


def test_untrained_network_is_an_interpolator():
    x = torch.rand(1, 3, 16, 16) * 0.8 + 0.1
    bilinear = QuickSRNet(channels=8, num_intermediate=1, init="bilinear")(x)
    assert torch.allclose(bilinear, F.interpolate(x, scale_factor=2, mode="bilinear"), atol=1e-6)
    nearest = QuickSRNet.from_variant("large")(x)  # the ito anchor
    assert torch.allclose(nearest, F.interpolate(x, scale_factor=2, mode="nearest"), atol=1e-6)
    assert torch.allclose(interpolation_taps(2).sum(1), torch.ones(2))


def test_tiny_training_beats_bicubic(monkeypatch):
    monkeypatch.setattr(sr, "real_frames", lambda *a, **k: torch.zeros(0, 3, 128, 128))  # toy world only: fast
    settings = sr.SRSettings(variant="small", steps=300, batch_size=8, crop=32, toy_clips=20, eval_toy_clips=4)
    net, result, _ = sr.train(settings, None, progress=False)
    metrics = sr.evaluate(net, settings)["toy"]
    assert metrics["psnr_db"] > metrics["psnr_bicubic_db"], metrics


def test_builder_round_trip():
    module = VideoUpsampler(QuickSRNet.from_variant("medium"))
    name, config = describe_component(module)
    rebuilt = build_component(name, config, "test")
    rebuilt.load_state_dict(module.state_dict())
    x = torch.rand(1, 3, 2, 8, 8) * 2 - 1
    assert name == "neoc.QuickSRNet" and torch.equal(rebuilt(x), module(x))


def test_weights_file_round_trip(tmp_path):
    net = QuickSRNet.from_variant("small")
    path = tmp_path / "sr.safetensors"
    sr.save_upsampler(net, path, {"note": "test"})
    loaded = sr.load_upsampler(path)
    x = torch.rand(1, 3, 1, 8, 8)
    assert torch.equal(loaded(x), VideoUpsampler(net)(x))
