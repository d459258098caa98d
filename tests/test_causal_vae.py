"""CausalVideoVAE and latent normalisation: released counts/keys (meta), shapes, causality, chunking,
tiling, and the pipeline wrappers. Numbers by hand from reference/pyramid-flow-facts.md §3, §6."""

from __future__ import annotations

import pytest
import torch

from neoc.models.causal_vae import CausalVideoVAE, DiagonalGaussianDistribution
from neoc.models.checkpoint import load_state_dict_strict
from neoc.models.latent_norm import LatentNorm, VAELatentDecoder, VAELatentEncoder
from neoc.zoo.model_configs import SD3_VAE_CONFIG, TINY_VAE_CONFIG


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def sd3_meta() -> CausalVideoVAE:
    with torch.device("meta"):
        return CausalVideoVAE.from_config(SD3_VAE_CONFIG)


def test_sd3_parameter_counts(sd3_meta):
    assert n_params(sd3_meta.encoder) == 109_632_032
    assert n_params(sd3_meta.decoder) == 225_768_707  # post_quant_conv (272) is NOT included
    assert n_params(sd3_meta.post_quant_conv) == 272
    assert n_params(sd3_meta.quant_conv) == 1_056
    assert n_params(sd3_meta) == 335_402_067
    assert len(sd3_meta.state_dict()) == 260
    assert n_params(sd3_meta.decoder.mid_block) == 29_369_344
    assert [n_params(b) for b in sd3_meta.decoder.up_blocks] == [84_946_944, 84_946_944, 23_141_120, 3_132_032]


