"""The toy world: procedural text-to-video data for ``builtin:pyramid-tiny``.

Real Pyramid-Flow weights cannot be fetched here, so neoc trains a tiny Pyramid-Flow on this world and
judges every compression pass with the probe in ``neoc.eval`` (VBench-shaped, component-facts.md §7).

A clip shows ONE shape (circle, square, triangle, star) of one colour moving one way (left, right,
up, down, grow, shrink, rotate, still) over a background (solid colour, two-colour gradient, or a real
texture crop cut from the bundled clips and tinted by the background colour). Videos are fixed by
the toy-world contract: 49 frames, RGB, geometry in 128x128 units; rendered at any square size
(``frame_size``: the tiny pipeline uses 64x64, ``neoc.zoo.builtin.TINY_SIZE``).

Rendering is analytic: every frame is a signed-distance field of the shape evaluated on the pixel
grid (all 49 frames at once, torch-vectorised), turned into 1-pixel anti-aliased coverage and
composited over the background. The same scene always gives the same bytes.

Split rule (train and eval never overlap): a scene's split is fixed by a hash of its fields
(``scene_split``: SHA-1 of ``repr(scene)``, eval when the first byte < 26, ~10 %), and
``ToyWorldDataset`` draws from split-specific seed streams and rejects scenes of the other split.
So even an identical scene cannot appear in both splits.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import attrs
import numpy as np
import torch

from neoc.errors import InputError

NUM_FRAMES = 49
FRAME_SIZE = 128

SHAPES = ("circle", "square", "triangle", "star")
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "rotate", "still")
BACKGROUNDS = ("solid", "gradient", "texture")

# Saturated object colours (RGB 0..255).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 235),
    "yellow": (245, 215, 40),
    "purple": (150, 60, 205),
    "orange": (250, 140, 25),
}
# Background colours: names disjoint from COLORS so a caption names each attribute unambiguously.
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (18, 18, 22),
    "white": (236, 236, 232),
    "gray": (128, 128, 128),
    "navy": (22, 32, 92),
    "beige": (214, 198, 160),
    "brown": (105, 66, 38),
    "teal": (24, 112, 112),
}
GRADIENT_DIRECTIONS = ("horizontal", "vertical", "diagonal")

# Motion amplitudes over the whole clip (frame 0 -> frame 48), in 128-pixel units.
TRANSLATION_PIXELS = 48.0
GROW_FACTOR = 1.8
SHRINK_FACTOR = 0.5
ROTATION_DEGREES = 60.0          # clockwise on screen; no shape's symmetry period divides it
SIZE_RANGE = (12.0, 22.0)        # circumradius in pixels at frame 0
MARGIN = 4.0                     # pixels kept free at the frame border
MIN_CONTRAST = 130.0             # min RGB distance between object colour and any background colour

TEXTURE_DIR = Path(__file__).resolve().parents[1] / "zoo" / "assets" / "textures"
TEXTURE_DETAIL_GAIN = 1.3        # texture high-pass added to the background colour


@attrs.frozen
class ToyScene:
    """One toy clip. Positions/sizes are in pixels of the 128x128 frame at frame 0.

    ``size`` is the circumradius (centre to farthest point). ``angle`` is the initial orientation in
    degrees (clockwise on screen). ``texture_id`` indexes the bundled texture crops (used when
    ``background == "texture"``); ``gradient_direction`` is used when ``background == "gradient"``.
    """

    shape: str = attrs.field(validator=attrs.validators.in_(SHAPES))
    color: str = attrs.field(validator=attrs.validators.in_(tuple(COLORS)))
    motion: str = attrs.field(validator=attrs.validators.in_(MOTIONS))
    background: str = attrs.field(validator=attrs.validators.in_(BACKGROUNDS))
    background_color: str = attrs.field(validator=attrs.validators.in_(tuple(BACKGROUND_COLORS)))
    x: float = 64.0
    y: float = 64.0
    size: float = 16.0
    angle: float = 0.0
    texture_id: int = 0
    gradient_direction: str = attrs.field(default="horizontal",
                                          validator=attrs.validators.in_(GRADIENT_DIRECTIONS))


# --------------------------------------------------------------------------------------------------
# Textures: small crops of the bundled real clips
# --------------------------------------------------------------------------------------------------

TEXTURE_CROP = 64


def cut_texture_crops(video_folder: str | Path, out_folder: str | Path = TEXTURE_DIR,
                      crops_per_clip: int = 2) -> list[Path]:
    """Cut the texture PNGs from the real clips (run once; the PNGs ship in the package).

    For each clip: decode frame 30 with the short side scaled to 256, score every 64x64 window on a
    32-pixel grid by its mean absolute Laplacian (fine detail), keep the ``crops_per_clip`` best
    non-overlapping windows. Files: ``texture_<k>.png``, 64x64 RGB, a few KB each.
    """
    from PIL import Image

    from neoc.data.videos import list_clips, read_clip

    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for clip in list_clips(video_folder):
        frame = read_clip(clip, size=(256, 448), max_frames=31)[:, 30]  # [3, 256, 448]
        luma = frame.mean(0)
        laplacian = (4 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1]
                     - luma[1:-1, :-2] - luma[1:-1, 2:]).abs()
        candidates = []
        for top in range(0, 256 - TEXTURE_CROP + 1, 32):
            for left in range(0, 448 - TEXTURE_CROP + 1, 32):
                window = laplacian[max(top - 1, 0):top + TEXTURE_CROP - 1, max(left - 1, 0):left + TEXTURE_CROP - 1]
                candidates.append((float(window.mean()), top, left))
        candidates.sort(reverse=True)
        chosen: list[tuple[int, int]] = []
        for _, top, left in candidates:
            if all(abs(top - t) >= TEXTURE_CROP or abs(left - l) >= TEXTURE_CROP for t, l in chosen):
                chosen.append((top, left))
            if len(chosen) == crops_per_clip:
                break
        for top, left in chosen:
            crop = frame[:, top:top + TEXTURE_CROP, left:left + TEXTURE_CROP]
            pixels = crop.add(1).mul(127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
            path = out_folder / f"texture_{len(written)}.png"
            Image.fromarray(pixels).save(path, optimize=True)
            written.append(path)
    return written


@lru_cache(maxsize=1)
def _texture_details() -> torch.Tensor:
    """Zero-mean luminance detail of each bundled texture, upsampled to 128x128: [K, 128, 128]."""
    from PIL import Image

    paths = sorted(TEXTURE_DIR.glob("texture_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    if not paths:
        raise InputError(f"{TEXTURE_DIR}: no texture_*.png crops (run neoc.data.toyworld.cut_texture_crops)")
    details = []
    for path in paths:
        rgb = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32))  # [64, 64, 3]
        luma = rgb.mean(-1)[None, None]  # [1, 1, 64, 64]
        luma = torch.nn.functional.interpolate(luma, size=(FRAME_SIZE, FRAME_SIZE), mode="bilinear",
                                               align_corners=False)[0, 0]
        detail = luma - luma.mean()
        details.append(detail / detail.std().clamp_min(1.0) * 22.0)  # normalised contrast, ~22 levels std
    return torch.stack(details)


def num_textures() -> int:
    return int(_texture_details().shape[0])


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

def _background_rgb(scene: ToyScene, size: int) -> torch.Tensor:
    """Static background [size, size, 3] float in 0..255."""
    base = torch.tensor(BACKGROUND_COLORS[scene.background_color], dtype=torch.float32)
    if scene.background == "solid":
        return base.expand(size, size, 3).clone()
    if scene.background == "gradient":
        coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        ramp_x = coords[None, :].expand(size, size)
        ramp_y = coords[:, None].expand(size, size)
        ramp = {"horizontal": ramp_x, "vertical": ramp_y, "diagonal": (ramp_x + ramp_y) / 2}[scene.gradient_direction]
        far_end = _gradient_far_end(base)
        return base + (far_end - base) * ramp[..., None]
    detail = _texture_details()[scene.texture_id % num_textures()]
    if size != FRAME_SIZE:
        detail = torch.nn.functional.interpolate(detail[None, None], size=(size, size), mode="bilinear",
                                                 align_corners=False)[0, 0]
    return (base + TEXTURE_DETAIL_GAIN * detail[..., None]).clamp(0, 255)


def _gradient_far_end(base: torch.Tensor) -> torch.Tensor:
    """The gradient's second colour: the background colour moved 45 % toward black or white."""
    luminance = float(base @ torch.tensor([0.299, 0.587, 0.114]))
    target = torch.zeros(3) if luminance > 128 else torch.full((3,), 255.0)
    return base + 0.45 * (target - base)


