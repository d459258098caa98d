"""Report figures: per-block scores (like Neodragon Fig. 7) and the drop-one frame grid (like Fig. 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from neoc.prune.importance import BlockImportance
from neoc.prune.visual import VisualImpact


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def importance_plot(importance: BlockImportance, path: Path, removed: Sequence[int] = (),
                    impact: VisualImpact | None = None, combined: dict[int, float] | None = None,
                    title: str = "") -> Path:
    """BI^t per CFG branch (positive blue, negative orange; no point for the final block), BI^v (green), the
    removed blocks shaded; a second panel with the visual impact (1 - PSNR/max, LPIPS) and the combined score."""
    plt = _pyplot()
    n = importance.num_blocks
    blocks = list(range(n))
    panels = 1 + (impact is not None) + bool(combined)
    fig, axes = plt.subplots(panels, 1, figsize=(max(6.0, 0.45 * n + 3), 3.2 * panels), squeeze=False)
    ax = axes[0][0]
    colours = {"positive": "tab:blue", "negative": "tab:orange"}
    for branch, values in importance.text_by_branch.items():
        xs = [k for k in blocks if values[k] is not None]
        ax.plot(xs, [values[k] for k in xs], "o-", color=colours.get(branch), label=f"text ({branch} prompts)")
    ax.plot(blocks, importance.visual, "s-", color="tab:green", label="visual")
    ax.set_ylabel("BI = 1 - E[cos(x_k, x_k+1)]")
    ax.set_title(title or f"Block importance ({importance.videos} videos, {importance.calls} denoiser calls; "
                          f"shaded = removed)", fontsize=9)
    ax.legend(fontsize=8)
    row = 1
    if impact is not None:
        ax2 = axes[row][0]
        row += 1
        by = impact.by_block()
        ks = sorted(by)
        lines = ax2.plot(ks, [by[k].psnr_db for k in ks], "o-", color="tab:purple", label="PSNR vs full model (dB)")
        ax2.set_ylabel("PSNR (dB)")
        if all(by[k].lpips is not None for k in ks):
            twin = ax2.twinx()
            lines += twin.plot(ks, [by[k].lpips for k in ks], "^-", color="tab:brown", label="LPIPS vs full model")
            twin.set_ylabel("LPIPS")
        ax2.legend(lines, [line.get_label() for line in lines], fontsize=8)
        ax2.set_title(f"Visual impact of dropping each block alone ({impact.videos} videos each)", fontsize=9)
    if combined:
        ax3 = axes[row][0]
        ks = sorted(combined)
        ax3.bar(ks, [combined[k] for k in ks], color=["tab:red" if k in set(removed) else "tab:gray" for k in ks])
        ax3.set_ylabel("policy score")
        ax3.set_title("Selection score (higher = keep; red = removed)", fontsize=9)
    for row_axes in axes:
        a = row_axes[0]
        for k in removed:
            a.axvspan(k - 0.4, k + 0.4, color="tab:red", alpha=0.12, lw=0)
        a.set_xticks(blocks)
        a.set_xlim(-0.6, n - 0.4)
        a.grid(alpha=0.3)
    axes[-1][0].set_xlabel("block id")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frame_grid(frames: dict[str, torch.Tensor], path: Path, removed: Sequence[int] = ()) -> Path:
    """One middle frame per model (full, then each dropped block), the chosen blocks boxed in red."""
    plt = _pyplot()
    names = list(frames)
    cols = min(len(names), 8)
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    chosen = {f"drop {k}" for k in removed}
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        image = ((frames[name].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
        ax.imshow(image)
        ax.set_title(name, fontsize=8, color="tab:red" if name in chosen else "black")
        if name in chosen:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:red")
                spine.set_linewidth(2.5)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
