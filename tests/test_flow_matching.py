"""Pyramidal flow-matching training targets (neoc.train.flow_matching; pyramid-flow-facts.md §4.2, §4.4).

Golden values are derived by hand from constant tensors: a bilinear 2x downsample of a constant is the constant,
so clean latents keep their value at every stage while downsampled noise doubles per level.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neoc.ir.pipeline import history_clips
from neoc.models import scheduler as sched
from neoc.train import flow_matching as fm

SPECS = sched.stage_specs(3)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Small-op workloads on a shared 2-core CPU: more OpenMP threads only oversubscribe (and spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def constant_pyramids(clean_value=1.0, noise_value=0.5):
    clean = fm.clean_pyramid(torch.full((1, 2, 1, 8, 8), clean_value), 3)
    noise = fm.noise_pyramid(torch.full((1, 2, 1, 8, 8), noise_value), 3)
    return clean, noise


def test_pyramids_have_stage_resolutions_and_noise_doubles():
    clean, noise = constant_pyramids()
    assert [tuple(c.shape[-2:]) for c in clean] == [(2, 2), (4, 4), (8, 8)]
    assert [float(n.mean()) for n in noise] == [2.0, 1.0, 0.5]  # 0.5 * 2 per level down
    assert all(torch.allclose(c, torch.ones_like(c)) for c in clean)


def test_end_points_by_hand():
    clean, noise = constant_pyramids(clean_value=3.0, noise_value=0.5)  # noise: stage 0 -> 2.0, 1 -> 1.0, 2 -> 0.5
    start0, end0 = fm.stage_end_points(clean, noise, 0, SPECS)
    assert torch.allclose(start0, noise[0])                                    # stage 0 starts at pure noise
    assert torch.allclose(end0, torch.full_like(end0, 0.667 * 2.0 + 0.333 * 3.0))  # end_sigma 0.667
    start1, end1 = fm.stage_end_points(clean, noise, 1, SPECS)
    s1 = SPECS[1].start_sigma  # corrected start of stage 1
    assert abs(s1 - 0.800240) < 1e-6
    assert torch.allclose(start1, torch.full_like(start1, s1 * 1.0 + (1 - s1) * 3.0))
    assert torch.allclose(end1, torch.full_like(end1, 0.334 * 1.0 + 0.666 * 3.0))
    start2, end2 = fm.stage_end_points(clean, noise, 2, SPECS)
    assert torch.allclose(start2, torch.full_like(start2, 0.500750 * 0.5 + 0.499250 * 3.0), atol=1e-5)
    assert torch.equal(end2, clean[2])                                         # the last stage ends clean


def test_start_upsamples_the_previous_clean_stage_with_nearest():
    clean_full = torch.arange(16.0).reshape(1, 1, 1, 4, 4)
    clean = fm.clean_pyramid(clean_full, 2)
    noise = fm.noise_pyramid(torch.zeros(1, 1, 1, 4, 4), 2)
    start, _ = fm.stage_end_points(clean, noise, 1, sched.stage_specs(2))
    coarse = clean[0][0, 0, 0]  # 2x2 block means: [[2.5, 4.5], [10.5, 12.5]]
    assert torch.allclose(coarse, torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    signal = 1 - sched.stage_specs(2)[1].start_sigma
    assert torch.allclose(start[0, 0, 0, :2, :2], torch.full((2, 2), 2.5 * signal))  # one coarse value per 2x2


def test_interpolation_end_points_and_velocity_sign():
    start, end = torch.randn(3, 2, 1, 4, 4), torch.randn(3, 2, 1, 4, 4)
    assert torch.equal(fm.interpolate(start, end, torch.ones(3)), start)     # r = 1: the start
    assert torch.equal(fm.interpolate(start, end, torch.zeros(3)), end)      # r = 0: the end
    v = start - end
    x = start.clone()
    sigmas = sched.local_sigmas(5)  # the sampler's Euler grid 1 .. 0.001, 0
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (sigma_next - sigma) * v                                      # the sampler's Euler step
    assert torch.allclose(x, end, atol=1e-5)                                   # v = start - end walks to end


def test_grid_points_match_the_sampler_grid():
    r, t = fm.grid_point(torch.tensor([0, 500, 999]), SPECS[2])
    assert torch.allclose(r, torch.tensor([1.0, 0.5, 0.001]))
    assert abs(float(t[0]) - 386.0) < 1e-4 and abs(float(t[2]) - SPECS[2].timestep_min) < 1e-4
    steps = sched.stage_timesteps(SPECS[2], 10)
    assert abs(float(t[2]) - steps[-1]) < 1e-4                                 # the sampler's last timestep


def test_uniform_grid_sampling_is_the_default_draw():
    drawn = fm.sample_grid_index(64, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, torch.randint(0, fm.TRAIN_GRID, (64,), generator=torch.Generator().manual_seed(3)))
    latents, tokens = torch.randn(2, 4, 2, 8, 8), {"t5_ids": torch.zeros(2, 4, dtype=torch.long)}
    default = fm.make_flow_batch(latents, 1, tokens, torch.Generator().manual_seed(0))
    named = fm.make_flow_batch(latents, 1, tokens, torch.Generator().manual_seed(0), timestep_sampling="uniform")
    assert torch.equal(default.timesteps, named.timesteps)


def test_logit_normal_sampling_favours_the_middle_of_each_stage():
    index = fm.sample_grid_index(20000, torch.Generator().manual_seed(0), "logit_normal")
    assert int(index.min()) >= 0 and int(index.max()) < fm.TRAIN_GRID and index.dtype == torch.long
    middle = float(((index >= 250) & (index < 750)).float().mean())
    assert 0.70 < middle < 0.76          # P(|n| < ln 3) = 0.727 for r = sigmoid(n); uniform gives 0.5
    early = fm.sample_grid_index(20000, torch.Generator().manual_seed(0), "logit_normal", logit_mean=1.0)
    assert float(early.float().mean()) < 350  # E[sigmoid(1 + n)] ~ 0.69: r (local sigma) nearer 1, index nearer 0
    latents, tokens = torch.randn(64, 4, 1, 8, 8), {"t5_ids": torch.zeros(64, 4, dtype=torch.long)}
    batch = fm.make_flow_batch(latents, 0, tokens, torch.Generator().manual_seed(0), timestep_sampling="logit_normal",
                               logit_std=0.1)
    rows = batch.timesteps.view(64, 3)    # a narrow logit-normal: every stage's timestep sits near its midpoint
    for stage, spec in enumerate(SPECS):
        mid = (spec.timestep_max + spec.timestep_min) / 2
        assert float((rows[:, stage] - mid).abs().max()) < 0.1 * (spec.timestep_max - spec.timestep_min)


@pytest.mark.parametrize("kwargs, message", [({"sampling": "cosine"}, "uniform, logit_normal"),
                                             ({"sampling": "logit_normal", "logit_std": 0.0}, "logit_std")])
def test_bad_timestep_sampling_is_an_input_error(kwargs, message):
    from neoc.errors import InputError

    with pytest.raises(InputError, match=message):
        fm.sample_grid_index(4, torch.Generator(), **kwargs)


@pytest.mark.parametrize("unit", [0, 1, 3, 6])
def test_flow_batch_history_matches_inference_layout(unit):
    latents = torch.randn(2, 16, 7, 16, 16)
    tokens = {"t5_ids": torch.zeros(2, 4, dtype=torch.long)}
    batch = fm.make_flow_batch(latents, unit, tokens, torch.Generator().manual_seed(0), corrupt_ratio=0.0)
    levels = [latents[:, :, :unit]]
    for _ in range(2):
        levels.append(fm.ops.down2(levels[-1]))
    for stage in range(3):
        clips = batch.sample[stage]
        layout = history_clips(unit, stage, 3)
        assert len(clips) == len(layout) + 1
        for clip, (level, a, b) in zip(clips, layout):
            assert torch.allclose(clip, levels[level][:, :, a:b])               # clean when corrupt_ratio = 0
        size = 16 // 2 ** (2 - stage)
        assert clips[-1].shape == (2, 16, 1, size, size) and batch.targets[stage].shape == clips[-1].shape
    rows = batch.timesteps.view(2, 3)  # row b*S + s
    for stage in range(3):
        assert bool(((rows[:, stage] <= SPECS[stage].timestep_max + 1e-3)
                     & (rows[:, stage] >= SPECS[stage].timestep_min - 1e-3)).all())



def test_loss_weights_pool_to_each_stage_and_weigh_the_loss():
    weights = torch.ones(2, 1, 1, 8, 8)
    weights[0, ..., 0:2, 0:2] = 5.0                        # one latent 2x2 block of sample 0 weighs 5
    latents = torch.randn(2, 4, 2, 8, 8)
    batch = fm.make_flow_batch(latents, 1, {}, torch.Generator().manual_seed(0), loss_weights=weights)
    maps = batch.loss_weights
    assert [tuple(m.shape[-2:]) for m in maps] == [(2, 2), (4, 4), (8, 8)]
    assert float(maps[1][0, 0, 0, 0, 0]) == 5.0 and float(maps[0][0, 0, 0, 0, 0]) == 2.0  # area: (5 + 3) / 4
    assert torch.equal(maps[2], weights) and float(maps[0][1].max()) == 1.0
    target = torch.zeros(2, 4, 1, 8, 8)
    error = torch.zeros_like(target)
    error[0, :, :, 0, 0] = 1.0                               # wrong only where the weight is 5
    plain = fm.weighted_mse(error, target, None)
    weighted = fm.weighted_mse(error, target, maps[2])
    assert torch.isclose(plain, torch.tensor(4 / (2 * 4 * 64)))
    assert torch.isclose(weighted, torch.tensor(5 * 4 / (4 * (2 * 64 + 4 * 4))))  # sum(w e^2) / sum(w)
    assert torch.isclose(fm.weighted_mse(error, target, torch.ones(2, 1, 1, 8, 8)), plain)
    unweighted = fm.make_flow_batch(latents, 1, {}, torch.Generator().manual_seed(0))
    assert unweighted.loss_weights is None and torch.equal(unweighted.targets[2], batch.targets[2])  # same draws


@pytest.mark.parametrize("weights, message", [(torch.ones(2, 1, 1, 4, 4), "expected"),
                                              (torch.zeros(2, 1, 1, 8, 8), "positive"),
                                              (torch.full((2, 1, 1, 8, 8), float("nan")), "finite")])
def test_bad_loss_weights_are_input_errors(weights, message):
    from neoc.errors import InputError

    with pytest.raises(InputError, match=message):
        fm.make_flow_batch(torch.randn(2, 4, 2, 8, 8), 1, {}, torch.Generator().manual_seed(0), loss_weights=weights)

def test_history_corruption_is_bounded():
    clean = torch.zeros(64, 1, 3, 2, 2)
    corrupted = fm.corrupt_history(clean, torch.Generator().manual_seed(0))
    ratio = corrupted.abs().amax(dim=(1, 3, 4))  # [B, T]; |sigma * n| with sigma <= 1/3
    assert float(ratio.max()) < 1.0 / 3.0 * 6 and float(corrupted.std()) < 0.3


def test_caption_dropout_rate():
    dropped = fm.drop_captions(["a"] * 2000, torch.Generator().manual_seed(0))
    assert 0.08 < dropped.count("") / 2000 < 0.12


class _TokenEncoder(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.embed = nn.Embedding(10, width)

    def forward(self, ids, mask=None):
        return self.embed(ids)


class _PooledEncoder(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.embed = nn.Embedding(10, width)

    def forward(self, ids_l, ids_g):
        return self.embed(ids_l).mean(1)


def test_objective_trains_all_components():
    from neoc.models.mmdit import PyramidMMDiT

    denoiser = PyramidMMDiT(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                            num_attention_heads=2, caption_projection_dim=16, pooled_projection_dim=8,
                            pos_embed_max_size=8, joint_attention_dim=12)
    objective = fm.PyramidFlowObjective(denoiser, denoiser.split_context_embedder(), _TokenEncoder(12),
                                        _PooledEncoder(8))
    ids = torch.randint(0, 10, (2, 5))
    tokens = {"t5_ids": ids, "t5_mask": torch.ones(2, 5, dtype=torch.long), "clip_l_ids": ids, "clip_g_ids": ids}
    batch = fm.make_flow_batch(torch.randn(2, 4, 3, 8, 8), 2, tokens, torch.Generator().manual_seed(0))
    loss, metrics = objective(batch)
    loss.backward()
    assert torch.isfinite(loss) and set(metrics) == {"loss_stage0", "loss_stage1", "loss_stage2"}
    assert all(p.grad is not None for p in objective.parameters())


def test_prune_flow_data_passes_its_timestep_sampling_on():
    import numpy as np

    from neoc.data.toyworld import sample_scene
    from neoc.errors import InputError
    from neoc.prune.data import FlowData, LatentSet

    class Tokens:
        def encode(self, texts):
            return {"t5_ids": torch.zeros(len(texts), 4, dtype=torch.long)}

    scenes = [sample_scene(np.random.default_rng(i)) for i in range(4)]
    data = LatentSet(torch.randn(4, 4, 3, 8, 8), scenes)
    narrow = FlowData(data, Tokens(), 32, 3, 1 / 3, timestep_sampling="logit_normal", logit_std=0.1)
    rows = narrow.draw(torch.Generator().manual_seed(0)).timesteps.view(32, 3)
    uniform = FlowData(data, Tokens(), 32, 3, 1 / 3).draw(torch.Generator().manual_seed(0)).timesteps.view(32, 3)
    spread = lambda t, spec: float((t - (spec.timestep_max + spec.timestep_min) / 2).abs().max())  # noqa: E731
    assert spread(rows[:, 2], SPECS[2]) < 0.1 * (SPECS[2].timestep_max - SPECS[2].timestep_min)
    assert spread(uniform[:, 2], SPECS[2]) > 0.3 * (SPECS[2].timestep_max - SPECS[2].timestep_min)
    with pytest.raises(InputError, match="cosine"):
        FlowData(data, Tokens(), 2, 3, 1 / 3, timestep_sampling="cosine")
