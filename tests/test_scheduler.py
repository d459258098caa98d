"""Golden values derived by hand from the reference's formulas (reference/pyramid-flow-facts.md §4.2-4.3).

stage 1 ori start sigma = 1 - 333/1000 = 0.667, a = 0.333 -> corrected = 0.333 / (2*0.667 + 0.333) = 0.199760
stage 2 ori start sigma = 0.334, a = 0.666 -> corrected = 0.666 / (2*0.334 + 0.666) = 0.499250
alpha = 1/(2 - a), beta = sqrt(3) * alpha * (1 - a)  (gamma = 1/3)
"""

import math

import pytest
import torch

from neoc.models import scheduler as s


def test_stage_starts_and_ends():
    st = s.stage_specs()
    assert [round(x.start_sigma, 5) for x in st] == [1.0, 0.80024, 0.50075]
    assert [round(x.end_sigma, 3) for x in st] == [0.667, 0.334, 0.0]


def test_jump_coefficients_hand_values():
    st = s.stage_specs()
    a1, b1 = s.jump_coefficients(st[1])
    a2, b2 = s.jump_coefficients(st[2])
    assert a1 == pytest.approx(1 / (2 - 0.333), abs=1e-6) == pytest.approx(0.599880, abs=1e-6)
    assert b1 == pytest.approx(math.sqrt(3) * 0.599880 * 0.667, abs=1e-5)
    assert (round(a1, 6), round(b1, 6)) == (0.59988, 0.693028)
    assert (round(a2, 6), round(b2, 6)) == (0.749625, 0.433662)


def test_timestep_ranges():
    st = s.stage_specs()
    # each stage's own 1000-point grid ends one step short of the next grid point: max - (max - next)*1000/1001
    assert st[0].timestep_max == pytest.approx(1000.0)
    assert st[0].timestep_min == pytest.approx(1000 - 256 * 1000 / 1001, abs=1e-6)  # 744.256
    assert st[1].timestep_max == pytest.approx(744.0)
    assert st[1].timestep_min == pytest.approx(744 - 358 * 1000 / 1001, abs=1e-6)  # 386.358
    assert st[2].timestep_max == pytest.approx(386.0)
    assert st[2].timestep_min == pytest.approx(386 - 385 * 1000 / 1001, abs=1e-6)  # 1.385
    ts = s.stage_timesteps(st[0], 20)
    assert ts[1] == pytest.approx(1000 - (1000 - st[0].timestep_min) / 19)  # 986.54
    assert round(ts[1], 2) == 986.54
    ts2 = s.stage_timesteps(st[2], 10)
    assert ts2[1] == pytest.approx(343.27, abs=0.006)  # facts: 386, 343.27, 300.53, ...
    assert ts2[2] == pytest.approx(300.53, abs=0.006)


def test_local_sigmas():
    sig = s.local_sigmas(10)
    assert len(sig) == 11 and sig[0] == 1.0 and sig[-1] == 0.0
    assert sig[-2] == pytest.approx(0.001)
    assert sig[1] == pytest.approx(1 - 0.999 / 9)
    assert s.local_sigmas(1) == [1.0, 0.0]


def test_block_noise_statistics():
    gen = torch.Generator().manual_seed(0)
    n = s.block_noise((1, 4, 2, 64, 64), gen)
    blocks = n.unfold(3, 2, 2).unfold(4, 2, 2).reshape(-1, 4)
    assert blocks.sum(-1).abs().max() < 1e-5  # every 2x2 block sums to zero
    assert n.var().item() == pytest.approx(1.0, abs=0.05)
    corr = torch.corrcoef(blocks.T.double())
    assert corr[0, 1].item() == pytest.approx(-1 / 3, abs=0.05)
    again = s.block_noise((1, 4, 2, 64, 64), torch.Generator().manual_seed(0))
    assert torch.equal(n, again)  # drawn from the run's generator: reproducible


def test_downsample_noise_keeps_unit_variance():
    x = torch.randn(1, 16, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y = s.downsample_noise(x, 2)
    assert y.shape == (1, 16, 3, 16, 16)
    assert y.var().item() == pytest.approx(1.0, abs=0.1)