def background_extremes(scene: ToyScene) -> list[tuple[float, float, float]]:
    """Colours the object must stand out against (the gradient's two ends, or the solid colour)."""
    base = torch.tensor(BACKGROUND_COLORS[scene.background_color], dtype=torch.float32)
    colours = [base]
    if scene.background == "gradient":
        colours.append(_gradient_far_end(base))
    return [tuple(float(v) for v in c) for c in colours]


def motion_track(scene: ToyScene, num_frames: int = NUM_FRAMES) -> dict[str, torch.Tensor]:
    """Per-frame object state: ``x``, ``y``, ``size`` (pixels), ``angle`` (degrees, clockwise); each [F]."""
    progress = torch.linspace(0.0, 1.0, num_frames)
    x = torch.full((num_frames,), scene.x)
    y = torch.full((num_frames,), scene.y)
    size = torch.full((num_frames,), scene.size)
    angle = torch.full((num_frames,), scene.angle)
    if scene.motion == "left":
        x = x - TRANSLATION_PIXELS * progress
    elif scene.motion == "right":
        x = x + TRANSLATION_PIXELS * progress
    elif scene.motion == "up":
        y = y - TRANSLATION_PIXELS * progress
    elif scene.motion == "down":
        y = y + TRANSLATION_PIXELS * progress
    elif scene.motion == "grow":
        size = size * (1 + (GROW_FACTOR - 1) * progress)
    elif scene.motion == "shrink":
        size = size * (1 + (SHRINK_FACTOR - 1) * progress)
    elif scene.motion == "rotate":
        angle = angle + ROTATION_DEGREES * progress
    return {"x": x, "y": y, "size": size, "angle": angle}


