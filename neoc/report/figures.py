"""The report's figures (PNG files next to report.md / report.html), drawn with matplotlib's Agg backend.

Every function takes the report dict (plus, for frame strips, the videos) and writes one PNG, returning its file
name, or returns ``None`` when the run has nothing to draw for it (e.g. no prune-blocks pass).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def trajectory_plot(report: dict[str, Any], out_dir: Path, name: str = "trajectory.png") -> str | None:
    """Latency, NFE and parameters after each pass (the paper's 184.2 s -> 6.7 s story, at this run's scale)."""
    points = report.get("trajectory") or []
    if len(points) < 2:
        return None
    plt = _plt()
    labels = [p["stage"] for p in points]
    x = list(range(len(points)))
    series = [("seconds per video", [p.get("seconds") for p in points], "s"),
              ("NFE (denoiser evaluations)", [p.get("nfe") for p in points], ""),
              ("parameters used in generation (M)", [(p.get("params") or 0) / 1e6 for p in points], "M")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (title, ys, unit) in zip(axes, series):
        xs = [i for i, y in zip(x, ys) if y is not None]
        vals = [y for y in ys if y is not None]
        ax.plot(xs, vals, marker="o", color="#3060a0")
        for i, y in zip(xs, vals):
            ax.annotate(f"{y:.3g}{unit}", (i, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(out_dir) / name, dpi=110)
    plt.close(fig)
    return name


def importance_plot(report: dict[str, Any], out_dir: Path, name: str = "block_importance.png") -> str | None:
    """prune-blocks: per-block visual / text Block Importance, removed blocks marked (the paper's Fig. 4)."""
    metrics = next((p.get("metrics") or {} for p in report.get("passes", [])
                    if p["name"] == "prune-blocks" and p.get("status") == "done"), None)
    if not metrics or not metrics.get("importance"):
        return None
    plt = _plt()
    rows = sorted(metrics["importance"], key=lambda r: r["block"])
    removed = set(metrics.get("removed_blocks") or [])
    blocks = [r["block"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 3.8))
    width = 0.38
    ax.bar([b - width / 2 for b in blocks], [r.get("visual") or 0 for r in rows], width, label="visual BI",
           color="#3060a0")
    ax.bar([b + width / 2 for b in blocks], [r.get("text") or 0 for r in rows], width, label="text BI",
           color="#d08030")
    impact = [r.get("impact") for r in rows]
    if any(v is not None for v in impact):
        ax2 = ax.twinx()
        ax2.plot(blocks, [v if v is not None else float("nan") for v in impact], "k.--", label="visual impact")
        ax2.set_ylabel("visual impact (drop-one)", fontsize=8)
    for b in removed:
        ax.axvspan(b - 0.5, b + 0.5, color="red", alpha=0.12)
    ax.set_xticks(blocks)
    ax.set_xlabel("MMDiT block (red: removed)")
    ax.set_ylabel("Block Importance (1 - cos)")
    ax.set_title(f"prune-blocks: kept {len(rows) - len(removed)} of {len(rows)} "
                 f"(removed {sorted(removed)})", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(Path(out_dir) / name, dpi=110)
    plt.close(fig)
    return name


def quality_plot(rows: list[dict[str, Any]], out_dir: Path, name: str = "quality.png") -> str | None:
    """Toy-world total / quality / semantic for every measured point (rows from :func:`quality_rows`)."""
    rows = [r for r in rows if r.get("total") is not None]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows) + 2), 4))
    x = list(range(len(rows)))
    for key, color, off in (("total", "#3060a0", -0.27), ("quality", "#60a060", 0.0), ("semantic", "#d08030", 0.27)):
        ax.bar([i + off for i in x], [r.get(key) or 0 for r in rows], 0.27, label=key, color=color)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r['pass']}\n{r['point']}" for r in rows], rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("toy-world score")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(out_dir) / name, dpi=110)
    plt.close(fig)
    return name


def quality_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every toy-world eval dict in the report, in run order: the runner's before, each pass's own
    measurements (any metric holding an eval dict), the runner's after."""
    rows = []

    def add(pass_name: str, point: str, d: dict) -> None:
        rows.append({"pass": pass_name, "point": point, "total": d.get("total"), "quality": d.get("quality"),
                     "semantic": d.get("semantic"), "num_videos": d.get("num_videos")})

    q = report.get("quality") or {}
    if isinstance(q.get("before"), dict):
        add("(runner)", "baseline", q["before"])
    for p in report.get("passes", []):
        for key, value in (p.get("metrics") or {}).items():
            if isinstance(value, dict) and "total" in value and "semantic" in value:
                add(p["name"], key, value)
            elif isinstance(value, dict):  # one level of nesting (e.g. {"float": {...}, "quantized": {...}})
                for sub, inner in value.items():
                    if isinstance(inner, dict) and "total" in inner and "semantic" in inner:
                        add(p["name"], f"{key}.{sub}", inner)
    if isinstance(q.get("after"), dict):
        add("(runner)", "compiled", q["after"])
    return rows


def frame_strip(videos: dict[str, torch.Tensor], out_dir: Path, name: str = "frames.png",
                frames: int = 8, prompts: list[str] | None = None) -> str | None:
    """One row per (label, video): ``frames`` evenly spaced frames of videos ``[N, 3, F, H, W]`` in [-1, 1]."""
    if not videos:
        return None
    plt = _plt()
    rows = []
    for label, vids in videos.items():
        for i in range(vids.shape[0]):
            rows.append((label, i, vids[i]))
    fig, axes = plt.subplots(len(rows), 1, figsize=(frames * 1.1, 1.3 * len(rows) + 0.3), squeeze=False)
    for ax, (label, i, video) in zip(axes[:, 0], rows):
        F = video.shape[1]
        idx = torch.linspace(0, F - 1, frames).round().long()
        strip = torch.cat([video[:, j] for j in idx], dim=2)  # [3, H, frames * W]
        img = ((strip.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).float().numpy()
        ax.imshow(img, interpolation="nearest")
        text = f"{label} #{i}"
        if prompts and i < len(prompts):
            text += f": {prompts[i][:70]}"
        ax.set_title(text, fontsize=7, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(Path(out_dir) / name, dpi=110)
    plt.close(fig)
    return name
