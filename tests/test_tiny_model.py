"""The shipped ``builtin:pyramid-tiny`` weights: they load, generate 49 frames, and sampling is seeded; plus the
small pure helpers of the build (``neoc.zoo.build_tiny``).

Tests of the shipped weights are skipped (naming the rebuild command) when
``neoc/zoo/weights/pyramid-tiny.safetensors`` is absent.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from neoc.ir.schedule import Schedule
from neoc.zoo.builtin import REBUILD_HINT, TINY_META, TINY_SIZE, TINY_WEIGHTS

needs_weights = pytest.mark.skipif(not TINY_WEIGHTS.is_file(),
                                   reason=f"shipped tiny weights absent ({TINY_WEIGHTS.name}); build them with "
                                          f"`{REBUILD_HINT} --ship`")

PROMPT = "a red circle moves to the right over a plain black background"


@pytest.fixture(scope="module")
def pipe():
    """The shipped pipeline, run single-threaded: on a loaded 2-core machine two OpenMP threads made these
    small-op graphs ~25x slower (spinning barriers), one thread is fast and deterministic."""
    from neoc.zoo.builtin import build

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build("builtin:pyramid-tiny")
    torch.set_num_threads(threads)


def _inputs(pipe, seed: int) -> dict[str, torch.Tensor]:
    shapes = pipe.input_shapes()
    inputs = {k: v for k, v in pipe.prompt_encoder.encode_for_guidance([PROMPT]).items() if k in shapes}
    inputs.update(pipe.draw_noise(seed))
    return inputs


@needs_weights
def test_metadata_and_size():
    meta = json.loads(TINY_META.read_text())
    assert len(meta["latent_norm"]) == 4 and meta["latent_norm"][1] > 0 and meta["latent_norm"][3] > 0
    assert len(meta["guidance"]) == 2 and all(g > 1 for g in meta["guidance"])
    assert {"command", "vae", "denoiser"} <= set(meta["training"])
    assert TINY_WEIGHTS.stat().st_size <= 30 * 2**20


@needs_weights
def test_pipeline_carries_measured_norm_and_guidance(pipe):
    meta = json.loads(TINY_META.read_text())
    norm = pipe.components["vae_decoder"].norm
    assert [norm.image_shift, norm.image_scale, norm.video_shift, norm.video_scale] == pytest.approx(meta["latent_norm"])
    assert [pipe.schedule.guidance_scale, pipe.schedule.video_guidance_scale] == pytest.approx(meta["guidance"])


@needs_weights
def test_short_schedule_sampling_is_deterministic_by_seed(pipe):
    """Sampler + denoiser + text encoders (decoder swapped for identity: latents [1, 16, 7, 8, 8])."""
    latent_pipe = pipe.clone()
    latent_pipe.replace_component("vae_decoder", nn.Identity())
    latent_pipe.with_schedule(Schedule(first_frame_steps=(2, 2, 2), video_steps=(1, 1, 1), guidance_scale=7.0,
                                       video_guidance_scale=5.0, label="short"))
    first = latent_pipe.run_graph(_inputs(latent_pipe, seed=3))
    again = latent_pipe.run_graph(_inputs(latent_pipe, seed=3))
    other = latent_pipe.run_graph(_inputs(latent_pipe, seed=4))
    assert first.shape == (1, 16, 7, TINY_SIZE // 8, TINY_SIZE // 8) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@needs_weights
@pytest.mark.slow
def test_49_frame_generation(pipe):
    """One short-schedule generation through the real decoder (~10-25 s on a 2-core CPU)."""
    pipe.with_schedule(Schedule(first_frame_steps=(1, 1, 1), video_steps=(1, 1, 1), guidance_scale=7.0,
                                video_guidance_scale=5.0, label="short"))
    video = pipe.run_graph(_inputs(pipe, seed=0))
    assert video.shape == (1, 3, 49, TINY_SIZE, TINY_SIZE)
    assert torch.isfinite(video).all() and float(video.abs().max()) < 4.0


# ---- build helpers (no weights needed) -------------------------------------------------------------------------
def test_latent_norm_constants_by_hand():
    from neoc.zoo.build_tiny import latent_norm_constants

    videos = torch.zeros(2, 1, 3, 1, 2)
    videos[:, :, 0] = torch.tensor([1.0, 3.0])        # first frames: mean 2, std 1.1547 (n-1)
    videos[:, :, 1:] = torch.tensor([-1.0, 1.0])      # later frames: mean 0, std 1.0328 (n-1 over 8 values)
    images = torch.full((1, 1, 1, 1, 2), 2.0)         # two more first-frame values at the mean
    shift, scale, vshift, vscale = latent_norm_constants(videos, images)
    assert shift == pytest.approx(2.0) and scale == pytest.approx(1 / (4 / 5) ** 0.5)  # var = 4/(6-1)
    assert vshift == pytest.approx(0.0) and vscale == pytest.approx(1 / (8 / 7) ** 0.5)


def test_build_settings_overrides_keep_types_and_reject_unknown_keys(monkeypatch, tmp_path):
    from neoc.errors import InputError
    from neoc.zoo import build_tiny
    from neoc.zoo.build_tiny import FULL, launch, main, settings

    cfg = settings(False, ["den_steps=7900", "den_lr=1", "cfg_grid=[[3, 2]]"])
    assert cfg["den_steps"] == 7900 and cfg["den_lr"] == 1.0 and isinstance(cfg["den_lr"], float)
    assert cfg["cfg_grid"] == [[3, 2]] and FULL["den_steps"] != 7900  # the module's settings are untouched
    assert settings(False, ["den_t_sampling=logit_normal"])["den_t_sampling"] == "logit_normal"
    for bad in ("den_step=10", "den_steps", "den_steps=1.5", "den_steps=lots", "den_t_sampling=cosine",
                "den_logit_std=0", "den_init=imagenet", "encode_dtype=fp16", "den_fg_weight=-1",
                "den_schedule=linear", "den_min_lr_ratio=1.5"):
        with pytest.raises(InputError, match="--set"):
            settings(False, [bad])
    with pytest.raises(SystemExit):  # the CLI reports it as a usage error before any stage runs
        main(["--out", str(tmp_path / "never-created"), "--set", "den_step=10"])
    assert not (tmp_path / "never-created").exists()
    commands = []  # the stage processes get the same overrides
    monkeypatch.setattr(build_tiny.subprocess, "run", lambda cmd, **kwargs: commands.append(cmd))
    launch("cfg", tmp_path, False, 1, ["den_steps=7900"])
    assert commands[0][-2:] == ["--set", "den_steps=7900"]


def test_denoiser_schedule_constant_continues_and_cosine_cools_down():
    from neoc.zoo.build_tiny import denoiser_schedule, settings

    constant = denoiser_schedule(settings(False, ["den_warmup=10", "den_steps=100"]))
    assert constant(4) == pytest.approx(0.5) and constant(99) == constant(10_000) == 1.0
    cosine = denoiser_schedule(settings(False, ["den_warmup=10", "den_steps=100", "den_schedule=cosine",
                                                "den_min_lr_ratio=0.05"]))
    assert cosine(4) == pytest.approx(0.5) and cosine(10) == pytest.approx(1.0)
    assert cosine(55) == pytest.approx(0.525) and cosine(100) == pytest.approx(0.05)
    assert all(cosine(i) >= cosine(i + 1) for i in range(10, 100))


def test_vae_noise_is_annealed_then_off():
    from neoc.zoo.build_tiny import VAEBatches

    batches = VAEBatches.__new__(VAEBatches)
    batches.cfg = {"vae_noise_until": 10, "vae_noise_off_at": 20}
    assert [batches.noise_scale(s) for s in (0, 9, 10, 15, 20, 30)] == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    batches.cfg = {"vae_noise_until": 0, "vae_noise_off_at": 0}
    assert batches.noise_scale(0) == 0.0


def test_dit_init_makes_the_denoiser_start_at_zero():
    from neoc.models.mmdit import PyramidMMDiT
    from neoc.zoo.build_tiny import dit_init

    denoiser = PyramidMMDiT(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                            num_attention_heads=2, caption_projection_dim=16, pooled_projection_dim=8,
                            pos_embed_max_size=8, joint_attention_dim=12)
    dit_init(denoiser)
    out = denoiser([[torch.randn(1, 4, 1, 8, 8)]], torch.randn(1, 3, 12), torch.ones(1, 3), torch.randn(1, 8),
                   torch.tensor([500.0]))
    assert torch.equal(out[0], torch.zeros(1, 4, 1, 8, 8))


def test_pixel_weight_and_lowres_terms_of_the_vae_objective():
    """Uniform weights give the plain loss; weighting one pixel makes its error dominate; the pooled term
    only sees colour at 4x4 resolution (a +1/-1 checkerboard error pools to zero)."""
    from neoc.train.vae_objective import VAEReconstructionObjective

    frames = torch.zeros(1, 3, 1, 8, 8)
    recon = frames.clone()
    recon[..., 0, 0] = 1.0  # one wrong pixel
    objective = VAEReconstructionObjective.__new__(VAEReconstructionObjective)
    torch.nn.Module.__init__(objective)
    objective.kl_weight, objective.freeze_encoder, objective.lowres_weight = 0.0, False, 0.0
    objective.temporal_weight = 0.0

    class Posterior:
        mean = torch.zeros(1)
        var = torch.ones(1)
        logvar = torch.zeros(1)

    objective.reconstruct = lambda f, noise=None: (recon, Posterior())
    plain, _ = objective({"frames": frames})
    uniform, _ = objective({"frames": frames, "pixel_weight": torch.full((1, 1, 1, 8, 8), 3.0)})
    assert float(uniform) == pytest.approx(float(plain))
    mask = torch.zeros(1, 1, 1, 8, 8)
    mask[..., 0, 0] = 1.0
    weighted, _ = objective({"frames": frames, "pixel_weight": 1.0 + 63.0 * mask})
    assert float(weighted) == pytest.approx(2 * 64 / 127)  # (l1 + mse) of 1.0, weight 64 of a total 127
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1.0
    recon = frames + checker
    objective.lowres_weight = 1.0
    _, metrics = objective({"frames": frames})
    assert float(metrics["lowres_mse"]) == pytest.approx(0.0, abs=1e-7)
    # temporal term: a constant offset on every frame has no temporal error; alternating frames (flicker) do
    objective.lowres_weight, objective.temporal_weight = 0.0, 1.0
    frames = torch.zeros(1, 3, 4, 8, 8)
    recon = frames + 0.5
    _, metrics = objective({"frames": frames})
    assert float(metrics["temporal_mse"]) == pytest.approx(0.0, abs=1e-7)
    recon = frames + torch.tensor([0.0, 0.5, 0.0, 0.5]).view(1, 1, 4, 1, 1)
    _, metrics = objective({"frames": frames})
    assert float(metrics["temporal_mse"]) == pytest.approx(0.25)


def test_vae_batches_carry_object_masks_when_asked():
    from neoc.zoo.build_tiny import VAEBatches

    class Ctx:
        step = 0
        generator = torch.Generator().manual_seed(0)

    cfg = {"vae_image_prob": 0.0, "vae_frames": 9, "vae_crop": TINY_SIZE, "vae_batch": 2, "vae_real_prob": 0.0,
           "vae_noise_until": 0, "vae_noise_off_at": 0, "vae_fg_weight": 10.0}
    batches = VAEBatches.__new__(VAEBatches)
    batches.cfg, batches.seed, batches.real = cfg, 0, []
    batch = batches(Ctx())
    weight = batch["pixel_weight"]
    assert weight.shape == (2, 1, 9, TINY_SIZE, TINY_SIZE)
    assert float(weight.min()) == 1.0 and float(weight.max()) == 11.0
    # the heavy pixels are where the object is: they differ from the frame's most common (background) colour
    frames = batch["frames"]
    heavy = weight[:, 0] > 6.0
    assert 0.002 < float(heavy.float().mean()) < 0.3
    assert frames.shape == (2, 3, 9, TINY_SIZE, TINY_SIZE)
    batches.cfg = {**cfg, "vae_fg_weight": 0.0}
    assert "pixel_weight" not in batches(Ctx())



def test_flow_batches_weigh_the_object_cells_when_asked(tmp_path):
    import attrs
    import numpy as np
    from safetensors.torch import save_file

    from neoc.data.toyworld import coverage, latent_object_mask, sample_scene
    from neoc.zoo.build_tiny import FlowBatches, settings

    scene = sample_scene(np.random.default_rng(3), shape="square", motion="right")
    mask = latent_object_mask(scene, 7, 8)
    assert mask.shape == (7, 8, 8) and float(mask.max()) == 1.0
    assert torch.isclose(mask[0].mean(), coverage(scene, 1, TINY_SIZE).mean())     # frame 0: area shares
    centre = (int(scene.y / 2 // 8), int(scene.x / 2 // 8))                          # 128-px scene coordinates
    assert float(mask[0][centre]) > 0.5 and 0.01 < float((mask > 0).float().mean()) < 0.3
    assert float(mask[6].argmax() % 8) > float(mask[0].argmax() % 8)                 # it moved right
    # every item shows the same scene, so every drawn item's weights are 1 + w * that scene's mask
    save_file({"video_latents": torch.randn(3, 4, 7, 8, 8), "image_latents": torch.randn(2, 4, 1, 8, 8)},
              str(tmp_path / "latents.safetensors"))
    item = {"caption": "x", "scene": attrs.asdict(scene)}
    (tmp_path / "latents.json").write_text(json.dumps({"videos": [item] * 3, "images": [item] * 2}))

    class Tokens:
        def encode(self, texts):
            return {"t5_ids": torch.zeros(len(texts), 4, dtype=torch.long)}

    class Ctx:
        generator = torch.Generator().manual_seed(0)

    for first_frame_prob in (0.0, 1.0):
        cfg = {**settings(False, ["den_fg_weight=5", "den_batch=4"]), "den_first_frame_prob": first_frame_prob}
        batch = FlowBatches(tmp_path, cfg, Tokens())(Ctx())
        full = batch.loss_weights[-1]
        assert (batch.unit == 0) == (first_frame_prob == 1.0)
        assert torch.allclose(full, (1 + 5 * mask[batch.unit]).expand(4, 1, 1, 8, 8))
    plain = FlowBatches(tmp_path, settings(False, ["den_batch=4"]), Tokens())(Ctx())
    assert plain.loss_weights is None

def test_denoiser_warm_start_loads_the_shipped_roles_and_checks_the_latent_space(tmp_path):
    from neoc.errors import InputError
    from neoc.zoo import build_tiny as bt
    from neoc.zoo.builtin import build, tiny_metadata

    shipped = build("builtin:pyramid-tiny")
    fresh = bt.fresh_pipeline()
    components = {r: fresh.components[r] for r in bt.DENOISER_ROLES}
    bt.init_denoiser_roles(components, "dit")
    assert not components["denoiser"].proj_out.weight.detach().any()  # DiT init: a zero output projection
    (tmp_path / "measure.json").write_text(json.dumps({"latent_norm": tiny_metadata()["latent_norm"]}))
    bt.init_denoiser_roles(components, "shipped", tmp_path)
    for role in bt.DENOISER_ROLES:
        ours, theirs = components[role].state_dict(), shipped.components[role].state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    norm = tiny_metadata()["latent_norm"]
    (tmp_path / "measure.json").write_text(json.dumps({"latent_norm": [norm[0] + 0.5, *norm[1:]]}))
    with pytest.raises(InputError, match="differs from the shipped"):
        bt.init_denoiser_roles(components, "shipped", tmp_path)


def test_encode_dtype_fp32_skips_autocast_and_bf16_on_avx2_gets_a_hint(monkeypatch):
    from neoc.errors import InputError
    from neoc.zoo import build_tiny as bt

    encoder = bt.fresh_pipeline().components["vae_encoder"].eval()
    frames = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        plain = encoder.quant_conv(encoder.encoder(frames)).chunk(2, dim=1)[0]
    fp32, bf16 = bt.encode_raw(encoder, frames, "fp32"), bt.encode_raw(encoder, frames, "bf16")
    assert torch.allclose(fp32, plain, atol=1e-6) and fp32.dtype == bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16) and torch.allclose(fp32, bf16, atol=0.05 * float(plain.abs().max()))
    with pytest.raises(InputError, match="fp16"):
        bt.encode_raw(encoder, frames, "fp16")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert "encode_dtype=fp32" in bt.slow_bf16_warning("bf16") and bt.slow_bf16_warning("fp32") is None
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert bt.slow_bf16_warning("bf16") is None


def _write_shards(folder, videos, images, world):
    from safetensors.torch import save_file

    (folder / "encode").mkdir(parents=True)
    for rank in range(world):
        save_file({"video_latents": videos[rank::world].contiguous(), "image_latents": images[rank::world].contiguous()},
                  str(folder / "encode" / f"shard-{rank}.safetensors"))
        (folder / "encode" / f"shard-{rank}.json").write_text(json.dumps(
            {"videos": [{"caption": f"v{i}"} for i in range(rank, len(videos), world)],
             "images": [{"caption": f"i{i}"} for i in range(rank, len(images), world)], "encode_seconds": 1.0}))


def test_measure_is_independent_of_the_encode_process_count(tmp_path):
    from safetensors.torch import load_file

    from neoc.errors import InputError
    from neoc.zoo.build_tiny import settings, stage_measure

    gen = torch.Generator().manual_seed(0)
    videos = torch.randn(12, 4, 3, 2, 2, generator=gen) * torch.arange(1, 13).view(12, 1, 1, 1, 1)  # distinct stds
    images = torch.randn(10, 4, 1, 2, 2, generator=gen)
    cfg = {**settings(False), "norm_videos": 5}
    results = {}
    for world in (1, 2, 3, 11):
        folder = tmp_path / f"w{world}"
        _write_shards(folder, videos, images, world)
        norm = stage_measure(folder, cfg)["latent_norm"]
        latents = load_file(str(folder / "latents.safetensors"))
        meta = json.loads((folder / "latents.json").read_text())
        results[world] = (norm, latents["video_latents"], [m["caption"] for m in meta["videos"]])
    for world in (2, 3, 11):
        assert results[world][0] == results[1][0] and torch.equal(results[world][1], results[1][1])
        assert results[world][2] == [f"v{i}" for i in range(12)]
    (tmp_path / "w2" / "encode" / "shard-5.safetensors").write_bytes(b"")  # a stale shard of another run
    with pytest.raises(InputError, match="not one encode run"):
        stage_measure(tmp_path / "w2", cfg)


def test_warm_start_keeps_the_shipped_latent_normalisation():
    from neoc.errors import InputError
    from neoc.zoo.build_tiny import shipped_norm_for_warm_start
    from neoc.zoo.builtin import tiny_metadata

    shipped = tiny_metadata()["latent_norm"]
    measured = [shipped[0] + 1e-3, shipped[1] * 1.001, shipped[2] - 1e-3, shipped[3] * 1.014]  # this CPU's fp32 set
    assert shipped_norm_for_warm_start(measured) == shipped
    with pytest.raises(InputError, match="video scale"):
        shipped_norm_for_warm_start([*measured[:3], shipped[3] * 1.3])


def test_a_reused_package_vae_keeps_the_record_of_the_run_that_trained_it():
    from neoc.zoo.build_tiny import package_vae_record

    trained = {"steps": 800, "final_loss": 0.19, "processes": 2}
    once = package_vae_record(trained, {"psnr_toy_db": 25.4})
    assert once == {"source": "the package's VAE weights", "package_record": trained, "psnr_toy_db": 25.4}
    assert package_vae_record(once, {})["package_record"] == trained  # reused twice: still the training run
    assert package_vae_record(None, {})["package_record"] is None