def _polygon_sdf(px: torch.Tensor, py: torch.Tensor, points: int, outer: torch.Tensor,
                 inner: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside) to a star with ``points`` tips at radius ``outer`` and notches
    at ``inner``; a regular polygon is the star whose notches sit at the edge midpoints
    (inner = outer * cos(pi / points)). Coordinates are relative to the centre, already un-rotated,
    with a tip on the +x axis. Works by folding the plane into one half-sector [0, pi/points].
    """
    half_sector = math.pi / points
    radius = torch.sqrt(px * px + py * py)
    theta = torch.remainder(torch.atan2(py, px), 2 * half_sector)
    theta = torch.minimum(theta, 2 * half_sector - theta)  # mirror into [0, half_sector]
    qx, qy = radius * torch.cos(theta), radius * torch.sin(theta)
    # edge from tip A=(outer, 0) to notch B=inner*(cos h, sin h)
    ax, ay = outer, torch.zeros_like(outer)
    bx, by = inner * math.cos(half_sector), inner * math.sin(half_sector)
    ex, ey = bx - ax, by - ay
    t = (((qx - ax) * ex + (qy - ay) * ey) / (ex * ex + ey * ey)).clamp(0, 1)
    dx, dy = qx - ax - t * ex, qy - ay - t * ey
    distance = torch.sqrt(dx * dx + dy * dy)
    # the origin lies on the inner side of edge AB; a point is inside iff it is on the same side
    side = ex * (qy - ay) - ey * (qx - ax)  # > 0: same side as the origin (origin gives ex*(-ay)-ey*(-ax) > 0)
    return torch.where(side > 0, -distance, distance)


def _shape_sdf(shape: str, px: torch.Tensor, py: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Signed distance field of the (un-rotated) shape with circumradius ``size``; tip/corner points up."""
    if shape == "circle":
        return torch.sqrt(px * px + py * py) - size
    # rotate the frame so that a tip on +x points up on screen (screen y grows downward)
    ux, uy = -py, px
    if shape == "square":
        return _box_sdf(px, py, size)
    if shape == "triangle":
        return _polygon_sdf(ux, uy, 3, size, size * math.cos(math.pi / 3))
    if shape == "star":
        return _polygon_sdf(ux, uy, 5, size, size * 0.45)
    raise InputError(f"shape={shape!r}: expected one of {SHAPES}")


