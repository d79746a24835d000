"""Tensors to Qt images for thumbnails (trigger, example strip)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap

if TYPE_CHECKING:  # torch is imported where it is used, once the engine has loaded
    import torch


def tensor_pixmap(image: torch.Tensor, side: int) -> QPixmap:
    """A C×H×W float [0, 1] (or uint8) image as a pixmap scaled to ``side`` pixels, with
    sharp pixels (a 3×3 trigger must stay a 3×3 pattern)."""
    x = image.detach().cpu()
    import torch

    if x.dtype == torch.uint8:
        x = x.float() / 255
    x = x.clamp(0, 1)
    if x.dim() == 2:
        x = x[None]
    if x.shape[0] == 1:
        x = x.expand(3, *x.shape[1:])
    x = x[:3]
    arr = np.ascontiguousarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    h, w, _ = arr.shape
    qimage = QImage(arr.data, w, h, 3 * w, QImage.Format_RGB888).copy()
    return QPixmap.fromImage(qimage).scaled(side, side, Qt.KeepAspectRatio, Qt.FastTransformation)
