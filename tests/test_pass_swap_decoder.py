"""swap-decoder (Neodragon §3.2): frozen-encoder check, decoder shapes/causality, parameter counts, latent
normalisation (frame 0 vs later frames), eval/train clip separation, the pass end to end on a random-init tiny
pipeline (a few steps, small patches, eval clips at the pipeline's 64x64), refusal without a vae_encoder."""

import math

import pytest
import torch

from neoc import registry
from neoc.config import build_config
from neoc.errors import CheckFailed, InputError
from neoc.manager import PassManager
from neoc.models.taehv import TAEHVDecoder
from neoc.models.wan_decoder import WanDecoder
from neoc.pass_api import PassContext, PassResult
from neoc.recipe import PassEntry

FAST = dict(steps=2, batch_size=1, patch_frames=9, patch_size=32, toy_videos=1, real_windows=1, pool_size=2,
            eval_windows=1, eval_toy_videos=1, eval_frames=9, checkpoint_every=0, warmup=0, latency_frames=9,
            latency_repeats=1)
NORM = (0.15, 0.5, -0.25, 0.3)  # distinct image / video statistics, so frame 0 differs from later frames
CONTRACT_KEYS = ("params_before", "params_after", "psnr_native_db", "psnr_new_db", "lpips_new")


def swap_config(**overrides):
    cls = registry.get_pass("swap-decoder")
    return build_config(cls.Config, {**FAST, **overrides}, "test")


@pytest.fixture(scope="module")
def tiny_pipeline():
    from neoc.zoo.builtin import build

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return build("builtin:pyramid-tiny", random_init=True)


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory):
    """A data root with two short real-format clips: one becomes the eval split, the other trains."""
    from neoc.data.toyworld import ToyWorldDataset
    from neoc.data.videos import write_mp4

    root = tmp_path_factory.mktemp("data")
    for index, name in enumerate(("clip_a.mp4", "clip_b.mp4")):
        video = ToyWorldDataset("eval", 2, num_frames=12, frame_size=64)[index][0]
        write_mp4(video, root / "videos" / name, fps=12)
    return root


def state_bytes(module):
    return {k: v.detach().clone().contiguous().view(-1).view(torch.uint8) for k, v in module.state_dict().items()}


