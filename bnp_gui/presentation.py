"""Presentation mode: the window readable across a room.

Larger fonts everywhere (plot ticks included), the ACC/ASR numbers very large, the model pane
(attack, target, enlarged trigger) and the example strip shown; the tables, the score
distribution, the neuron plot and the trade-off curve hidden. Toggling back restores
exactly what was there.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtGui import QFont, QFontInfo
from PySide6.QtWidgets import QApplication

SCALE = 1.6
NUMBER_PT = 30.0
TRIGGER_SIDE = 160
EXAMPLE_SIDE = 76
PANE_SCALE = 1.3
CAPTION_SCALE = 1.15  # details (captions, the preview's status) in presentation mode


def readable_layer_font(heatmap, current: QFont, big: QFont) -> QFont:
    """The heatmap's layer names as large as their rows allow (one name per row, never
    overlapping), up to the presentation font; ``current`` when the rows allow no larger."""
    rows = max(len(heatmap.grid.layers) if heatmap.grid is not None else 0, 1)
    view = heatmap.plot.getPlotItem().getViewBox()
    row_px = view.height() / rows if view.height() > 0 else 0
    font = QFont(big)
    font.setPixelSize(max(int(min(row_px * 0.85, QFontInfo(big).pixelSize())), 1))
    return font if font.pixelSize() > QFontInfo(current).pixelSize() else current


class PresentationMode:
    """Switches one window (and its analyst tools) into and out of presentation mode."""

    def __init__(self, window, tools) -> None:
        self.window = window
        self.tools = tools
        self.on = False
        self._saved: dict = {}

    def _enlarge_layer_names(self, big: QFont) -> None:
        if not self.on:
            return
        heatmap = self.window.heatmap
        current = self._saved.get("layer_ticks") or QFont()
        heatmap.set_layer_font(readable_layer_font(heatmap, current, big))

    def _plots(self):
        w = self.window
        return [w.heatmap.plot, w.distribution.plot, w.neuron.plot, w.preview.plot]

    def set(self, on: bool) -> None:
        if on == self.on:
            return
        w, t = self.window, self.tools
        size = w.size()
        if on:
            base = QApplication.font()
            big = QFont(base)
            big.setPointSizeF(base.pointSizeF() * SCALE)
            self._saved = {
                "font": w.font(),
                "numbers": {key: label.font() for key, label in w.preview.labels.items()},
                "table": w.thresholds.table.isVisible(),
                "details": w.bottom_split.isVisible(),
                "right": w.right.sizes(),
                "curve": w.preview.plot.isVisible(),
                "docks": {name: dock.isVisible() for name, dock in t.docks.items()},
                "ticks": [
                    {
                        n: p.getPlotItem().getAxis(n).style.get("tickFont")
                        for n in ("left", "bottom")
                    }
                    for p in self._plots()
                ],
                "trigger_side": t.model_pane.trigger_image.width(),
                "example_side": t.examples.side,
                "toolbar": w.toolbar.isVisible(),
                "layer_ticks": w.heatmap.plot.getPlotItem().getAxis("left").style.get("tickFont"),
            }
            w.setFont(big)
            for label in w.preview.labels.values():
                f = QFont(label.font())
                f.setPointSizeF(NUMBER_PT)
                f.setBold(True)
                label.setFont(f)
            w.thresholds.table.hide()
            w.bottom_split.hide()  # distribution and neuron plot: the heatmap takes the room
            total = sum(w.right.sizes())
            w.right.setSizes([int(total * 0.3), total - int(total * 0.3)])  # numbers + curve
            t.model_pane.set_compact(True)
            w.preview.plot.hide()  # the numbers tell the story; the curve is for analysts
            t.docks["table"].hide()
            t.docks["model"].show()
            t.docks["examples"].show()
            tick = QFont(big)
            tick.setPointSizeF(base.pointSizeF() * 1.3)
            for p in self._plots():
                for n in ("left", "bottom"):
                    if p is w.heatmap.plot and n == "left":
                        continue  # one layer name per row: they must not overlap
                    p.getPlotItem().getAxis(n).setStyle(tickFont=tick)
            self._saved["pane_width"] = t.model_pane.maximumWidth()
            t.model_pane.setMaximumWidth(int(t.model_pane.maximumWidth() * PANE_SCALE))
            t.model_pane.trigger_image.setFixedSize(TRIGGER_SIDE, TRIGGER_SIDE)
            caption = QFont(base)
            caption.setPointSizeF(base.pointSizeF() * CAPTION_SCALE)
            t.examples.set_side(EXAMPLE_SIDE, caption)  # images large, captions less so
            # the room goes to the numbers, the heatmap and the examples (1280×720 projectors);
            # the presenter keeps the menus and every shortcut
            w.toolbar.hide()
            w.next_step.set_suppressed(True)
            w.thresholds.set_compact(True)
            small = QFont(base)
            small.setPointSizeF(base.pointSizeF() * CAPTION_SCALE)
            w.preview.status.setFont(small)
            # once the hidden panels' room went to the heatmap: its rows' height is known then
            QTimer.singleShot(0, lambda: self._enlarge_layer_names(big))
        else:
            saved = self._saved
            w.setFont(saved["font"])
            for key, font in saved["numbers"].items():
                w.preview.labels[key].setFont(font)
            w.thresholds.table.setVisible(saved["table"])
            w.bottom_split.setVisible(saved["details"])
            w.right.setSizes(saved["right"])
            t.model_pane.set_compact(False)
            w.preview.plot.setVisible(saved["curve"])
            for name, visible in saved["docks"].items():
                t.docks[name].setVisible(visible)
            for p, fonts in zip(self._plots(), saved["ticks"], strict=False):
                for n, font in fonts.items():
                    p.getPlotItem().getAxis(n).setStyle(tickFont=font or QFont())
            t.model_pane.setMaximumWidth(saved["pane_width"])
            side = saved["trigger_side"]
            t.model_pane.trigger_image.setFixedSize(side, side)
            t.examples.set_side(saved["example_side"])
            w.toolbar.setVisible(saved["toolbar"])
            w.next_step.set_suppressed(False)
            w.thresholds.set_compact(False)
            w.preview.status.setFont(QFont())  # inherits the window's font again
            w.heatmap.set_layer_font(saved["layer_ticks"])
        self.on = on
        t.model_pane.refresh()
        # the window keeps its size (a 1280×720 projector); Qt grows it while panels change
        if not (w.isFullScreen() or w.isMaximized()):
            QTimer.singleShot(0, lambda: w.resize(size))
