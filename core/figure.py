"""The demo's static figure (matplotlib, no Qt): score heatmaps and ACC/ASR bars."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # scores are tensors; the module itself needs no torch (the window's empty grid)
    import torch


def score_matrix(scores: Mapping[str, torch.Tensor] | None, layers) -> np.ndarray:
    """Layers × max channels float32 array of scores, NaN-padded for ragged widths.

    `layers` are `(name, channels)` pairs in display order; layers without scores stay NaN.
    """
    width = max((int(c) for _, c in layers), default=0)
    matrix = np.full((len(layers), width), np.nan, dtype=np.float32)
    for row, (name, channels) in enumerate(layers):
        if scores is not None and name in scores:
            matrix[row, : int(channels)] = scores[name].detach().float().cpu().numpy()
    return matrix


def demo_figure(inspection, masks: dict, rows: list, path: Path, threshold: float) -> None:
    """Per-method z-score heatmaps with pruned neurons marked, and ACC/ASR before/after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(masks)
    fig = plt.figure(figsize=(16, 6.5), layout="constrained")
    grid = fig.add_gridspec(1, len(methods) + 1, width_ratios=[3] * len(methods) + [2.8])
    names = [layer.name for layer in inspection.layers]
    for col, method in enumerate(methods):
        ax = fig.add_subplot(grid[0, col])
        # suspicion points up for every method: EP flags LOW entropy, so its z is negated
        sign = -1.0 if method == "ep" else 1.0
        z = sign * score_matrix(inspection.z_scores(method), inspection.channels.items())
        image = ax.imshow(z, aspect="auto", cmap="viridis", vmin=-3, vmax=6,
                          interpolation="nearest")  # fmt: skip
        for row, layer in enumerate(inspection.layers):
            pruned = masks[method].gamma.get(layer.name)
            if pruned is not None and pruned.any():
                cols = np.nonzero(pruned.numpy())[0]
                ax.scatter(cols, np.full(len(cols), row), s=14, facecolors="none",
                           edgecolors="red", linewidths=1.0)  # fmt: skip
        label = "−z (low entropy)" if method == "ep" else "z-score"
        ax.set_title(f"{method.upper()} {label}; red: pruned at k={threshold:g}", fontsize=10)
        ax.set_xlabel("channel")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if col == 0 else [], fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.6, label="z-score within layer")
    ax = fig.add_subplot(grid[0, -1])
    acc = [m.acc for *_, m in rows]
    asr = [m.asr if m.asr is not None else 0.0 for *_, m in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, acc, 0.4, label="ACC %", color="#3b7dd8")
    ax.bar(x + 0.2, asr, 0.4, label="ASR %", color="#d8433b")
    for xi, a, s in zip(x, acc, asr, strict=True):
        ax.text(xi - 0.2, a + 1, f"{a:.1f}", ha="center", fontsize=8)
        ax.text(xi + 0.2, s + 1, f"{s:.1f}", ha="center", fontsize=8)
    ax.set_xticks(x, [f"{label}\n{pruned} pruned" for label, _, pruned, _ in rows], fontsize=7)
    ax.set_ylim(0, 110)
    ax.set_title("ACC / ASR, test subset", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{inspection.ckpt.metadata.arch}: {inspection.ckpt.path.name}")
    from core.io.export import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), what="figure")
    plt.close(fig)