def _box_sdf(px: torch.Tensor, py: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Axis-aligned square with circumradius ``size`` (half-side size/sqrt(2))."""
    half = size / math.sqrt(2.0)
    qx, qy = px.abs() - half, py.abs() - half
    outside = torch.sqrt(qx.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2)
    inside = torch.maximum(qx, qy).clamp_max(0)
    return outside + inside


def _local_windows(track: dict[str, torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-frame square window (in output pixels) that holds the object: origins y0, x0 [F] and side B.

    Rendering only evaluates the signed-distance field inside these windows (the object covers a few
    percent of the frame), which keeps a 49x128x128 clip at a few milliseconds.
    """
    scale = size / FRAME_SIZE
    side = min(size, int(math.ceil(2 * float(track["size"].max()) * scale)) + 4)
    x0 = torch.floor(track["x"] * scale - side / 2).clamp(0, size - side).long()
    y0 = torch.floor(track["y"] * scale - side / 2).clamp(0, size - side).long()
    return y0, x0, side


def _window_coverage(scene: ToyScene, track: dict[str, torch.Tensor], y0: torch.Tensor, x0: torch.Tensor,
                     side: int, size: int) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] inside each frame's window: [F, B, B]."""
    scale = size / FRAME_SIZE
    offsets = torch.arange(side, dtype=torch.float32) + 0.5
    cols = (x0[:, None].float() + offsets[None]) / scale  # [F, B] pixel centres in 128-units
    rows = (y0[:, None].float() + offsets[None]) / scale  # [F, B]
    dx = (cols - track["x"][:, None])[:, None, :]          # [F, 1, B]
    dy = (rows - track["y"][:, None])[:, :, None]          # [F, B, 1]
    rotation = torch.deg2rad(track["angle"])[:, None, None]
    cos_a, sin_a = torch.cos(rotation), torch.sin(rotation)
    # un-rotate: the shape is turned clockwise on screen (y down) by +angle
    px = cos_a * dx + sin_a * dy                           # [F, B, B]
    py = -sin_a * dx + cos_a * dy
    sdf = _shape_sdf(scene.shape, px, py, track["size"][:, None, None]) * scale  # output pixels
    return (0.5 - sdf).clamp(0, 1)


def coverage(scene: ToyScene, num_frames: int = NUM_FRAMES, size: int = FRAME_SIZE) -> torch.Tensor:
    """Anti-aliased object coverage in [0, 1]: [F, size, size]."""
    track = motion_track(scene, num_frames)
    y0, x0, side = _local_windows(track, size)
    local = _window_coverage(scene, track, y0, x0, side, size)  # [F, B, B]
    full = torch.zeros(num_frames, size, size)
    frame_index, rows, cols = _window_index(y0, x0, side)
    full[frame_index, rows, cols] = local
    return full


def latent_object_mask(scene: ToyScene, latent_frames: int, latent_size: int, temporal: int = 8,
                       spatial: int = 8) -> torch.Tensor:
    """The object's share of each latent cell [latent_frames, latent_size, latent_size] in [0, 1], for a causal
    VAE with ``temporal`` x ``spatial`` downsampling: pixel coverage at ``latent_size * spatial``, max over the
    frames a latent frame encodes (frame 0 alone, then ``temporal`` each), mean over the cell's pixels. The
    per-position weights of object-weighted flow matching (``1 + w * mask``)."""
    pixels = coverage(scene, 1 + temporal * (latent_frames - 1), latent_size * spatial)   # [F, H, W]
    per_frame = torch.nn.functional.adaptive_avg_pool2d(pixels, latent_size)           # [F, h, w]
    groups = [per_frame[:1]] + [per_frame[1 + temporal * (k - 1):1 + temporal * k] for k in range(1, latent_frames)]
    return torch.stack([g.amax(0) for g in groups])


