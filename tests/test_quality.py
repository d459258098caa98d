"""The toy-world quality instrument tells good videos from bad ones (with the shipped probe)."""

from __future__ import annotations

import math

import pytest
import torch

from neoc.data.toyworld import ToyScene, render_float, sample_scene, scenes_for
from neoc.errors import InputError
from neoc.eval import quality, vbench_adapter
from neoc.eval.probe import PROBE_WEIGHTS, load_probe, probe_available

needs_probe = pytest.mark.skipif(not probe_available(),
                                 reason=f"probe weights not trained yet ({PROBE_WEIGHTS}); "
                                        "run python3 -m neoc.eval.train_probe")


# --------------------------------------------------------------------------------------------------
# Probe-free pieces: hand-derived values
# --------------------------------------------------------------------------------------------------

def test_frechet_distance_of_shifted_identical_sets_is_the_squared_shift():
    features = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    shift = torch.tensor([1.0, 0.0, 2.0, 0.0])
    assert quality.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    assert quality.frechet_distance(features, features + shift) == pytest.approx(5.0, abs=1e-6)


def test_frechet_distance_of_scaled_gaussians():
    # N(0, I) vs N(0, 4I) in 2-D: tr(I + 4I - 2 * 2I) = 2*(1 + 4 - 4) = 2
    base = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) * math.sqrt(3 / 2)  # cov = I
    assert quality.frechet_distance(base, 2 * base) == pytest.approx(2.0, abs=1e-6)


def test_pixel_statistics_by_hand():
    # a frame toggling between grey levels 0 and 255 (-1 and 1): MAE 255 per step
    video = torch.tensor([-1.0, 1.0, -1.0, 1.0]).view(1, 4, 1, 1).expand(3, 4, 4, 4)
    assert quality.frame_difference_mae(video) == pytest.approx(255.0)
    assert quality.interpolation_error(video) == pytest.approx(255.0)  # |0 - (255 + 255)/2|
    ramp = torch.linspace(-1, 1, 5).view(1, 5, 1, 1).expand(3, 5, 4, 4)
    assert quality.interpolation_error(ramp) == pytest.approx(0.0, abs=1e-4)  # linear in time
    flat = torch.zeros(3, 2, 8, 8)
    assert quality.sharpness_statistics(flat) == (0.0, 0.0)


def test_consistency_raw_is_one_for_constant_features():
    features = torch.randn(1, 8).expand(5, 8)
    assert quality.consistency_raw(features) == pytest.approx(1.0, abs=1e-6)


def test_parse_caption_reads_free_text_prompts():
    assert quality.parse_caption("a red circle drifts to the left over a blue gradient") == {
        "shape": "circle", "color": "red", "motion": "left", "background": "gradient"}
    assert quality.parse_caption("A small green square moving up, textured background") == {
        "shape": "square", "color": "green", "motion": "up", "background": "texture"}
    assert quality.parse_caption("a cat playing piano") == {}
    # conflicting motions are left out rather than guessed
    assert "motion" not in quality.parse_caption("a star moves left and up")


def test_complete_scene_keeps_named_fields_and_is_deterministic():
    scene = quality.complete_scene({"shape": "star", "motion": "grow"}, seed_text="x")
    assert isinstance(scene, ToyScene) and (scene.shape, scene.motion) == ("star", "grow")
    assert quality.complete_scene({"shape": "star", "motion": "grow"}, seed_text="x") == scene


def test_vbench_adapter_gives_a_reason_instead_of_scores():
    available, reason = vbench_adapter.vbench_status()
    result = vbench_adapter.run_vbench(torch.zeros(1, 3, 4, 16, 16))
    if not available:
        assert result == {"available": False, "reason": reason}
        assert "vbench" in reason.lower()
    unknown = vbench_adapter.vbench_status(["object_class"])
    assert unknown[0] is False and "custom_input" in unknown[1]


def test_vbench_quality_aggregation_by_hand():
    # motion_smoothness 0.9975 -> 1, dynamic_degree 0.5 (weight 0.5) -> (1*1 + 0.5*0.5)/1.5
    assert vbench_adapter.aggregate_quality({"motion_smoothness": 0.9975, "dynamic_degree": 0.5}) == \
        pytest.approx(1.25 / 1.5)


# --------------------------------------------------------------------------------------------------
# With the shipped probe
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scorer():
    if not probe_available():
        pytest.skip(f"probe weights not trained yet ({PROBE_WEIGHTS})")
    torch.manual_seed(0)
    return quality.QualityScorer(load_probe())


@pytest.fixture(scope="module")
def ground_truth():
    scenes = scenes_for("eval", 4, seed=3)
    return scenes, torch.stack([render_float(s) for s in scenes])


