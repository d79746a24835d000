"""The selected neuron: its pre-activation distribution on clean versus triggered samples, with
the Gaussian of the BatchNorm's running statistics overlaid (the papers' key picture), and the
buttons that force-prune or keep it.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QButtonGroup, QHBoxLayout, QLabel, QRadioButton, QVBoxLayout, QWidget

from bnp_gui.panels.plot_style import style_plot
from bnp_gui.session import Session

CLEAN_COLOUR = (60, 130, 230)
TRIGGER_COLOUR = (230, 70, 50)
GAUSS_COLOUR = (40, 170, 80)


class NeuronPanel(QWidget):
    """Pre-activation histograms of the selected neuron, plus its override buttons."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.title = QLabel("Click a neuron in the heatmap.")
        self.title.setWordWrap(True)

        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        item = self.plot.getPlotItem()
        item.hideButtons()
        item.setLabel("bottom", "pre-activation (BatchNorm input)")
        item.setLabel("left", "density")
        self.legend = item.addLegend(offset=(-5, 5), labelTextSize="8pt")
        self.clean_curve = item.plot(
            [],
            [],
            stepMode="center",
            fillLevel=0,
            pen=pg.mkPen(CLEAN_COLOUR, width=1.5),
            brush=(*CLEAN_COLOUR, 70),
            name="clean samples",
        )
        self.trigger_curve = item.plot(
            [],
            [],
            stepMode="center",
            fillLevel=0,
            pen=pg.mkPen(TRIGGER_COLOUR, width=1.5),
            brush=(*TRIGGER_COLOUR, 70),
            name="triggered samples",
        )
        self.gauss_curve = item.plot(
            [],
            [],
            pen=pg.mkPen(GAUSS_COLOUR, width=2.5, style=pg.QtCore.Qt.DashLine),
            name="BN running stats N(m, v)",
        )

        self.override_group = QButtonGroup(self)
        buttons = QHBoxLayout()
        for state, text, tip in (
            (None, "Auto&matic", "Prune this neuron only if the thresholds flag it (A)"),
            ("prune", "Force &prune", "Prune this neuron whatever the thresholds say (P)"),
            ("keep", "&Keep", "Never prune this neuron (K)"),
        ):
            button = QRadioButton(text)
            button.setToolTip(f"Decision for the selected neuron: {tip[0].lower()}{tip[1:]}")
            button.setProperty("override", state or "auto")
            self.override_group.addButton(button)
            buttons.addWidget(button)
        buttons.addStretch(1)
        self.override_group.buttonClicked.connect(self._override_clicked)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.plot, 1)
        layout.addLayout(buttons)

        session.selection_changed.connect(self._selection_changed)
        session.activations_changed.connect(self._redraw)
        session.mask_changed.connect(self._sync_buttons)
        session.checkpoint_changed.connect(self._redraw)
        self._selection_changed()

    def apply_palette(self, foreground, background) -> None:
        style_plot(self.plot, foreground, background)

    def _selection_changed(self) -> None:
        sel = self.session.selected
        for button in self.override_group.buttons():
            button.setEnabled(sel is not None)
        if sel is None:
            self.title.setText("Click a neuron in the heatmap to see its pre-activations.")
        else:
            self.title.setText(f"<b>{sel[0]}</b> · channel {sel[1]} — computing…")
        self._sync_buttons()
        self._redraw()

    def _sync_buttons(self) -> None:
        sel = self.session.selected
        state = self.session.override(sel) if sel is not None else None
        for button in self.override_group.buttons():
            button.setChecked(button.property("override") == (state or "auto") and sel is not None)

    def _override_clicked(self, button) -> None:
        if self.session.selected is not None:
            state = button.property("override")
            self.session.set_override(self.session.selected, None if state == "auto" else state)

    def _redraw(self) -> None:
        act = self.session.activations
        if act is None:
            for curve in (self.clean_curve, self.trigger_curve, self.gauss_curve):
                curve.setData([], [])
            return
        clean = act.clean.double().numpy()
        triggered = act.triggered.double().numpy() if act.triggered is not None else None
        std = float(np.sqrt(max(act.running_var, 1e-12)))
        everything = clean if triggered is None else np.concatenate([clean, triggered])
        lo = min(np.percentile(everything, 0.2), act.running_mean - 4 * std)
        hi = max(np.percentile(everything, 99.8), act.running_mean + 4 * std)
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, 61)
        counts, _ = np.histogram(clean, bins=edges, density=True)
        self.clean_curve.setData(edges, counts)
        if triggered is not None and triggered.size:
            tcounts, _ = np.histogram(triggered, bins=edges, density=True)
            self.trigger_curve.setData(edges, tcounts)
        else:
            self.trigger_curve.setData([], [])
        x = np.linspace(lo, hi, 300)
        gauss = np.exp(-0.5 * ((x - act.running_mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))
        self.gauss_curve.setData(x, gauss)
        self.plot.getPlotItem().enableAutoRange()
        trig = "" if triggered is not None else " (no trigger: clean only)"
        self.title.setText(
            f"<b>{act.layer}</b> · channel {act.channel}: clean mean {clean.mean():.3g}"
            + (f", triggered mean {triggered.mean():.3g}" if triggered is not None else "")
            + f"; BN running mean {act.running_mean:.3g}, var {act.running_var:.3g}{trig}"
        )