def test_pass_through_manager_keeps_encoder_bit_identical(tiny_pipeline, clip_root, tmp_path, monkeypatch):
    from neoc.ir.runfolder import load_pipeline

    from neoc.models.latent_norm import LatentNorm

    monkeypatch.setenv("NEOC_DATA_DIR", str(clip_root))
    pipeline = tiny_pipeline.clone()
    for role in ("vae_encoder", "vae_decoder"):  # a trained VAE's measured statistics (plain floats, no weights)
        pipeline.component(role).norm = LatentNorm(*NORM)
    encoder_before = state_bytes(pipeline.component("vae_encoder"))
    manager = PassManager([PassEntry("swap-decoder", swap_config())], tmp_path, quiet=True)
    out = manager.run(pipeline)

    metrics = manager.records[0].metrics
    assert manager.records[0].status == "done"
    for key in CONTRACT_KEYS + ("decode_latency_native_s", "decode_latency_new_s", "decode_cpu_native_s",
                                "decode_cpu_new_s"):
        assert math.isfinite(metrics[key]), key
    assert metrics["params_before"] >= 5 * metrics["params_after"]  # TAEHV vs the native causal decoder, toy scale
    assert 0 <= metrics["lpips_new"] and metrics["latency_clip"]["frames"] == 9
    assert metrics["latency_clip"]["latent_frames"] == 2 and metrics["latency_clip"]["height"] == 64
    assert metrics["eval_clip"] == {"frames": 9, "height": 64, "width": 64}  # read at the pipeline's size
    assert metrics["latent_norm"]["image_shift_scale"] == [0.15, 0.5]
    assert all(math.isfinite(v) for d in metrics["psnr_by_frame_db"].values() for v in d.values())
    assert len(metrics["eval_clips"]) == 1 and not set(metrics["eval_clips"]) & set(metrics["train"]["real_clips"])
    assert metrics["train"]["steps"] == 2
    assert metrics["encoder_bit_identical"] is True
    assert (tmp_path / manager.records[0].artifacts["samples"]).is_file()  # original / native / new frames

    encoder_after = state_bytes(out.component("vae_encoder"))
    assert encoder_after.keys() == encoder_before.keys()
    assert all(torch.equal(encoder_after[k], encoder_before[k]) for k in encoder_before)
    assert all(p.requires_grad for p in out.component("vae_encoder").parameters())  # flags handed back
    assert isinstance(out.component("vae_decoder"), TAEHVDecoder)
    assert out.component("vae_decoder").latent_norm == NORM  # the encoder's statistics travel with the decoder
    reloaded = load_pipeline(tmp_path / "passes" / "00-swap-decoder" / "pipeline")
    assert isinstance(reloaded.component("vae_decoder"), TAEHVDecoder)
    assert reloaded.component("vae_decoder").latent_norm == NORM
    latents = torch.randn(1, 16, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(reloaded.component("vae_decoder")(latents), out.component("vae_decoder")(latents))


def test_wan_family_runs(tiny_pipeline, clip_root, tmp_path, monkeypatch):
    monkeypatch.setenv("NEOC_DATA_DIR", str(clip_root))
    pass_cls = registry.get_pass("swap-decoder")
    result, _ = pass_cls(swap_config(family="wan", w_lpips=0.0)).apply(
        tiny_pipeline.clone(), PassContext(seed=0, work_dir=tmp_path, quiet=True))
    assert isinstance(result.pipeline.component("vae_decoder"), WanDecoder)
    assert all(math.isfinite(result.metrics[k]) for k in CONTRACT_KEYS)
    assert result.metrics["family"] == "wan"


def test_refuses_a_pipeline_without_vae_encoder(tmp_path):
    from neoc.testing import toy_pipeline

    with pytest.raises(CheckFailed, match="vae_encoder"):
        PassManager([PassEntry("swap-decoder", swap_config())], tmp_path, quiet=True).run(toy_pipeline())


def test_postcondition_detects_a_one_ulp_encoder_change(tiny_pipeline):
    from neoc.passes.swap_decoder import SwapDecoder, _snapshot

    pipeline = tiny_pipeline.clone()
    pipeline.replace_component("vae_decoder", TAEHVDecoder(16, (8, 8, 8, 8), 1))
    check = SwapDecoder(swap_config())
    check._encoder_before = _snapshot(pipeline.component("vae_encoder"))
    result = PassResult(pipeline, True, {"psnr_native_db": 20.0, "psnr_new_db": 20.0, "lpips_new": 0.1})
    check.check_postconditions(pipeline, result, None)  # untouched: passes
    weight = next(pipeline.component("vae_encoder").parameters())
    with torch.no_grad():
        weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(float("inf")))
    with pytest.raises(CheckFailed, match="encoder changed"):
        check.check_postconditions(pipeline, result, None)


@pytest.mark.parametrize("make", [lambda: TAEHVDecoder(16, (16, 8, 8, 8), 1),
                                  lambda: WanDecoder(16, (16, 16, 8, 8), 1)], ids=["taehv", "wan"])
def test_decoders_are_8x8x8_and_causal(make):
    torch.manual_seed(0)
    decoder = make().eval()
    for latent_frames in (1, 2, 3):
        assert decoder(torch.randn(1, 16, latent_frames, 2, 3)).shape == (1, 3, 1 + 8 * (latent_frames - 1), 16, 24)
    latents = torch.randn(1, 16, 3, 2, 2)
    changed = latents.clone()
    changed[:, :, 2] += 1.0  # the last latent frame decodes to frames 9..16
    with torch.no_grad():
        a, b = decoder(latents), decoder(changed)
    assert torch.equal(a[:, :, :9], b[:, :, :9])  # earlier frames never see a later latent
    assert not torch.allclose(a[:, :, 9:], b[:, :, 9:])