def test_sd3_released_key_names_and_shapes(sd3_meta):
    shapes = {k: tuple(v.shape) for k, v in sd3_meta.state_dict().items()}
    expected = {
        "encoder.conv_in.conv.weight": (128, 3, 3, 3, 3),
        "encoder.down_blocks.1.resnets.0.conv_shortcut.conv.weight": (256, 128, 1, 1, 1),
        "encoder.down_blocks.0.downsamplers.0.conv.conv.weight": (128, 128, 3, 3, 3),
        "encoder.down_blocks.2.temporal_downsamplers.0.conv.conv.weight": (512, 512, 3, 3, 3),
        "encoder.mid_block.attentions.0.group_norm.weight": (512,),
        "encoder.mid_block.attentions.0.to_q.weight": (512, 512),
        "encoder.mid_block.attentions.0.to_out.0.bias": (512,),
        "encoder.conv_norm_out.weight": (512,),
        "encoder.conv_out.conv.weight": (32, 512, 3, 3, 3),
        "quant_conv.conv.weight": (32, 32, 1, 1, 1),
        "post_quant_conv.conv.weight": (16, 16, 1, 1, 1),
        "decoder.conv_in.conv.weight": (512, 16, 3, 3, 3),
        "decoder.up_blocks.0.upsamplers.0.conv.conv.weight": (2048, 512, 3, 3, 3),
        "decoder.up_blocks.0.temporal_upsamplers.0.conv.conv.weight": (1024, 512, 3, 3, 3),
        "decoder.up_blocks.2.resnets.0.conv_shortcut.conv.weight": (256, 512, 1, 1, 1),
        "decoder.up_blocks.2.resnets.2.norm2.bias": (256,),
        "decoder.up_blocks.3.resnets.0.conv_shortcut.conv.weight": (128, 256, 1, 1, 1),
        "decoder.conv_out.conv.weight": (3, 128, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert "decoder.up_blocks.3.upsamplers.0.conv.conv.weight" not in shapes
    assert "encoder.down_blocks.3.temporal_downsamplers.0.conv.conv.weight" not in shapes


def test_legacy_attention_names_load(sd3_meta):
    state = {k: torch.empty(v.shape, device="meta") for k, v in sd3_meta.state_dict().items()}
    for old, new in (("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0")):
        for suffix in ("weight", "bias"):
            prefix = "decoder.mid_block.attentions.0."
            state[f"{prefix}{old}.{suffix}"] = state.pop(f"{prefix}{new}.{suffix}")
    load_state_dict_strict(sd3_meta, state, "legacy-vae")


# -- tiny VAE behaviour -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> CausalVideoVAE:
    torch.manual_seed(0)
    vae = CausalVideoVAE.from_config(TINY_VAE_CONFIG).eval()
    with torch.no_grad():  # non-trivial random weights (default init leaves norms at identity)
        for name, parameter in vae.named_parameters():
            if "norm" in name and name.endswith("weight"):
                parameter.normal_(1.0, 0.1)
            else:
                parameter.normal_(0.0, 0.05)
    return vae


def test_tiny_param_counts():
    vae = CausalVideoVAE.from_config(TINY_VAE_CONFIG)
    assert n_params(vae.encoder) == 1_253_184
    assert n_params(vae.decoder) == 3_045_251


def test_shapes_one_frame_and_49_frames(tiny):
    with torch.no_grad():
        z1 = tiny.encode(torch.randn(1, 3, 1, 16, 16)).mode()
        assert z1.shape == (1, 16, 1, 2, 2)
        assert tiny.decode(z1).shape == (1, 3, 1, 16, 16)
        z = tiny.encode(torch.randn(1, 3, 49, 16, 16)).mode()
        assert z.shape == (1, 16, 7, 2, 2)
        assert tiny.decode(z).shape == (1, 3, 49, 16, 16)


def test_encoder_is_causal(tiny):
    frames = torch.randn(1, 3, 17, 16, 16)
    later_changed = frames.clone()
    later_changed[:, :, 9:] = torch.randn(1, 3, 8, 16, 16)
    first_kept = frames.clone()
    first_kept[:, :, 1:] = torch.randn(1, 3, 16, 16, 16)
    with torch.no_grad():
        z = tiny.encode(frames).mean
        z_later = tiny.encode(later_changed).mean
        z_first = tiny.encode(first_kept).mean
    assert torch.equal(z[:, :, :2], z_later[:, :, :2])  # frames 9+ do not reach latents 0 and 1
    assert not torch.allclose(z[:, :, 2], z_later[:, :, 2])
    assert torch.equal(z[:, :, :1], z_first[:, :, :1])  # latent 0 sees pixel frame 0 only


@pytest.mark.parametrize("window", [1, 2])
def test_chunked_decode_equals_full_decode(tiny, window):
    z = torch.randn(1, 16, 4, 1, 1)  # windows: [2, 1, 1] latents for window 1, [3, 1] for window 2
    with torch.no_grad():
        full = tiny.decode(z)
        chunked = tiny.decode(z, temporal_chunk=True, window_size=window)
    assert chunked.shape == full.shape == (1, 3, 25, 8, 8)
    assert torch.allclose(chunked, full, atol=1e-5, rtol=1e-5)


def test_chunked_encode_equals_full_encode(tiny):
    x = torch.randn(1, 3, 17, 8, 8)  # windows of 9 and 8 frames
    with torch.no_grad():
        full = tiny.encode(x).mean
        chunked = tiny.encode(x, temporal_chunk=True, window_size=8).mean
    assert torch.allclose(chunked, full, atol=1e-5, rtol=1e-5)


def test_tiled_decode_geometry_and_linear_blend(tiny):
    # 6x6 latents, 32-px tiles = 4 latents, stride int(0.75*4) = 3 latents (24 px), blend 8 px, keep 24 px
    z = torch.randn(1, 16, 1, 6, 6)
    with torch.no_grad():
        tiny.enable_tiling()
        try:
            tiled = tiny.decode(z, tile_sample_min_size=32)
        finally:
            tiny.enable_tiling(False)
        tile00 = tiny.decode(z[..., 0:4, 0:4])
        tile01 = tiny.decode(z[..., 0:4, 3:6])
    assert tiled.shape == (1, 3, 1, 48, 48)
    assert torch.allclose(tiled[..., :24, :24], tile00[..., :24, :24], atol=1e-6)
    for x in range(8):  # columns 24..31: cross-fade from tile (0,0) into tile (0,1)
        expected = tile00[..., :24, 24 + x] * (1 - x / 8) + tile01[..., :24, x] * (x / 8)
        assert torch.allclose(tiled[..., :24, 24 + x], expected, atol=1e-6)
    assert torch.allclose(tiled[..., :24, 32:48], tile01[..., :24, 8:24], atol=1e-6)  # tile (0,1) after the seam


def test_tiled_decode_close_to_full_decode_for_a_local_decoder(tiny):
    """Random decoders are dominated by tile-border zero padding and per-tile GroupNorm statistics, so
    "close" is only meaningful for a decoder without spatial context: keep every kernel's centre tap,
    switch off the mid-block attention, and decode a constant latent -> tiles must stitch seamlessly."""
    import copy

    local = copy.deepcopy(tiny)
    with torch.no_grad():
        for module in local.modules():
            if isinstance(module, torch.nn.Conv3d) and module.kernel_size[1] == 3:
                centre = module.weight[:, :, :, 1, 1].clone()
                module.weight.zero_()
                module.weight[:, :, :, 1, 1] = centre
        local.decoder.mid_block.attentions[0].to_out[0].weight.zero_()
        local.decoder.mid_block.attentions[0].to_out[0].bias.zero_()
        z = torch.full((1, 16, 1, 6, 6), 0.5)
        full = local.decode(z)
        local.enable_tiling()
        tiled = local.decode(z, tile_sample_min_size=32)
    assert tiled.shape == full.shape == (1, 3, 1, 48, 48)
    assert torch.allclose(tiled, full, atol=1e-5)


def test_gaussian_clamps_logvar_and_samples_reproducibly():
    moments = torch.cat([torch.zeros(1, 2, 1, 1, 1), torch.tensor([-100.0, 100.0]).view(1, 2, 1, 1, 1)], dim=1)
    posterior = DiagonalGaussianDistribution(moments)
    assert posterior.logvar.flatten().tolist() == [-30.0, 20.0]
    a = posterior.sample(torch.Generator().manual_seed(3))
    b = posterior.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(posterior.mode(), torch.zeros(1, 2, 1, 1, 1))


# -- latent normalisation and wrappers --------------------------------------------------------------


def test_latent_norm_constants_by_hand():
    norm = LatentNorm.sd3()
    z = torch.ones(1, 1, 3, 1, 1)
    normalized = norm.normalize(z).flatten().tolist()
    assert normalized[0] == pytest.approx((1 - 0.1490) / 1.8415)
    assert normalized[1] == normalized[2] == pytest.approx((1 + 0.2343) / 3.0986)
    assert norm.normalize(torch.full((1, 1, 1, 1, 1), 0.1490)).item() == pytest.approx(0.0, abs=1e-7)
    assert torch.allclose(norm.denormalize(norm.normalize(z)), z, atol=1e-6)


def test_vae_latent_decoder_and_encoder_wrappers(tiny):
    norm = LatentNorm.sd3()
    decoder = VAELatentDecoder(tiny, norm)
    assert set(k.split(".")[0] for k in decoder.state_dict()) == {"post_quant_conv", "decoder"}
    latents = torch.randn(1, 16, 2, 1, 1)
    with torch.no_grad():
        frames = decoder(latents)
        assert frames.shape == (1, 3, 9, 8, 8)
        assert torch.equal(frames, tiny.decode(norm.denormalize(latents)))
        chunked = VAELatentDecoder((tiny.post_quant_conv, tiny.decoder), norm, temporal_chunk=True, window_size=1)
        assert torch.allclose(chunked(latents), frames, atol=1e-5)

        video = torch.rand(1, 3, 9, 8, 8) * 2 - 1
        encoder = VAELatentEncoder(tiny, norm)
        encoded = encoder(video)
        assert encoded.shape == (1, 16, 2, 1, 1)
        assert torch.equal(encoded, norm.normalize(tiny.encode(video).mode()))
        sampler = VAELatentEncoder(tiny, norm, sample_mode="sample")
        s1 = sampler(video, torch.Generator().manual_seed(0))
        s2 = sampler(video, torch.Generator().manual_seed(0))
        assert torch.equal(s1, s2) and not torch.equal(s1, encoded)


def test_norm_groups_zero_is_a_per_channel_affine_under_the_same_keys():
    from neoc.models.causal_vae import ChannelAffine

    config = {**TINY_VAE_CONFIG, "encoder_norm_num_groups": 0, "decoder_norm_num_groups": 0}
    torch.manual_seed(0)
    plain = CausalVideoVAE(**config)
    normed = CausalVideoVAE(**TINY_VAE_CONFIG)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in normed.state_dict().items()}
    norms = [m for m in plain.modules() if isinstance(m, ChannelAffine)]
    assert norms and not any(isinstance(m, torch.nn.GroupNorm) for m in plain.modules())
    x = torch.randn(1, 4, 2, 3, 3)
    affine = ChannelAffine(4)
    affine.weight.data = torch.tensor([1.0, 2.0, -1.0, 0.5])
    affine.bias.data = torch.tensor([0.0, 1.0, 0.0, -2.0])
    expected = x * affine.weight.view(1, 4, 1, 1, 1) + affine.bias.view(1, 4, 1, 1, 1)
    assert torch.equal(affine(x), expected)  # no statistics: a constant input stays constant
    out = plain.decode(plain.encode(torch.rand(1, 3, 9, 64, 64) * 2 - 1).mode())
    assert out.shape == (1, 3, 9, 64, 64) and torch.isfinite(out).all()


def test_inflated_init_starts_as_per_frame_2d_convs_with_identity_blocks():
    from neoc.models.causal_vae import CausalConv3d, CausalResnetBlock3D, reset_parameters_inflated

    torch.manual_seed(0)
    vae = CausalVideoVAE(**TINY_VAE_CONFIG)
    reset_parameters_inflated(vae, torch.Generator().manual_seed(1))
    for module in vae.modules():
        if isinstance(module, CausalConv3d):
            weight = module.conv.weight
            assert torch.count_nonzero(weight[:, :, :-1]) == 0  # only the current-frame tap
            if not any(module is block.conv2 for block in vae.modules() if isinstance(block, CausalResnetBlock3D)):
                fan_in = weight.shape[1] * weight.shape[3] * weight.shape[4]
                assert abs(weight[:, :, -1].std().item() * fan_in ** 0.5 - 1.0) < 0.35
    block = vae.decoder.up_blocks[0].resnets[0]
    x = torch.randn(1, block.conv1.conv.in_channels, 3, 4, 4)
    assert torch.equal(block(x), x)  # zero second conv, no shortcut: the identity
    # per-frame 2D at init: frame 1's latent does not depend on frame 0's pixels
    video = torch.rand(1, 3, 9, 32, 32)
    changed = video.clone()
    changed[:, :, 0] = 0
    a, b = vae.encode(video).mode(), vae.encode(changed).mode()
    assert not torch.allclose(a[:, :, 0], b[:, :, 0])
    # and the initialisation is reproducible from the generator (and torch's seed, for the linear layers)
    torch.manual_seed(0)
    again = CausalVideoVAE(**TINY_VAE_CONFIG)
    reset_parameters_inflated(again, torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(vae.parameters(), again.parameters()))
