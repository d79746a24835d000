"""Presentation mode: the window readable across a room.

Larger fonts everywhere (plot ticks included), the ACC/ASR numbers very large, the model pane
(attack, target, enlarged trigger) and the example strip shown; the tables, the score
distribution, the neuron plot and the trade-off curve hidden. Toggling back restores
exactly what was there.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QApplication

SCALE = 1.6
NUMBER_PT = 30.0
TRIGGER_SIDE = 160
EXAMPLE_SIDE = 76
PANE_WIDTH = TRIGGER_SIDE + 60
MEASURED = ("ACC", "ASR")  # the preview's rows measured on the test set (not "ASR est.")
CAPTION_SCALE = 1.15  # details (captions, the preview's status) in presentation mode


class PresentationMode:
    """Switches one window (and its analyst tools) into and out of presentation mode."""

    def __init__(self, window, tools) -> None:
        self.window = window
        self.tools = tools
        self.on = False
        self._saved: dict = {}

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
            }
            w.setFont(big)
            for key, label in w.preview.labels.items():
                if key[0] not in MEASURED:
                    continue  # an estimate is no measurement: it keeps its ordinary size
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
            t.set_model_width(PANE_WIDTH)  # the trigger and a few words: the heatmap needs room
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
            w.heatmap.legend.setFont(small)  # two lines, not five: the heatmap keeps the room
            layer_font = QFont(big)
            layer_font.setPointSizeF(base.pointSizeF() * 1.3)
            w.heatmap.set_layer_font(layer_font)  # as far as the rows allow
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
            t.set_model_width(saved["pane_width"])
            side = saved["trigger_side"]
            t.model_pane.trigger_image.setFixedSize(side, side)
            t.examples.set_side(saved["example_side"])
            w.toolbar.setVisible(saved["toolbar"])
            w.next_step.set_suppressed(False)
            w.thresholds.set_compact(False)
            w.preview.status.setFont(QFont())  # inherits the window's font again
            w.heatmap.legend.setFont(QFont())
            w.heatmap.set_layer_font(None)
        self.on = on
        t.model_pane.refresh()
        # the window keeps its size (a 1280×720 projector); Qt grows it while panels change
        if w.isVisible() and not (w.isFullScreen() or w.isMaximized()):
            QTimer.singleShot(0, lambda: w.resize(size))