def test_real_scale_parameter_counts():
    """TAEHV by hand: conv_in 16->256 (3x3 + bias); per stage n -> next: 3 MemBlocks (36n^2 + 3n each), a 2x TGrow
    (2n^2, no bias) and a 3x3 conv n -> next (no bias); conv_out 64 -> 3 (+ bias). Wan: the paper's ~74M."""
    widths = (256, 128, 64, 64)
    by_hand = 16 * 256 * 9 + 256 + 64 * 3 * 9 + 3
    for n, nxt in zip(widths, widths[1:]):
        by_hand += 3 * (36 * n * n + 3 * n) + 2 * n * n + 9 * n * nxt
    assert by_hand == 9_910_147
    with torch.device("meta"):
        taehv, wan = TAEHVDecoder(16, widths), WanDecoder(16, (384, 384, 192, 96), 3)
    assert sum(p.numel() for p in taehv.parameters()) == by_hand
    assert abs(sum(p.numel() for p in wan.parameters()) - 74e6) < 1e6


def test_analyze_picks_family_and_scale():
    from types import SimpleNamespace

    from neoc.passes.swap_decoder import build_decoder

    real = SimpleNamespace(spec=SimpleNamespace(height=384, width=640, latent_channels=16))
    tiny = SimpleNamespace(spec=SimpleNamespace(height=64, width=64, latent_channels=16))
    assert build_decoder(real, swap_config(), device="meta").channels == (256, 128, 64, 64)
    assert build_decoder(tiny, swap_config(), device="meta").channels == (48, 32, 16, 16)
    assert isinstance(build_decoder(tiny, swap_config(family="wan"), device="meta"), WanDecoder)


def test_output_bias_starts_at_the_mean_colour():
    from neoc.passes.swap_decoder import init_output_bias, output_conv

    mean = torch.tensor([0.2, -0.1, 0.5])
    for decoder in (TAEHVDecoder(16, (8, 8, 8, 8), 1), WanDecoder(16, (8, 8, 8, 8), 1)):
        init_output_bias(decoder, mean)
        torch.nn.init.zeros_(output_conv(decoder).weight)
        frames = decoder(torch.randn(1, 16, 2, 1, 1))
        assert torch.allclose(frames, mean.view(1, 3, 1, 1, 1).expand_as(frames), atol=1e-6)


def test_config_rejects_misaligned_patches():
    with pytest.raises(InputError, match="patch_frames"):
        swap_config(patch_frames=16)
    with pytest.raises(InputError, match="patch_size"):
        swap_config(patch_size=60)


def test_tiny_defaults_are_at_least_5x_smaller_than_the_native_decoder(tiny_pipeline):
    from neoc.ir.pipeline import count_params
    from neoc.passes.swap_decoder import build_decoder

    native = count_params(tiny_pipeline.component("vae_decoder"))
    taehv = count_params(build_decoder(tiny_pipeline, swap_config(), device="meta"))
    wan = count_params(build_decoder(tiny_pipeline, swap_config(family="wan"), device="meta"))
    assert native >= 5 * taehv and native > wan > taehv


@pytest.mark.parametrize("family", [TAEHVDecoder, WanDecoder], ids=["taehv", "wan"])
def test_first_latent_frame_is_read_with_the_image_statistics(family):
    """Normalised latents (frame 0 image stats, frames 1.. video stats) decode exactly as the same raw latents
    normalised with the video statistics throughout would through a decoder without the constants."""
    from neoc.models.latent_norm import LatentNorm

    torch.manual_seed(0)
    with_norm = family(16, (16, 16, 8, 8), 1, latent_norm=NORM).eval()
    plain = family(16, (16, 16, 8, 8), 1).eval()
    plain.load_state_dict(with_norm.state_dict())  # the constants are not weights
    assert with_norm.state_dict().keys() == plain.state_dict().keys()
    raw = torch.randn(1, 16, 3, 2, 2) * 2 + 0.3
    norm = LatentNorm(*NORM)
    pipeline_latents = norm.normalize(raw)
    video_stats = (raw - NORM[2]) * NORM[3]
    with torch.no_grad():
        expected = plain(video_stats)
        assert torch.allclose(with_norm(pipeline_latents), expected, atol=1e-5)
        assert not torch.allclose(plain(pipeline_latents)[:, :, :1], expected[:, :, :1], atol=1e-3)  # frame 0 differs
        # equal image / video statistics: the map is the identity
        same = family(16, (16, 16, 8, 8), 1, latent_norm=(0.0, 1.0, 0.0, 1.0)).eval()
        same.load_state_dict(plain.state_dict())
        assert torch.equal(same(pipeline_latents), plain(pipeline_latents))