def _window_index(y0: torch.Tensor, x0: torch.Tensor, side: int):
    """Broadcast index tensors addressing each frame's window: ([F,1,1], [F,B,1], [F,1,B])."""
    steps = torch.arange(side)
    frame_index = torch.arange(y0.shape[0])[:, None, None]
    rows = (y0[:, None] + steps[None])[:, :, None]
    cols = (x0[:, None] + steps[None])[:, None, :]
    return frame_index, rows, cols


def render(scene: ToyScene, num_frames: int = NUM_FRAMES, size: int = FRAME_SIZE,
           frame_ids: Sequence[int] | None = None) -> torch.Tensor:
    """The clip as uint8 [F, H, W, 3] (default [49, 128, 128, 3]). Deterministic.

    ``frame_ids`` renders only those frames of the ``num_frames``-frame clip (same pixels as slicing).
    """
    track = motion_track(scene, num_frames)
    if frame_ids is not None:
        index = torch.as_tensor(list(frame_ids), dtype=torch.long)
        track = {key: value[index] for key, value in track.items()}
        num_frames = int(index.numel())
    y0, x0, side = _local_windows(track, size)
    alpha = _window_coverage(scene, track, y0, x0, side, size)[..., None]  # [F, B, B, 1]
    background = _background_rgb(scene, size)                              # [H, W, 3] float
    frame_index, rows, cols = _window_index(y0, x0, side)
    local_background = background[rows, cols]                              # [F, B, B, 3]
    colour = torch.tensor(COLORS[scene.color], dtype=torch.float32)
    local = local_background + (colour - local_background) * alpha          # [F, B, B, 3]
    frames = background.round().clamp(0, 255).to(torch.uint8).expand(num_frames, size, size, 3).clone()
    frames[frame_index, rows, cols] = local.round_().clamp_(0, 255).to(torch.uint8)
    return frames  # [F, H, W, 3]


def render_float(scene: ToyScene, num_frames: int = NUM_FRAMES, size: int = FRAME_SIZE) -> torch.Tensor:
    """The clip as float [3, F, H, W] in [-1, 1] (the VAE's input layout)."""
    return render(scene, num_frames, size).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------------------------------
# Sampling scenes and captions
# --------------------------------------------------------------------------------------------------

def _contrast_ok(color: str, scene: ToyScene) -> bool:
    obj = np.array(COLORS[color], dtype=np.float64)
    return all(np.linalg.norm(obj - np.array(bg)) >= MIN_CONTRAST for bg in background_extremes(scene))


def _position_range(motion: str, size: float, axis: str) -> tuple[float, float]:
    """Start-coordinate range keeping the whole object inside the frame for the whole clip."""
    low, high = MARGIN + size, FRAME_SIZE - MARGIN - size
    if motion in ("grow",):
        extent = size * GROW_FACTOR
        low, high = MARGIN + extent, FRAME_SIZE - MARGIN - extent
    if (motion, axis) in (("left", "x"), ("up", "y")):
        low += TRANSLATION_PIXELS
    if (motion, axis) in (("right", "x"), ("down", "y")):
        high -= TRANSLATION_PIXELS
    return low, high


