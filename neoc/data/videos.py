"""Real video clips: list, decode, resize / centre-crop, window, and write mp4.

Decoding goes through the ffmpeg binary shipped by ``imageio-ffmpeg`` (a pyproject dependency):
ffmpeg itself scales and crops each frame (``-vf scale,crop``) so a 4K clip never lands in memory
at full size. Frames come back as float tensors in [-1, 1], channels first: ``[3, F, H, W]`` — the
layout the causal VAE and the decoder passes read.

Train / eval split of a clip folder (used by swap-decoder's reconstruction metrics):
the clips named in ``DEFAULT_EVAL_CLIPS`` are eval when present (for the shared data folder that is
``yYcK4nANZz4-Scene-027.mp4``, the only real-footage clip); in any other folder the clip whose file
name has the smallest SHA-1 is eval and the rest train. Whole clips are split, so train and eval
never share a frame.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from neoc.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
DEFAULT_EVAL_CLIPS = ("yYcK4nANZz4-Scene-027.mp4",)


def default_data_root() -> Path:
    """Folder holding ``videos/`` and ``prompts/``: ``$NEOC_DATA_DIR``, else ``<repo>/../shared/data``."""
    env = os.environ.get("NEOC_DATA_DIR")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data"


def list_clips(folder: str | os.PathLike) -> list[Path]:
    """Video files in ``folder`` (sorted by name). InputError if the folder is missing or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: video folder does not exist")
    clips = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        raise InputError(f"{folder}: no video clips ({', '.join(VIDEO_SUFFIXES)}) in this folder")
    return clips


def split_clips(clips: Sequence[Path], split: str,
                eval_names: Sequence[str] = DEFAULT_EVAL_CLIPS) -> list[Path]:
    """Whole-clip train/eval split (see module docstring). ``split`` is "train", "eval" or "all"."""
    clips = [Path(c) for c in clips]
    if split == "all":
        return clips
    if split not in ("train", "eval"):
        raise InputError(f"split={split!r}: expected 'train', 'eval' or 'all'")
    eval_set = {c.name for c in clips if c.name in set(eval_names)}
    if not eval_set and len(clips) >= 2:
        eval_set = {min(clips, key=lambda c: hashlib.sha1(c.name.encode()).hexdigest()).name}
    chosen = [c for c in clips if (c.name in eval_set) == (split == "eval")]
    return chosen


def _probe_size(path: Path) -> tuple[int, int, float]:
    """(width, height, fps) of a clip, from ffmpeg's header parse."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
    finally:
        reader.close()
    width, height = meta["size"]
    return int(width), int(height), float(meta.get("fps") or 0.0)


def read_clip(path: str | os.PathLike, size: int | tuple[int, int] = 128,
              max_frames: int | None = None, frame_stride: int = 1) -> torch.Tensor:
    """Decode a clip, resize its short side and centre-crop to ``size``; return float [3, F, H, W] in [-1, 1].

    ``size``: an int (square) or (height, width). ``max_frames`` stops decoding early (after the
    stride is applied). ``frame_stride`` keeps every n-th decoded frame.
    """
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: video file does not exist")
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    try:
        src_w, src_h, _ = _probe_size(path)
    except (RuntimeError, OSError, StopIteration) as err:
        raise InputError(f"{path}: cannot decode video ({err})") from err
    # scale so the crop box fits, keeping aspect; even sizes for the yuv scaler
    scale = max(out_w / src_w, out_h / src_h)
    scaled_w = max(out_w, int(round(src_w * scale)))
    scaled_h = max(out_h, int(round(src_h * scale)))
    video_filter = f"scale={scaled_w}:{scaled_h}:flags=area,crop={out_w}:{out_h}"
    output_params = ["-vf", video_filter]
    if max_frames is not None:
        output_params += ["-frames:v", str(int(max_frames) * frame_stride)]
    ffmpeg_logger = logging.getLogger("imageio_ffmpeg")
    previous_level = ffmpeg_logger.level
    ffmpeg_logger.setLevel(logging.ERROR)  # it warns that our scaled size differs from the source size
    try:
        reader = imageio_ffmpeg.read_frames(str(path), output_params=output_params)
        meta = next(reader)
    finally:
        ffmpeg_logger.setLevel(previous_level)
    frame_w, frame_h = meta["size"]
    frames = []
    try:
        for index, raw in enumerate(reader):
            if index % frame_stride:
                continue
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(frame_h, frame_w, 3))
            if max_frames is not None and len(frames) >= max_frames:
                break
    finally:
        reader.close()
    if not frames:
        raise InputError(f"{path}: video has no decodable frames")
    video_uint8 = torch.from_numpy(np.stack(frames))  # [F, H, W, 3]
    return uint8_to_float(video_uint8)  # [3, F, H, W]


def clip_windows(video: torch.Tensor, num_frames: int, stride: int | None = None) -> Iterator[torch.Tensor]:
    """Non-overlapping (by default) windows of ``num_frames`` along time of a [3, F, H, W] video."""
    stride = num_frames if stride is None else stride
    total = video.shape[1]
    for start in range(0, total - num_frames + 1, stride):
        yield video[:, start:start + num_frames]


def load_clip_windows(folder: str | os.PathLike, split: str = "all", num_frames: int = 49,
                      size: int | tuple[int, int] = 128, max_windows_per_clip: int | None = None) -> list[torch.Tensor]:
    """All ``num_frames``-long windows of the clips of one split, each [3, num_frames, H, W] in [-1, 1].

    A clip shorter than ``num_frames`` gives one window padded by repeating its last frame.
    """
    windows: list[torch.Tensor] = []
    for clip in split_clips(list_clips(folder), split):
        limit = None if max_windows_per_clip is None else num_frames * max_windows_per_clip
        video = read_clip(clip, size=size, max_frames=limit)
        if video.shape[1] < num_frames:
            pad = video[:, -1:].expand(-1, num_frames - video.shape[1], -1, -1)
            video = torch.cat([video, pad], dim=1)
        clip_windows_list = list(clip_windows(video, num_frames))
        windows.extend(clip_windows_list[:max_windows_per_clip])
    return windows


def uint8_to_float(video_uint8: torch.Tensor) -> torch.Tensor:
    """[F, H, W, 3] uint8 -> [3, F, H, W] float32 in [-1, 1]."""
    return video_uint8.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def float_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] float in [-1, 1] -> [F, H, W, 3] uint8 (clamped, rounded)."""
    return video.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 3, 0)


def write_mp4(frames: torch.Tensor | np.ndarray, path: str | os.PathLike, fps: float = 24.0) -> Path:
    """Write a video as H.264 mp4. ``frames``: uint8 [F, H, W, 3] or float [3, F, H, W] in [-1, 1].

    Odd heights/widths are padded by ffmpeg's macro-block rounding (imageio-ffmpeg), so 128x128 is exact.
    """
    import imageio_ffmpeg

    tensor = torch.as_tensor(frames)
    if tensor.dtype != torch.uint8:
        if tensor.ndim != 4 or tensor.shape[0] != 3:
            raise InputError(f"write_mp4: float frames must be [3, F, H, W], got {tuple(tensor.shape)}")
        tensor = float_to_uint8(tensor)
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise InputError(f"write_mp4: uint8 frames must be [F, H, W, 3], got {tuple(tensor.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(tensor.cpu().numpy())
    num_frames, height, width, _ = array.shape
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, quality=8,
                                         macro_block_size=1)
    writer.send(None)  # start the generator
    for frame in array:
        writer.send(frame)
    writer.close()
    return path
