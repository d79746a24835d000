"""Neuron heatmap: BatchNorm layers (rows, data-flow order) × channels, coloured by score.

One ``ImageItem`` over a NaN-padded float32 grid (NaN is transparent, so ragged layer widths
show as they are), layer names as left-axis ticks, a colour bar with explicit levels, scatter
marks for flagged / force-pruned / kept neurons; hover shows layer, channel, score and z-score,
a click selects the neuron.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPointF, Qt, Signal
from PySide6.QtGui import QCursor, QFont, QFontInfo, QFontMetrics
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from bnp_gui.neuron_grid import NeuronGrid, build_grid
from bnp_gui.panels.plot_style import style_axis, style_plot
from bnp_gui.session import DIRECTION, Session
from core.model.masks import true_channels
from core.model.methods import METHOD_NAMES, METHODS

# colour = how suspicious a neuron is, as a z-score oriented so that high = suspicious
Z_LEVELS = (-2.0, 6.0)
MIN_LAYER_PX = 7  # layer names never smaller than this (rows shorter than it: names overlap)


class HeatmapPanel(QWidget):
    """Layers × channels heatmap of the viewed method's scores."""

    neuron_hovered = Signal(str)

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.grid: NeuronGrid | None = None

        self.method_box = QComboBox()
        for m in METHODS:
            self.method_box.addItem(METHOD_NAMES[m], m)
        self.method_box.setToolTip(
            "Which defense's scores to show (EP needs the training set, BNP clean samples, "
            "CLP no data)."
        )
        self.method_box.activated.connect(self._method_chosen)
        self.hover_label = QLabel(" ")
        self.hover_label.setTextInteractionFlags(Qt.TextSelectableByMouse)

        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.setToolTip("")
        item = self.plot.getPlotItem()
        item.invertY(True)
        item.setLabel("bottom", "channel")
        item.getAxis("bottom").enableAutoSIPrefix(False)  # channel indices, never "(x0.001)"
        item.setRange(xRange=(0, 64), yRange=(0, 1), padding=0)  # until a model is open
        item.hideButtons()
        item.getViewBox().setMouseEnabled(x=True, y=False)
        tick_font = QFont()
        tick_font.setPointSizeF(max(7.0, tick_font.pointSizeF() * 0.85))
        item.getAxis("left").setStyle(tickFont=tick_font)
        self._default_layer_font = tick_font
        self._layer_font = tick_font  # the wanted size; rows too short for it get a smaller one
        item.getViewBox().sigResized.connect(self._fit_layer_names)
        self.missing_image = pg.ImageItem(axisOrder="row-major")  # grey: neuron without score
        item.addItem(self.missing_image)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setColorMap(pg.colormap.get("CET-L8"))
        self.image.setLevels(Z_LEVELS)
        item.addItem(self.image)
        self.colorbar = pg.ColorBarItem(
            values=Z_LEVELS,
            colorMap=pg.colormap.get("CET-L8"),
            label="suspicion (z-score within layer)",
            interactive=False,
            width=12,
        )
        self.colorbar.setImageItem(self.image, insert_in=item)
        # Marks readable on every colour of the map: black strokes over a white halo.
        # ✕ = flagged by the viewed method, ● = pruned by the current mask (the two differ in
        # intersection mode, with other methods enabled, and with manual overrides).
        self.flag_halo = pg.ScatterPlotItem(
            symbol="x", size=9, pen=pg.mkPen("#ffffff", width=3.5), brush=None, pxMode=True
        )
        self.flag_marks = pg.ScatterPlotItem(
            symbol="x", size=9, pen=pg.mkPen("#000000", width=1.5), brush=None, pxMode=True
        )
        self.mask_marks = pg.ScatterPlotItem(
            symbol="o",
            size=6,
            pen=pg.mkPen("#000000", width=1.5),
            brush=pg.mkBrush("#ffffff"),
            pxMode=True,
        )
        self.prune_marks = pg.ScatterPlotItem(
            symbol="s", size=11, pen=pg.mkPen("#d00000", width=2.5), brush=None, pxMode=True
        )
        self.keep_marks = pg.ScatterPlotItem(
            symbol="o", size=11, pen=pg.mkPen("#00a000", width=2.5), brush=None, pxMode=True
        )
        self.selection_mark = pg.ScatterPlotItem(
            symbol="s", size=14, pen=pg.mkPen("#ff00ff", width=2), brush=None, pxMode=True
        )
        for marks in (
            self.flag_halo,
            self.flag_marks,
            self.mask_marks,
            self.prune_marks,
            self.keep_marks,
            self.selection_mark,
        ):
            item.addItem(marks)
        self.plot.scene().sigMouseMoved.connect(self._mouse_moved)
        self.plot.scene().sigMouseClicked.connect(self._mouse_clicked)
        self.plot.installEventFilter(self)  # arrow keys move the selection
        self.plot.setFocusPolicy(Qt.StrongFocus)

        top = QHBoxLayout()
        top.addWidget(QLabel("Scores:"))
        top.addWidget(self.method_box)
        self.legend = QLabel()
        self.legend.setToolTip(
            "Click a neuron to plot its pre-activations; arrow keys move the selection; "
            "right-click (or P / K / A) to force-prune, keep, or leave it to the thresholds."
        )
        self.legend.setWordWrap(True)
        top.addWidget(self.legend, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.hover_label)

        session.checkpoint_changed.connect(self._rebuild)
        session.scores_changed.connect(self._rebuild)
        session.view_changed.connect(self._rebuild)
        session.mask_changed.connect(self._update_marks)
        session.selection_changed.connect(self._update_selection)
        self._rebuild()

    def apply_palette(self, foreground, background) -> None:
        style_plot(self.plot, foreground, background)
        for name in ("left", "right"):  # the colour bar's label sits on its left axis
            style_axis(self.colorbar.getAxis(name), foreground)

    # --- rendering ---
    def _rebuild(self) -> None:
        s = self.session
        for i, m in enumerate(METHODS):
            model_item = self.method_box.model().item(i)
            model_item.setEnabled(s.available(m))
            model_item.setToolTip("" if s.available(m) else "Not computed yet: run Analyze.")
        self.method_box.setCurrentIndex(METHODS.index(s.view_method))
        method = s.view_method
        scores = s.scores.get(method)
        zs = s.zscores.get(method)
        self.grid = build_grid(s.layers, scores, zs)
        item = self.plot.getPlotItem()
        if self.grid.shape[0] == 0 or self.grid.shape[1] == 0:
            self.image.clear()
            self.missing_image.clear()
            item.getAxis("left").setTicks([[]])
            self._update_marks()
            return
        suspicion = self.grid.zscores if DIRECTION[method] == "high" else -self.grid.zscores
        self.image.setImage(suspicion, levels=Z_LEVELS, autoLevels=False)
        rows, cols = self.grid.shape
        self.image.setRect(0, 0, cols, rows)
        grey = np.zeros((rows, cols, 4), dtype=np.uint8)
        grey[self.grid.missing] = (150, 150, 150, 255)
        self.missing_image.setImage(grey, levels=(0, 255), autoLevels=False)
        self.missing_image.setRect(0, 0, cols, rows)
        ticks = [(i + 0.5, name) for i, name in enumerate(self.grid.layers)]
        item.getAxis("left").setTicks([ticks])
        self._fit_layer_names()
        label = "z-score" if DIRECTION[method] == "high" else "−z, low entropy"
        item.setTitle(
            f"{METHOD_NAMES[method]} scores per neuron — colour = suspicion ({label})", size="9pt"
        )
        item.getViewBox().setLimits(xMin=-1, xMax=cols + 1, yMin=-0.5, yMax=rows + 0.5)
        item.setRange(xRange=(0, cols), yRange=(0, rows), padding=0.01)
        self._update_marks()

    def set_layer_font(self, font: QFont | None) -> None:
        """The layer names' wanted font (presentation mode: larger; None: the default); each
        name gets at most its row's height, so that names never overlap."""
        self._layer_font = font or self._default_layer_font
        self._fit_layer_names()

    def _fit_layer_names(self, *_) -> None:
        if self.grid is None or not self.grid.layers:
            return
        left = self.plot.getPlotItem().getAxis("left")
        view = self.plot.getPlotItem().getViewBox()
        font = QFont(self._layer_font)
        wanted = QFontInfo(self._layer_font).pixelSize()
        if view.height() > 0:
            row = view.height() / len(self.grid.layers)
            font.setPixelSize(max(MIN_LAYER_PX, min(wanted, int(row * 0.9))))
        if font != left.style.get("tickFont"):
            left.setStyle(tickFont=font)
        longest = max(self.grid.layers, key=len)
        left.setWidth(QFontMetrics(font).horizontalAdvance(longest) + 14)  # never cut a name

    def _update_marks(self) -> None:
        s = self.session
        grid = self.grid
        self._update_legend()
        if grid is None:
            return
        flags = s.flags.get(s.view_method, {})
        flagged = grid.cells(true_channels(flags))
        self.flag_halo.setData(pos=flagged)
        self.flag_marks.setData(pos=flagged)
        self.mask_marks.setData(pos=grid.cells(s.display_mask.neurons()))
        self.prune_marks.setData(pos=grid.cells(_by_layer(s.force_prune)))
        self.keep_marks.setData(pos=grid.cells(_by_layer(s.keep)))
        self._update_selection()

    def _update_legend(self) -> None:
        """What each mark means right now, with the counts the marks show."""
        s = self.session
        method = s.view_method
        flags = s.flags.get(method, {})
        n_flagged = int(sum(int(f.sum()) for f in flags.values()))
        used = [METHOD_NAMES[m] for m in s.mask_methods()]
        rule = (" ∪ " if s.combine == "union" else " ∩ ").join(used) or "no method"
        pruned = s.total_pruned()
        self.legend.setText(
            f"<b>✕</b> flagged by {METHOD_NAMES[method]} at k = {s.thresholds[method]:g} "
            f"({n_flagged}) &nbsp; <b>●</b> pruned by the mask: {rule}"
            + (", with overrides" if s.force_prune or s.keep else "")
            + f" ({pruned}) &nbsp; <span style='color:#d00000'><b>□</b></span> force-pruned "
            "&nbsp; <span style='color:#00a000'><b>○</b></span> kept &nbsp; "
            "<span style='background:#969696;color:#000'>&nbsp;grey&nbsp;</span> no score"
        )

    @contextlib.contextmanager
    def without_selection(self):
        """For figure export: the selection square hidden while the picture is taken."""
        visible = self.selection_mark.isVisible()
        self.selection_mark.setVisible(False)
        try:
            yield
        finally:
            self.selection_mark.setVisible(visible)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if obj is self.plot and event.type() == QEvent.KeyPress:
            step = {
                Qt.Key_Left: (0, -1),
                Qt.Key_Right: (0, 1),
                Qt.Key_Up: (-1, 0),
                Qt.Key_Down: (1, 0),
            }.get(event.key())
            if step is not None:
                self.move_selection(*step)
                return True
        return super().eventFilter(obj, event)

    def move_selection(self, d_row: int, d_col: int) -> None:
        """Arrow keys: the next channel (left/right) or the same channel one layer up/down."""
        grid, sel = self.grid, self.session.selected
        if grid is None or not grid.layers:
            return
        if sel is None or grid.cell_of(*sel) is None:
            self.session.select_neuron((grid.layers[0], 0))
            return
        row, col = grid.cell_of(*sel)
        row = min(max(row + d_row, 0), len(grid.layers) - 1)
        col = min(max(col + d_col, 0), grid.widths[row] - 1)
        self.session.select_neuron((grid.layers[row], col))

    def _update_selection(self) -> None:
        sel = self.session.selected
        if self.grid is None or sel is None:
            self.selection_mark.setData(pos=np.zeros((0, 2)))
            return
        self.selection_mark.setData(pos=self.grid.cells({sel[0]: [sel[1]]}))

    # --- interaction ---
    def _neuron_at(self, scene_pos: QPointF) -> tuple[str, int] | None:
        if self.grid is None:
            return None
        vb = self.plot.getPlotItem().getViewBox()
        if not vb.sceneBoundingRect().contains(scene_pos):
            return None
        p = vb.mapSceneToView(scene_pos)
        return self.grid.neuron_at(math.floor(p.y()), math.floor(p.x()))

    def describe(self, neuron: tuple[str, int]) -> str:
        """One line about a neuron: layer, channel, score, z-score, flag and override."""
        s = self.session
        layer, ch = neuron
        method = s.view_method
        row, col = self.grid.cell_of(layer, ch)
        score, z = float(self.grid.scores[row, col]), float(self.grid.zscores[row, col])
        name = METHOD_NAMES[method]
        if math.isnan(score):
            why = {
                "ep": "its maxima are the same on every sample (constant neuron)",
                "bnp": "constant neuron",
                "clp": "its BatchNorm is not fed by a convolution",
            }[method]
            value = f"no {name} score: {why}"
        else:
            value = f"{name} score {score:.4g}, z {z:+.2f}"
        flagged = bool(s.flags.get(method, {}).get(layer, np.zeros(0, bool))[ch : ch + 1].any())
        parts = [f"{layer} · channel {ch}", value]
        if flagged:
            parts.append(f"flagged by {name}")
        pruned = layer in s.display_mask.gamma and bool(s.display_mask.gamma[layer][ch])
        if s.override(neuron):
            parts.append({"prune": "force-pruned", "keep": "kept"}[s.override(neuron)])
        else:
            parts.append("pruned" if pruned else "not pruned")
        return " — ".join(parts)

    def _mouse_moved(self, scene_pos: QPointF) -> None:
        neuron = self._neuron_at(scene_pos)
        if neuron is None:
            self.hover_label.setText(" ")
            QToolTip.hideText()
            return
        text = self.describe(neuron)
        self.hover_label.setText(text)
        QToolTip.showText(QCursor.pos(), text.replace(" — ", "\n"), self.plot)
        self.neuron_hovered.emit(text)

    def _mouse_clicked(self, event) -> None:
        neuron = self._neuron_at(event.scenePos())
        if neuron is None:
            if event.button() == Qt.RightButton:
                menu = QMenu(self)
                menu.setAttribute(Qt.WA_DeleteOnClose)
                menu.addAction("Export figure (PNG, SVG, clipboard)…", self.export_figure)
                menu.popup(QCursor.pos())
            return
        if event.button() == Qt.LeftButton:
            self.session.select_neuron(neuron)
        elif event.button() == Qt.RightButton:
            self.session.select_neuron(neuron)
            self._override_menu(neuron).popup(QCursor.pos())

    def _override_menu(self, neuron: tuple[str, int]) -> QMenu:
        """Right-click: force-prune, keep, or leave the neuron to the thresholds."""
        menu = QMenu(self)
        menu.setAttribute(Qt.WA_DeleteOnClose)
        current = self.session.override(neuron)
        for state, text in (
            (None, "Automatic (A)"),
            ("prune", "Force prune (P)"),
            ("keep", "Keep (K)"),
        ):
            action = menu.addAction(text)
            action.setCheckable(True)
            action.setChecked(current == state)
            action.setData(state or "auto")
        menu.triggered.connect(self._override_chosen)
        menu.addSeparator()
        export = menu.addAction("Export figure (PNG, SVG, clipboard)…")
        export.setData("export")
        return menu

    def export_figure(self) -> None:
        """pyqtgraph's export dialog for the heatmap (PNG, SVG, copy to the clipboard)."""
        self.plot.scene().showExportDialog()

    def _override_chosen(self, action) -> None:
        state = action.data()
        if state == "export":
            self.export_figure()
            return
        if self.session.selected is not None:
            self.session.set_override(self.session.selected, None if state == "auto" else state)

    def _method_chosen(self, index: int) -> None:
        method = self.method_box.itemData(index)
        if self.session.available(method):
            self.session.set_view_method(method)
        else:
            self.method_box.setCurrentIndex(METHODS.index(self.session.view_method))


def _by_layer(neurons) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for layer, ch in neurons:
        out.setdefault(layer, []).append(ch)
    return out