def sample_scene(rng: np.random.Generator, **fixed) -> ToyScene:
    """A random scene. Keyword arguments fix fields (e.g. ``shape="star"``); the rest are drawn.

    Constraints: a circle never "rotates" (it would look still); the object colour keeps an RGB
    distance >= MIN_CONTRAST from the background; the object stays inside the frame all clip long.
    """
    shape = fixed.get("shape") or SHAPES[rng.integers(len(SHAPES))]
    motions = [m for m in MOTIONS if not (shape == "circle" and m == "rotate")]
    motion = fixed.get("motion") or motions[rng.integers(len(motions))]
    background = fixed.get("background") or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    direction = fixed.get("gradient_direction") or GRADIENT_DIRECTIONS[rng.integers(len(GRADIENT_DIRECTIONS))]
    texture_id = int(fixed.get("texture_id", rng.integers(1 << 16)))
    size = float(fixed.get("size", round(float(rng.uniform(*SIZE_RANGE)) * 2) / 2))
    angle = float(fixed.get("angle", round(float(rng.uniform(-15.0, 15.0)), 1)))
    x_low, x_high = _position_range(motion, size, "x")
    y_low, y_high = _position_range(motion, size, "y")
    x = float(fixed.get("x", round(float(rng.uniform(x_low, x_high)) * 2) / 2))
    y = float(fixed.get("y", round(float(rng.uniform(y_low, y_high)) * 2) / 2))
    background_color = fixed.get("background_color")
    color = fixed.get("color")
    for _ in range(100):
        bg_name = background_color or tuple(BACKGROUND_COLORS)[rng.integers(len(BACKGROUND_COLORS))]
        obj_name = color or tuple(COLORS)[rng.integers(len(COLORS))]
        scene = ToyScene(shape=shape, color=obj_name, motion=motion, background=background,
                         background_color=bg_name, x=x, y=y, size=size, angle=angle,
                         texture_id=texture_id % max(_num_textures_or_one(), 1),
                         gradient_direction=direction)
        if _contrast_ok(obj_name, scene):
            return scene
    raise InputError(f"no background colour contrasts with color={color!r} (background_color={background_color!r})")


def _num_textures_or_one() -> int:
    try:
        return num_textures()
    except InputError:
        return 1


def scene_split(scene: ToyScene) -> str:
    """"eval" for ~10 % of all scenes (hash of every field), "train" for the rest."""
    digest = hashlib.sha1(repr(attrs.astuple(scene)).encode()).digest()
    return "eval" if digest[0] < 26 else "train"


_SHAPE_WORDS = {
    "circle": ("circle", "disc", "round dot", "circle"),
    "square": ("square", "square", "box", "block"),
    "triangle": ("triangle", "triangle", "triangular shape"),
    "star": ("star", "five-pointed star", "star"),
}
_MOTION_PHRASES = {
    "left": ("moves to the left", "drifts left", "slides leftward", "travels to the left", "glides left"),
    "right": ("moves to the right", "drifts right", "slides rightward", "travels to the right", "glides right"),
    "up": ("moves up", "rises", "floats upward", "drifts upward", "climbs up"),
    "down": ("moves down", "sinks", "falls downward", "drifts down", "slides down"),
    "grow": ("grows", "grows larger", "expands", "gets bigger", "swells"),
    "shrink": ("shrinks", "gets smaller", "contracts", "shrinks away", "dwindles"),
    "rotate": ("rotates", "spins", "turns slowly", "rotates clockwise", "spins around"),
    "still": ("stays still", "sits motionless", "remains in place", "does not move", "rests in place"),
}
_MOTION_GERUNDS = {
    "left": ("moving left", "drifting to the left", "sliding leftward"),
    "right": ("moving right", "drifting to the right", "sliding rightward"),
    "up": ("moving up", "rising", "floating upward"),
    "down": ("moving down", "sinking", "falling downward"),
    "grow": ("growing", "expanding", "getting bigger"),
    "shrink": ("shrinking", "getting smaller", "contracting"),
    "rotate": ("rotating", "spinning", "turning slowly"),
    "still": ("standing still", "resting motionless", "staying in place"),
}


def _background_phrase(scene: ToyScene, rng: np.random.Generator) -> str:
    bg = scene.background_color
    options = {
        "solid": (f"a plain {bg} background", f"a solid {bg} background", f"a flat {bg} backdrop",
                  f"a {bg} background"),
        "gradient": (f"a {bg} gradient", f"a {bg} gradient background", f"a smooth {bg} gradient",
                     f"a {bg} color gradient"),
        "texture": (f"a textured {bg} background", f"a {bg} textured backdrop", f"a {bg} photographic texture",
                    f"a textured background tinted {bg}"),
    }[scene.background]
    return options[rng.integers(len(options))]


