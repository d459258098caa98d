"""The toy world: deterministic renders, motions that move the right way, disjoint splits, captions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neoc.data import toyworld
from neoc.data.toyworld import (BACKGROUND_COLORS, COLORS, ROTATION_DEGREES, TRANSLATION_PIXELS, ToyScene,
                                ToyWorldDataset, caption, coverage, render, render_float, sample_scene,
                                scene_split, scenes_for)
from neoc.errors import InputError
from neoc.eval.quality import parse_caption


def _scene(**overrides) -> ToyScene:
    fields = dict(shape="square", color="red", motion="still", background="solid", background_color="black",
                  x=64.0, y=64.0, size=16.0, angle=0.0)
    fields.update(overrides)
    return ToyScene(**fields)


def _centroid_and_area(alpha: torch.Tensor) -> tuple[float, float, float]:
    """(x, y, area) of a coverage map [H, W], pixel centres at +0.5."""
    height, width = alpha.shape
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    area = float(alpha.sum())
    return float((alpha * xs).sum()) / area, float((alpha * ys).sum()) / area, area


def test_render_shape_dtype_and_determinism():
    scene = sample_scene(np.random.default_rng(3))
    first, second = render(scene), render(scene)
    assert first.shape == (49, 128, 128, 3) and first.dtype == torch.uint8
    assert torch.equal(first, second)
    as_float = render_float(scene)
    assert as_float.shape == (3, 49, 128, 128)
    assert as_float.min() >= -1 and as_float.max() <= 1
    assert torch.allclose(as_float, first.permute(3, 0, 1, 2).float() / 127.5 - 1)


def test_object_pixels_have_the_named_colour_and_edges_are_antialiased():
    video = render(_scene(shape="circle", color="blue", background_color="white"))
    assert video[0, 64, 64].tolist() == list(COLORS["blue"])
    assert video[0, 2, 2].tolist() == list(BACKGROUND_COLORS["white"])
    alpha = coverage(_scene(shape="circle"))[0]
    partial = ((alpha > 0.05) & (alpha < 0.95)).sum()
    assert partial > 40  # a ring of blended pixels around the disc


@pytest.mark.parametrize("motion, dx, dy", [("left", -TRANSLATION_PIXELS, 0), ("right", TRANSLATION_PIXELS, 0),
                                            ("up", 0, -TRANSLATION_PIXELS), ("down", 0, TRANSLATION_PIXELS)])
def test_translations_move_the_centroid_the_named_way(motion, dx, dy):
    start = {"left": (100.0, 64.0), "right": (28.0, 64.0), "up": (64.0, 100.0), "down": (64.0, 28.0)}[motion]
    alpha = coverage(_scene(motion=motion, x=start[0], y=start[1]))
    x0, y0, _ = _centroid_and_area(alpha[0])
    x1, y1, _ = _centroid_and_area(alpha[-1])
    assert x1 - x0 == pytest.approx(dx, abs=0.5)
    assert y1 - y0 == pytest.approx(dy, abs=0.5)
    xm, _, _ = _centroid_and_area(alpha[24])  # half way at the middle frame (linear motion)
    assert xm - x0 == pytest.approx(dx / 2, abs=0.5)


@pytest.mark.parametrize("motion, area_ratio", [("grow", toyworld.GROW_FACTOR ** 2),
                                                ("shrink", toyworld.SHRINK_FACTOR ** 2)])
def test_grow_and_shrink_scale_the_area_in_place(motion, area_ratio):
    alpha = coverage(_scene(motion=motion, shape="star"))
    x0, y0, area0 = _centroid_and_area(alpha[0])
    x1, y1, area1 = _centroid_and_area(alpha[-1])
    assert area1 / area0 == pytest.approx(area_ratio, rel=0.05)
    assert (x1, y1) == pytest.approx((x0, y0), abs=0.3)


def test_rotate_turns_a_triangle_clockwise_by_the_rotation_angle():
    alpha = coverage(_scene(motion="rotate", shape="triangle", size=20.0))

    def orientation(frame: torch.Tensor) -> float:
        """Angle (degrees, atan2 convention, y down) of the triangle's 3-fold moment / 3: mod 120."""
        x, y, _ = _centroid_and_area(frame)
        ys, xs = torch.meshgrid(torch.arange(128.0) + 0.5, torch.arange(128.0) + 0.5, indexing="ij")
        theta = torch.atan2(ys - y, xs - x)
        radius_cubed = ((xs - x) ** 2 + (ys - y) ** 2) ** 1.5
        moment = complex(float((frame * radius_cubed * torch.cos(3 * theta)).sum()),
                         float((frame * radius_cubed * torch.sin(3 * theta)).sum()))
        return math.degrees(math.atan2(moment.imag, moment.real)) / 3

    def turned(frame_index: int) -> float:
        delta = orientation(alpha[frame_index]) - orientation(alpha[0])
        return (delta + 60) % 120 - 60  # wrap into [-60, 60)

    assert orientation(alpha[0]) == pytest.approx(-90.0 + 120.0, abs=2)  # a tip points up (-90 mod 120)
    # screen-clockwise (y down) = increasing atan2 angle; linear in time
    assert turned(12) == pytest.approx(ROTATION_DEGREES / 4, abs=2)
    assert turned(24) == pytest.approx(ROTATION_DEGREES / 2, abs=2)
    _, _, area0 = _centroid_and_area(alpha[0])
    _, _, area1 = _centroid_and_area(alpha[-1])
    assert area1 == pytest.approx(area0, rel=0.02)