def test_eval_clips_never_train(clip_root, tmp_path, monkeypatch):
    from neoc.pass_api import EvalData
    from neoc.passes.swap_decoder import eval_clip_names, training_clips

    monkeypatch.setenv("NEOC_DATA_DIR", str(clip_root))
    shared = clip_root / "videos"
    ctx = PassContext(seed=0, work_dir=tmp_path, eval=EvalData(videos=shared))
    _, split, clips = eval_clip_names(ctx)  # the training folder itself: only its eval split is evaluated
    assert split == "eval" and len(clips) == 1
    assert [c.name for c in training_clips({c.name for c in clips})] == \
        sorted({"clip_a.mp4", "clip_b.mp4"} - {clips[0].name})
    other = tmp_path / "held_out"
    other.mkdir()
    (other / "clip_b.mp4").symlink_to(shared / "clip_b.mp4")
    _, split, clips = eval_clip_names(PassContext(seed=0, work_dir=tmp_path, eval=EvalData(videos=other)))
    assert split == "all" and [c.name for c in clips] == ["clip_b.mp4"]
    assert "clip_b.mp4" not in {c.name for c in training_clips({"clip_b.mp4"})}


def test_toy_sources_render_at_the_pipeline_size():
    from neoc.passes.swap_decoder import _toy_video

    assert _toy_video("eval", 0, 9, 64, 64, 0).shape == (9, 64, 64, 3)
    assert _toy_video("eval", 0, 9, 48, 64, 0).shape == (9, 48, 64, 3)


def test_decode_latency_times_both_decoders_on_the_same_latents():
    from neoc.passes.swap_decoder import decode_latency

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, latents):
            seen.append(latents)
            return latents

    seconds = decode_latency({"native": Probe(), "new": Probe()}, torch.zeros(1, 16, 7, 1, 1), repeats=2)
    assert set(seconds) == {"native", "new"}
    assert all(v["wall"] >= 0 and v["cpu"] >= 0 for v in seconds.values())
    assert len(seen) == 6 and all(x is seen[0] for x in seen)  # one warm-up + 2 rounds each, same tensor


def test_generated_latents_train_and_report_agreement_with_the_native_decoder(tiny_pipeline, clip_root, tmp_path,
                                                                             monkeypatch):
    """generated_videos > 0: the pipeline's own sampler makes latents, the native decoder their targets; each step
    adds one generated crop (frames from the start, the full decode's crop), and held-out generated videos
    compare new vs native."""
    from neoc.ir.schedule import Schedule
    from neoc.passes.swap_decoder import DecoderDistillation, GeneratedLatents

    monkeypatch.setenv("NEOC_DATA_DIR", str(clip_root))
    pipeline = tiny_pipeline.clone()
    pipeline.with_schedule(Schedule(first_frame_steps=(1, 1, 1), video_steps=(1, 1, 1), guidance_scale=3.0,
                                    video_guidance_scale=2.0, label="one-step"))
    native = pipeline.component("vae_decoder").eval()
    held = GeneratedLatents.generate(pipeline, native, 1, 5, "eval", patch_frames=9, patch_size=32)
    assert held.latents.shape == (1, 16, 7, 8, 8) and held.frames.shape == (1, 3, 49, 64, 64)
    z, x = held.sample(torch.Generator().manual_seed(0))
    assert z.shape == (1, 16, 2, 4, 4) and x.shape == (1, 3, 9, 32, 32)
    full = held.frames[:, :, :9]
    assert any(torch.equal(x, full[..., y:y + 32, c:c + 32]) for y in range(0, 33, 8) for c in range(0, 33, 8))

    decoder = TAEHVDecoder(16, (16, 8, 8, 8), 1)
    batch = {"latents": z, "frames": x, "gen_latents": z, "gen_frames": x}
    with_term, metrics = DecoderDistillation(decoder, None, 1.0, 0.0, generated_weight=2.0)(batch)
    without, _ = DecoderDistillation(decoder, None, 1.0, 0.0)(batch)
    assert torch.allclose(with_term, 3.0 * without) and "gen_mse" in metrics

    pass_cls = registry.get_pass("swap-decoder")
    result, _ = pass_cls(swap_config(generated_videos=1, generated_eval_videos=1)).apply(
        pipeline, PassContext(seed=0, work_dir=tmp_path, quiet=True))
    generated = result.metrics["generated"]
    assert generated["videos"] == 1 and generated["eval_videos"] == 1
    assert math.isfinite(generated["psnr_new_vs_native_db"]) and generated["frame_change_new"] >= 0