@pytest.fixture(scope="module")
def ground_truth_result(scorer, ground_truth):
    scenes, videos = ground_truth
    return scorer.score(videos, scenes)


def _all_in_unit_interval(result: dict) -> bool:
    values = [result["total"], result["quality"], result["semantic"], *result["dimensions"].values()]
    return all(0.0 <= v <= 1.0 for v in values)


@needs_probe
def test_ground_truth_scores_high(ground_truth_result):
    result = ground_truth_result
    assert set(result) == {"total", "quality", "semantic", "dimensions"}
    assert set(result["dimensions"]) == set(quality.QUALITY_DIMENSIONS) | set(quality.SEMANTIC_DIMENSIONS)
    assert _all_in_unit_interval(result)
    assert result["semantic"] >= 0.8
    assert result["quality"] >= 0.95  # identical statistics to the reference
    assert result["total"] == pytest.approx((4 * result["quality"] + result["semantic"]) / 5)


@needs_probe
def test_shuffled_frames_score_lower_on_temporal_dimensions(scorer, ground_truth, ground_truth_result):
    scenes, videos = ground_truth
    order = torch.randperm(videos.shape[2], generator=torch.Generator().manual_seed(1))
    reference = ground_truth_result["dimensions"]
    shuffled = scorer.score(videos[:, :, order], scenes)["dimensions"]
    assert shuffled["motion_smoothness"] < reference["motion_smoothness"] - 0.3
    assert shuffled["temporal_flickering"] < reference["temporal_flickering"] - 0.2


@needs_probe
def test_recoloured_video_scores_lower_on_color(scorer):
    scenes = [sample_scene(rng, color=colour, background_color="black")
              for rng, colour in zip(_rngs(4), ("red", "green", "blue", "yellow"))]
    recoloured_scenes = [ToyScene(**{**_fields(s), "color": other})
                         for s, other in zip(scenes, ("blue", "yellow", "red", "green"))]
    recoloured = torch.stack([render_float(s) for s in recoloured_scenes])
    honest = torch.stack([render_float(s) for s in scenes])
    assert scorer.score(recoloured, scenes)["dimensions"]["color"] < \
        scorer.score(honest, scenes)["dimensions"]["color"] - 0.5


@needs_probe
def test_reversed_motion_scores_lower_on_motion(scorer):
    motions = ("left", "right", "up", "grow")
    scenes = [sample_scene(rng, motion=motion) for rng, motion in zip(_rngs(4), motions)]
    videos = torch.stack([render_float(s) for s in scenes])
    forward = scorer.score(videos, scenes)["dimensions"]["motion"]
    backward = scorer.score(videos.flip(2), scenes)["dimensions"]["motion"]
    assert backward < forward - 0.5


@needs_probe
def test_object_that_changes_half_way_scores_lower_on_subject_consistency(scorer, ground_truth,
                                                                         ground_truth_result):
    scenes, videos = ground_truth
    morphed = videos.clone()
    for index, scene in enumerate(scenes):
        other = ToyScene(**{**_fields(scene), "shape": "star" if scene.shape != "star" else "circle",
                            "color": "yellow" if scene.color != "yellow" else "purple"})
        morphed[index, :, 25:] = render_float(other)[:, 25:]
    honest = ground_truth_result["dimensions"]["subject_consistency"]
    changed = scorer.score(morphed, scenes)["dimensions"]["subject_consistency"]
    assert changed < honest - 0.2


@needs_probe
def test_noise_video_scores_low_overall(scorer, ground_truth):
    scenes, videos = ground_truth
    noise = torch.rand(videos.shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
    result = scorer.score(noise, scenes)
    assert _all_in_unit_interval(result)
    assert result["total"] < 0.35
    assert result["dimensions"]["imaging_quality"] < 0.3 and result["dimensions"]["fid_probe"] < 0.2


@needs_probe
def test_prompts_and_other_layouts_are_accepted(scorer, ground_truth):
    scenes, videos = ground_truth
    prompts = ["a red circle drifts to the left over a black gradient"] * 2
    result = scorer.score(videos[:2, :, ::2, ::2, ::2], prompts)  # 25 frames at 64x64
    assert _all_in_unit_interval(result)
    with pytest.raises(InputError):
        scorer.score(videos[:2], ["a cat playing piano", "a dog"])
    with pytest.raises(InputError):
        scorer.score(videos[:2], scenes[:1])


def _rngs(count: int):
    import numpy as np
    return [np.random.default_rng(100 + i) for i in range(count)]


def _fields(scene: ToyScene) -> dict:
    import attrs
    return attrs.asdict(scene)