def test_still_scene_does_not_change():
    video = render(_scene(motion="still", background="texture"))
    assert torch.equal(video[0], video[-1])


def test_every_background_kind_renders_distinctly():
    solid = render(_scene(background="solid", background_color="gray"))[0].float()
    gradient = render(_scene(background="gradient", background_color="gray"))[0].float()
    texture = render(_scene(background="texture", background_color="gray"))[0].float()
    corners = lambda img: (img[:8, :8].mean(), img[-8:, -8:].mean())  # noqa: E731
    assert solid[:8, :8].std() == 0
    assert abs(float(corners(gradient)[0] - corners(gradient)[1])) > 30
    assert float(texture[:, :, 0].std()) > 5
    assert toyworld.num_textures() >= 4


def test_texture_crops_are_small_pngs():
    paths = sorted(toyworld.TEXTURE_DIR.glob("texture_*.png"))
    assert len(paths) >= 4
    assert all(path.stat().st_size < 16_000 for path in paths)


def test_sample_scene_respects_constraints():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = sample_scene(rng)
        assert not (scene.shape == "circle" and scene.motion == "rotate")
        track = toyworld.motion_track(scene)
        extent = track["size"].max()
        for axis in ("x", "y"):
            assert float(track[axis].min() - extent) >= 0 and float(track[axis].max() + extent) <= 128
        assert toyworld._contrast_ok(scene.color, scene)
    fixed = sample_scene(rng, shape="star", color="green", motion="grow")
    assert (fixed.shape, fixed.color, fixed.motion) == ("star", "green", "grow")


def test_scene_validators_reject_unknown_values():
    with pytest.raises(ValueError):
        _scene(shape="hexagon")


def test_dataset_is_deterministic_by_index():
    a, b = ToyWorldDataset("train", 8, seed=1), ToyWorldDataset("train", 8, seed=1)
    video_a, caption_a, scene_a = a[5]
    video_b, caption_b, scene_b = b[5]
    assert scene_a == scene_b and caption_a == caption_b and torch.equal(video_a, video_b)
    assert ToyWorldDataset("train", 8, seed=2).scene_and_caption(5)[0] != scene_a
    with pytest.raises(IndexError):
        a.scene_and_caption(8)
    with pytest.raises(InputError):
        ToyWorldDataset("test", 4)


def test_train_and_eval_splits_never_overlap():
    train = scenes_for("train", 250)
    held_out = scenes_for("eval", 250)
    assert not set(train) & set(held_out)
    assert all(scene_split(s) == "train" for s in train)
    assert all(scene_split(s) == "eval" for s in held_out)
    # the hash rule sends roughly 10 % of all scenes to eval
    rng = np.random.default_rng(7)
    fraction = np.mean([scene_split(sample_scene(rng)) == "eval" for _ in range(1500)])
    assert 0.07 < fraction < 0.13
    # and every attribute value occurs in the eval split
    assert {s.motion for s in held_out} == set(toyworld.MOTIONS)
    assert {s.shape for s in held_out} == set(toyworld.SHAPES)


def test_captions_mention_every_attribute_and_vary():
    rng = np.random.default_rng(11)
    texts = set()
    for _ in range(300):
        scene = sample_scene(rng)
        text = caption(scene, rng)
        texts.add(text.split(" ")[0].lower() + "|" + str(len(text.split())))
        assert scene.color in text and scene.background_color in text
        parsed = parse_caption(text)
        assert parsed == {"shape": scene.shape, "color": scene.color, "motion": scene.motion,
                          "background": scene.background, "background_color": scene.background_color}, text
    assert len(texts) > 20  # several templates and wordings