def test_temporal_term_penalises_flicker_not_a_constant_offset():
    from neoc.passes.swap_decoder import DecoderDistillation

    class Fixed(torch.nn.Module):  # a "decoder" that returns a given video, whatever the latents
        def __init__(self, video):
            super().__init__()
            self.video = video

        def forward(self, latents):
            return self.video

    target = torch.linspace(-0.5, 0.5, 9).view(1, 1, 9, 1, 1).expand(1, 3, 9, 4, 4).contiguous()
    offset = target + 0.2                                                    # same motion, wrong level
    flicker = target + 0.2 * torch.tensor([1.0, -1.0] * 4 + [1.0]).view(1, 1, 9, 1, 1)  # same error size, flickers
    batch = {"latents": torch.zeros(1, 16, 2, 1, 1), "frames": target}
    losses = {}
    for name, video in (("offset", offset), ("flicker", flicker)):
        plain, _ = DecoderDistillation(Fixed(video), None, 1.0, 0.0)(batch)
        with_term, metrics = DecoderDistillation(Fixed(video), None, 1.0, 0.0, w_temporal=10.0)(batch)
        assert torch.allclose(plain, torch.tensor(0.04))  # the per-frame MSE cannot tell them apart
        losses[name] = float(with_term)
        assert "temporal_mse" in metrics
    assert losses["offset"] == pytest.approx(0.04) and losses["flicker"] > 0.04 + 10 * 0.1


def test_init_starts_from_pretrained_weights_and_reports_what_it_loaded(tiny_pipeline, clip_root, tmp_path,
                                                                         monkeypatch):
    """init: a .safetensors file: tensors with matching names and shapes are loaded (an optional 'vae_decoder.'
    prefix dropped), the rest keep their init and are listed; the start is scored before training."""
    from safetensors.torch import save_file

    from neoc.passes.swap_decoder import build_decoder

    monkeypatch.setenv("NEOC_DATA_DIR", str(clip_root))
    config = swap_config(lr=0.0, ema_decay=0.0)
    torch.manual_seed(123)
    pretrained = build_decoder(tiny_pipeline, config).state_dict()
    dropped = sorted(pretrained)[0]
    tensors = {f"vae_decoder.{k}": v.clone() for k, v in pretrained.items() if k != dropped}
    tensors["vae_decoder.not.in.this.decoder"] = torch.zeros(3)
    path = tmp_path / "pretrained.safetensors"
    save_file(tensors, str(path))

    pass_cls = registry.get_pass("swap-decoder")
    result, _ = pass_cls(swap_config(lr=0.0, ema_decay=0.0, init=str(path))).apply(
        tiny_pipeline.clone(), PassContext(seed=0, work_dir=tmp_path / "work", quiet=True))
    init = result.metrics["init"]
    assert init["loaded"] == len(pretrained) - 1 and init["tensors"] == len(pretrained)
    assert init["reinitialised"] == [dropped] and init["unused"] == ["not.in.this.decoder"]
    assert math.isfinite(init["psnr_db"]) and init["lpips"] >= 0
    state = result.pipeline.component("vae_decoder").state_dict()
    loaded = [k for k in pretrained if k != dropped and pretrained[k].is_floating_point()]
    assert all(torch.equal(state[k], pretrained[k]) for k in loaded)  # lr 0: what was loaded is what ships

    scratch, _ = pass_cls(swap_config(lr=0.0, ema_decay=0.0)).apply(
        tiny_pipeline.clone(), PassContext(seed=0, work_dir=tmp_path / "scratch", quiet=True))
    assert scratch.metrics["init"]["path"] is None
    assert not torch.equal(scratch.pipeline.component("vae_decoder").state_dict()[loaded[0]], pretrained[loaded[0]])