def _size_word(scene: ToyScene, rng: np.random.Generator) -> str:
    if scene.size < 15 and rng.random() < 0.7:
        return ("small ", "little ", "tiny ")[rng.integers(3)]
    if scene.size > 19 and rng.random() < 0.7:
        return ("large ", "big ")[rng.integers(2)]
    return ""


def caption(scene: ToyScene, rng: np.random.Generator) -> str:
    """A natural sentence naming shape, colour, motion and background (wording varies with ``rng``)."""
    shape = _SHAPE_WORDS[scene.shape][rng.integers(len(_SHAPE_WORDS[scene.shape]))]
    noun = f"{_size_word(scene, rng)}{scene.color} {shape}"
    verb = _MOTION_PHRASES[scene.motion][rng.integers(len(_MOTION_PHRASES[scene.motion]))]
    gerund = _MOTION_GERUNDS[scene.motion][rng.integers(len(_MOTION_GERUNDS[scene.motion]))]
    background = _background_phrase(scene, rng)
    preposition = ("over", "on", "against", "in front of")[rng.integers(4)]
    article = "an" if noun[0] in "aeiou" else "a"
    templates = (
        f"{article} {noun} {verb} {preposition} {background}",
        f"{article.capitalize()} {noun} {gerund}, {background.split(' ', 1)[1]}",
        f"{background[0].upper()}{background[1:]} with {article} {noun} {gerund}",
        f"{article.capitalize()} {noun} {gerund} {preposition} {background}.",
        f"On {background}, {article} {noun} {verb}.",
        f"{article} {noun} that {verb}, seen {preposition} {background}",
    )
    return templates[rng.integers(len(templates))]


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------

_SPLIT_STREAM = {"train": 0x7A11, "eval": 0xE7A1}


class ToyWorldDataset(torch.utils.data.Dataset):
    """Deterministic toy-world clips: item ``i`` -> (video float [3, 49, 128, 128] in [-1, 1], caption, scene).

    ``split`` "train" or "eval"; ``size`` items; ``seed`` picks a different (still split-disjoint) set.
    Scenes whose ``scene_split`` differs from ``split`` are redrawn, so the splits never share a scene.
    """

    def __init__(self, split: str = "train", size: int = 1000, seed: int = 0, num_frames: int = NUM_FRAMES,
                 frame_size: int = FRAME_SIZE):
        if split not in _SPLIT_STREAM:
            raise InputError(f"split={split!r}: expected 'train' or 'eval'")
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.num_frames, self.frame_size = num_frames, frame_size

    def __len__(self) -> int:
        return self.size

    def scene_and_caption(self, index: int) -> tuple[ToyScene, str]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng([_SPLIT_STREAM[self.split], self.seed, index])
        while True:
            scene = sample_scene(rng)
            if scene_split(scene) == self.split:
                return scene, caption(scene, rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, ToyScene]:
        scene, text = self.scene_and_caption(index)
        return render_float(scene, self.num_frames, self.frame_size), text, scene


def scenes_for(split: str, count: int, seed: int = 0) -> list[ToyScene]:
    """The first ``count`` scenes of a split (no rendering)."""
    dataset = ToyWorldDataset(split, count, seed)
    return [dataset.scene_and_caption(i)[0] for i in range(count)]


def attribute_index(scene: ToyScene) -> dict[str, int]:
    """Class indices of the probe's heads for a scene."""
    return {
        "shape": SHAPES.index(scene.shape),
        "color": tuple(COLORS).index(scene.color),
        "motion": MOTIONS.index(scene.motion),
        "background": BACKGROUNDS.index(scene.background),
        "background_color": tuple(BACKGROUND_COLORS).index(scene.background_color),
    }


ATTRIBUTE_CLASSES: dict[str, Sequence[str]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "motion": MOTIONS,
    "background": BACKGROUNDS,
    "background_color": tuple(BACKGROUND_COLORS),
}
