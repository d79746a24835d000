"""Lay per-layer neuron scores out as one ragged layers × channels grid (Qt-free).

Rows are BatchNorm layers in data-flow order, columns are channels; rows narrower than the
widest layer are padded with NaN, which pyqtgraph draws transparent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.figure import score_matrix

if TYPE_CHECKING:  # torch is imported where it is used, once the engine has loaded
    import torch


@dataclass(frozen=True)
class NeuronGrid:
    """Scores, z-scores and flags of every neuron, as float32 rows padded with NaN."""

    layers: tuple[str, ...]
    widths: tuple[int, ...]
    scores: np.ndarray  # L × Cmax float32, NaN where no neuron or no score
    zscores: np.ndarray  # L × Cmax float32

    @property
    def missing(self) -> np.ndarray:
        """L × Cmax bool: a neuron exists there but has no score (constant, or no conv for CLP)."""
        exists = np.arange(self.scores.shape[1])[None, :] < np.asarray(self.widths)[:, None]
        return exists & np.isnan(self.scores)

    @property
    def shape(self) -> tuple[int, int]:
        return self.scores.shape  # type: ignore[return-value]

    def neuron_at(self, row: int, col: int) -> tuple[str, int] | None:
        """The (layer, channel) drawn at a cell, or None outside every layer."""
        if 0 <= row < len(self.layers) and 0 <= col < self.widths[row]:
            return self.layers[row], col
        return None

    def cell_of(self, layer: str, channel: int) -> tuple[int, int] | None:
        try:
            row = self.layers.index(layer)
        except ValueError:
            return None
        return (row, channel) if 0 <= channel < self.widths[row] else None

    def cells(self, neurons: Mapping[str, Sequence[int]] | dict) -> np.ndarray:
        """(x, y) cell centres of the given neurons, for scatter marks; shape K × 2."""
        points = []
        for row, layer in enumerate(self.layers):
            for ch in neurons.get(layer, ()):
                points.append((ch + 0.5, row + 0.5))
        return np.asarray(points, dtype=float).reshape(-1, 2)


def build_grid(
    layers: Sequence[tuple[str, int]],
    scores: Mapping[str, torch.Tensor] | None,
    zscores: Mapping[str, torch.Tensor] | None = None,
) -> NeuronGrid:
    """Grid of ``(layer name, channels)`` rows; layers without scores stay all-NaN rows."""
    names = tuple(name for name, _ in layers)
    widths = tuple(int(c) for _, c in layers)
    values = score_matrix(scores, layers)
    zvalues = score_matrix(zscores, layers)
    return NeuronGrid(names, widths, values, zvalues)


def threshold_value(scores: torch.Tensor, k: float, direction: str) -> float | None:
    """Score value of the layer's threshold mean_L ± k·std_L (None when it is undefined)."""
    import torch

    values = scores[~torch.isnan(scores)].double()
    if values.numel() < 2:
        return None
    std, mean = torch.std_mean(values)
    sign = 1.0 if direction == "high" else -1.0
    value = float(mean + sign * k * std)
    return value if math.isfinite(value) else None  # an infinite score leaves it undefined


def k_from_value(scores: torch.Tensor, value: float, direction: str) -> float | None:
    """Inverse of ``threshold_value``: the k that puts a layer's threshold at ``value``."""
    import torch

    values = scores[~torch.isnan(scores)].double()
    if values.numel() < 2:
        return None
    std, mean = torch.std_mean(values)
    if not (math.isfinite(float(std)) and math.isfinite(float(mean))) or float(std) <= 0:
        return None
    sign = 1.0 if direction == "high" else -1.0
    return float(sign * (value - mean) / std)