def test_init_refuses_weights_it_cannot_use(tiny_pipeline, tmp_path):
    from safetensors.torch import save_file

    from neoc.passes.swap_decoder import load_pretrained, pretrained_weights

    with pytest.raises(Exception, match="init must be"):
        swap_config(init="decoder.pt")  # pickle checkpoints are never loaded
    with pytest.raises(InputError, match="not a file"):
        pretrained_weights(tiny_pipeline, str(tmp_path / "missing.safetensors"), "taehv")
    other = tiny_pipeline.clone()
    other.source = "/models/some-video-dit"
    with pytest.raises(InputError, match="ships no pretrained taehv decoder"):
        pretrained_weights(other, "builtin", "taehv")
    with pytest.raises(InputError, match="ships no pretrained wan decoder"):
        pretrained_weights(tiny_pipeline, "builtin", "wan")
    save_file({"vae_decoder.layers.0.weight": torch.zeros(2, 2)}, str(tmp_path / "wrong.safetensors"))
    tensors, where = pretrained_weights(tiny_pipeline, str(tmp_path / "wrong.safetensors"), "taehv")
    with pytest.raises(InputError, match="none of its 1 tensors matches"):
        load_pretrained(TAEHVDecoder(16, (16, 8, 8, 8), 1), tensors, where)


def test_builtin_init_is_the_shipped_pretrained_taehv_for_this_layout(tiny_pipeline):
    """builtin:pyramid-tiny ships a TAEHV pretrained on a sibling latent space (build_tiny stage taehv): every
    tensor of the tiny profile's decoder layout comes from it."""
    from neoc.passes.swap_decoder import build_decoder, load_pretrained, pretrained_weights

    tensors, where = pretrained_weights(tiny_pipeline, "builtin", "taehv")
    assert where.name == "pyramid-tiny-taehv.safetensors"
    record = load_pretrained(build_decoder(tiny_pipeline, swap_config()), tensors, where)
    assert record["reinitialised"] == [] and record["unused"] == [] and record["loaded"] == len(tensors)


def test_generated_crops_can_span_the_whole_clip():
    """generated_frames: 49 crops every latent frame of a generated video (a 17-frame patch reaches only the first
    three), still from the start, with the matching crop of the whole-video native decode."""
    from neoc.passes.swap_decoder import GeneratedLatents

    latents, frames = torch.randn(2, 16, 7, 8, 8), torch.randn(2, 3, 49, 64, 64)
    z, x = GeneratedLatents(latents, frames, 49, 32).sample(torch.Generator().manual_seed(3))
    assert z.shape == (1, 16, 7, 4, 4) and x.shape == (1, 3, 49, 32, 32)
    assert any(torch.equal(x, frames[i:i + 1, :, :, 8 * y:8 * y + 32, 8 * c:8 * c + 32])
               for i in range(2) for y in range(5) for c in range(5))
    with pytest.raises(Exception, match="1 \\+ 8k"):
        swap_config(generated_frames=20)


def test_refuses_generated_crops_larger_than_the_video(tiny_pipeline, tmp_path):
    pass_cls = registry.get_pass("swap-decoder")
    with pytest.raises(CheckFailed, match="generated_frames / generated_size"):
        pass_cls(swap_config(generated_frames=57)).check_preconditions(
            tiny_pipeline, PassContext(seed=0, work_dir=tmp_path, quiet=True))
