"""Real-data loaders: mp4 clips (decode, resize/crop, windows, write) and prompt files (read, split)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neoc.data import prompts as prompt_data
from neoc.data import videos
from neoc.errors import InputError

SHARED_VIDEOS = videos.default_data_root() / "videos"
SHARED_PROMPTS = videos.default_data_root() / "prompts"


def _ramp_video(frames: int = 12, height: int = 48, width: int = 64) -> torch.Tensor:
    """uint8 [F, H, W, 3]: a smooth colour ramp whose brightness rises with time."""
    ys = torch.linspace(0, 1, height)[:, None].expand(height, width)
    xs = torch.linspace(0, 1, width)[None, :].expand(height, width)
    frames_list = []
    for t in range(frames):
        level = t / max(frames - 1, 1)
        rgb = torch.stack([xs, ys, torch.full_like(xs, level)], dim=-1)
        frames_list.append((40 + 170 * rgb).round().to(torch.uint8))
    return torch.stack(frames_list)


def test_write_then_read_roundtrip(tmp_path: Path):
    original = _ramp_video()
    path = videos.write_mp4(original, tmp_path / "ramp.mp4", fps=8)
    clip = videos.read_clip(path, size=(48, 64))
    assert clip.shape == (3, 12, 48, 64)
    assert clip.min() >= -1 and clip.max() <= 1
    expected = videos.uint8_to_float(original)
    assert (clip - expected).abs().mean() < 0.03  # lossy H.264, smooth content


def test_write_accepts_float_layout_and_read_resizes_and_crops(tmp_path: Path):
    float_video = videos.uint8_to_float(_ramp_video(frames=6))  # [3, 6, 48, 64]
    path = videos.write_mp4(float_video, tmp_path / "f.mp4", fps=8)
    square = videos.read_clip(path, size=32)
    assert square.shape == (3, 6, 32, 32)
    # centre crop of a horizontal ramp keeps the middle: red channel spans less than the full ramp
    full_span = float(float_video[0, 0, 0, -1] - float_video[0, 0, 0, 0])
    crop_span = float(square[0, 0, 16, -1] - square[0, 0, 16, 0])
    assert 0.4 * full_span < crop_span < 0.95 * full_span
    assert videos.read_clip(path, size=32, max_frames=4).shape[1] == 4
    assert videos.read_clip(path, size=32, frame_stride=2).shape[1] == 3


def test_write_rejects_wrong_layout(tmp_path: Path):
    with pytest.raises(InputError):
        videos.write_mp4(torch.zeros(4, 8, 8, 3), tmp_path / "bad.mp4")  # float but channels-last


def test_clip_windows_do_not_overlap():
    video = torch.zeros(3, 10, 4, 4)
    windows = list(videos.clip_windows(video, 4))
    assert len(windows) == 2 and all(w.shape[1] == 4 for w in windows)


def test_list_clips_errors_name_the_folder(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        videos.list_clips(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no video clips"):
        videos.list_clips(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        videos.read_clip(tmp_path / "missing.mp4")


def test_split_clips_hash_rule_for_other_folders():
    names = [Path(f"clip_{i}.mp4") for i in range(5)]
    train = videos.split_clips(names, "train")
    held_out = videos.split_clips(names, "eval")
    assert len(held_out) == 1 and not set(train) & set(held_out) and len(train) + len(held_out) == 5
    assert videos.split_clips(names, "eval") == held_out  # deterministic
    with pytest.raises(InputError):
        videos.split_clips(names, "validation")


@pytest.mark.skipif(not SHARED_VIDEOS.is_dir(), reason=f"shared clips not present at {SHARED_VIDEOS}")
def test_shared_clips_split_and_decode():
    clips = videos.list_clips(SHARED_VIDEOS)
    held_out = videos.split_clips(clips, "eval")
    train = videos.split_clips(clips, "train")
    assert [c.name for c in held_out] == ["yYcK4nANZz4-Scene-027.mp4"]
    assert len(train) == len(clips) - 1 and not set(train) & set(held_out)
    clip = videos.read_clip(held_out[0], size=64, max_frames=5)
    assert clip.shape == (3, 5, 64, 64) and clip.std() > 0.05


def test_read_prompts_strips_and_skips_blank_lines(tmp_path: Path):
    path = tmp_path / "p.txt"
    path.write_text("  a red circle moves left \n\n\tA blue star spins\n   \n")
    assert prompt_data.read_prompts(path) == ["a red circle moves left", "A blue star spins"]


def test_read_prompts_errors(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        prompt_data.read_prompts(tmp_path / "none.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="no prompts"):
        prompt_data.read_prompts(empty)


def test_prompt_split_is_disjoint_deterministic_and_text_only():
    corpus = [f"prompt number {i}" for i in range(400)] + ["Prompt  Number 3"]  # a near-duplicate
    train = prompt_data.split_prompts(corpus, "train")
    held_out = prompt_data.split_prompts(corpus, "eval")
    assert not set(train) & set(held_out)
    assert len(train) + len(held_out) == 400  # the normalised duplicate is dropped
    assert 20 < len(held_out) < 65           # ~10 %
    assert prompt_data.split_prompts(list(reversed(corpus)), "eval") == list(reversed(held_out))
    assert prompt_data.prompt_split("prompt number 3") == prompt_data.prompt_split("PROMPT number   3")


@pytest.mark.skipif(not SHARED_PROMPTS.is_dir(), reason=f"shared prompts not present at {SHARED_PROMPTS}")
def test_shared_prompt_corpus_loads_and_splits():
    everything = prompt_data.load_prompt_corpus(SHARED_PROMPTS)
    train = prompt_data.load_prompt_corpus(SHARED_PROMPTS, "train")
    held_out = prompt_data.load_prompt_corpus(SHARED_PROMPTS, "eval")
    assert len(everything) > 5000
    assert len(train) + len(held_out) == len(everything) and not set(train) & set(held_out)


def test_prompt_folder_errors(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        prompt_data.load_prompt_corpus(tmp_path / "nope")
    with pytest.raises(InputError, match="no \\*.txt"):
        prompt_data.load_prompt_corpus(tmp_path)
