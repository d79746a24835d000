"""Per-layer score distribution with the threshold as a draggable line.

The histogram shows one layer's scores for the viewed method; the vertical line sits at that
layer's threshold mean_L ± k·std_L. Dragging it sets k for the method (the same k applies to every
layer, as in the papers); the cheap redraw follows the drag, the session debounces the preview.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from bnp_gui.neuron_grid import k_from_value, threshold_value
from bnp_gui.panels.plot_style import style_plot
from bnp_gui.session import DIRECTION, K_MAX, K_MIN, Session
from core.model.methods import METHOD_NAMES

if TYPE_CHECKING:  # torch is imported where it is used, once the engine has loaded
    import torch

INFINITE_WHY = "a BatchNorm running variance of 0 divides by zero (the checkpoint is broken)"


class DistributionPanel(QWidget):
    """Histogram of one layer's scores and the draggable threshold line."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.layer_box = QComboBox()
        self.layer_box.setToolTip("Layer whose score distribution is shown (follows selection).")
        # long layer names are elided, not allowed to widen the window (1280-px screens)
        self.layer_box.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.layer_box.setMinimumContentsLength(12)
        self.layer_box.currentIndexChanged.connect(self._redraw)
        self.info = QLabel(" ")
        self.info.setWordWrap(True)  # long counts wrap rather than widen the window

        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        item = self.plot.getPlotItem()
        item.hideButtons()
        item.setLabel("left", "neurons")
        self.hist = pg.PlotDataItem(
            stepMode="center", fillLevel=0, brush=(80, 140, 220, 150), pen=pg.mkPen(80, 140, 220)
        )
        item.addItem(self.hist)
        self.line = pg.InfiniteLine(
            angle=90,
            movable=True,
            pen=pg.mkPen("#e03030", width=2),
            hoverPen=pg.mkPen("#ff8080", width=3),
            label="k = {value}",
            labelOpts={"position": 0.9, "anchors": [(1, 0), (1, 0)]},
        )
        self.line.setToolTip("Drag to change this method's threshold k")
        item.addItem(self.line)
        self.line.sigPositionChanged.connect(self._line_dragged)
        self._updating = False

        top = QHBoxLayout()
        top.addWidget(QLabel("Layer:"))
        top.addWidget(self.layer_box)
        top.addWidget(self.info, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)

        session.checkpoint_changed.connect(self._fill_layers)
        session.scores_changed.connect(self._redraw)
        session.view_changed.connect(self._redraw)
        session.mask_changed.connect(self._move_line)
        session.selection_changed.connect(self._follow_selection)
        self._fill_layers()

    def apply_palette(self, foreground, background) -> None:
        style_plot(self.plot, foreground, background)
        self.line.label.setColor(foreground)

    def current_layer(self) -> str | None:
        return self.layer_box.currentData()

    def _fill_layers(self) -> None:
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        for name, channels in self.session.layers:
            self.layer_box.addItem(f"{name} ({channels})", name)
        self.layer_box.blockSignals(False)
        self._redraw()

    def _follow_selection(self) -> None:
        sel = self.session.selected
        if sel is None:
            return
        index = self.layer_box.findData(sel[0])
        if index >= 0 and index != self.layer_box.currentIndex():
            self.layer_box.setCurrentIndex(index)

    def _scores(self) -> torch.Tensor | None:
        layer = self.current_layer()
        scores = self.session.scores.get(self.session.view_method)
        if layer is None or scores is None or layer not in scores:
            return None
        return scores[layer]

    def _redraw(self) -> None:
        method = self.session.view_method
        s = self._scores()
        item = self.plot.getPlotItem()
        item.setLabel("bottom", f"{METHOD_NAMES[method]} score")
        if s is None:
            self.hist.setData([], [])
            self.line.hide()
            self.info.setText("no scores for this layer" if self.current_layer() else " ")
            return
        import torch

        values = s[~torch.isnan(s)].double().numpy()
        infinite = int(np.isinf(values).sum())
        values = values[np.isfinite(values)]
        if values.size == 0:
            self.hist.setData([], [])
            self.line.hide()
            self.info.setText(
                f"every score of this layer is infinite — {INFINITE_WHY}"
                if infinite
                else "no neuron of this layer has a score"
            )
            return
        bins = int(np.clip(np.sqrt(values.size) * 2, 10, 80))
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            hi = lo + 1e-6
        counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
        self.hist.setData(edges, counts)
        self.line.show()
        self._move_line()
        item.enableAutoRange()

    def _move_line(self) -> None:
        s = self._scores()
        method = self.session.view_method
        if s is None:
            return
        k = self.session.thresholds[method]
        value = threshold_value(s, k, DIRECTION[method])
        import torch

        if value is None:
            self.line.hide()
            infinite = int(torch.isinf(s).sum())
            if infinite:  # the layer's mean and std, hence its threshold, are undefined
                self.info.setText(
                    f"{infinite} of {len(s)} scores infinite, no threshold — {INFINITE_WHY}"
                )
            return
        self._updating = True
        self.line.setValue(value)
        self.line.label.setFormat(f"k = {k:.2f}")
        self._place_label(value)
        self._updating = False
        flagged = self.session.flags.get(method, {}).get(self.current_layer())
        n = int(flagged.sum()) if flagged is not None else 0
        side = ">" if DIRECTION[method] == "high" else "<"
        self.info.setText(f"{n} of {len(s)} flagged ({side} {value:.4g})")

    def _place_label(self, value: float) -> None:
        """The k label on the side of the line with room, never over the y axis."""
        (x0, x1), _ = self.plot.getPlotItem().getViewBox().viewRange()
        left_half = value < x0 + 0.5 * (x1 - x0)
        anchors = [(0, 0), (0, 0)] if left_half else [(1, 0), (1, 0)]
        if self.line.label.anchors != anchors:
            self.line.label.anchors = anchors
            self.line.label.updatePosition()

    def _line_dragged(self) -> None:
        if self._updating:
            return
        s = self._scores()
        method = self.session.view_method
        if s is None:
            return
        k = k_from_value(s, float(self.line.value()), DIRECTION[method])
        if k is None:
            return
        # the session clamps k to its range; mask_changed then puts the line (and its label)
        # where the applied k is, so what is shown is what is applied
        self.session.set_threshold(method, float(np.clip(k, K_MIN, K_MAX)))
