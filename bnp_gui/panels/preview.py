"""Preview: ACC and ASR before versus after pruning, and ACC/ASR versus the viewed method's k.

The numbers arrive from the session's preview worker, first on a fast subset then on the full
test set; the curve is computed on the subset and fills in point by point.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from bnp_gui.class_names import class_names, label_text
from bnp_gui.panels.plot_style import style_plot
from bnp_gui.report import plural
from bnp_gui.session import CURVE_KS, CURVE_SUBSET, Session
from core.methods import METHOD_NAMES

ACC_COLOUR = (40, 150, 70)
ASR_COLOUR = (220, 60, 50)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} %"


class PreviewPanel(QWidget):
    """Before/after numbers and the trade-off curve."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        grid = QGridLayout()
        self.labels: dict[tuple[str, str], QLabel] = {}
        grid.addWidget(QLabel(""), 0, 0)
        grid.addWidget(QLabel("<b>before</b>"), 0, 1, Qt.AlignRight)
        grid.addWidget(QLabel("<b>after</b>"), 0, 2, Qt.AlignRight)
        for row, (metric, tip) in enumerate(
            (
                ("ACC", "Top-1 accuracy on the clean test samples"),
                (
                    "ASR",
                    "Attack success rate: triggered non-target samples classified as the "
                    "target label",
                ),
            ),
            start=1,
        ):
            name = QLabel(f"<b>{metric}</b>")
            name.setToolTip(tip)
            grid.addWidget(name, row, 0)
            for col, stage in enumerate(("before", "after"), start=1):
                label = QLabel("–")
                label.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
                label.setToolTip(tip)
                font = label.font()
                font.setPointSizeF(font.pointSizeF() * 1.3)
                label.setFont(font)
                grid.addWidget(label, row, col)
                self.labels[(metric, stage)] = label
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(2, 1)
        self._add_estimate_row(grid, 3)
        self.status = QLabel(" ")
        self.status.setWordWrap(True)

        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        item = self.plot.getPlotItem()
        item.hideButtons()
        item.setLabel("bottom", "threshold k")
        item.setLabel("left", "%")
        item.setYRange(0, 100)
        item.setXRange(CURVE_KS[0] - 0.3, CURVE_KS[-1] + 0.3)
        item.getViewBox().setMouseEnabled(x=False, y=False)
        item.addLegend(offset=(-5, -5), labelTextSize="8pt")  # bottom right: curves sit high
        self.acc_curve = item.plot(
            [],
            [],
            pen=pg.mkPen(ACC_COLOUR, width=2),
            symbol="o",
            symbolSize=5,
            symbolBrush=ACC_COLOUR,
            name="ACC",
        )
        self.asr_curve = item.plot(
            [],
            [],
            pen=pg.mkPen(ASR_COLOUR, width=2),
            symbol="o",
            symbolSize=5,
            symbolBrush=ASR_COLOUR,
            name="ASR",
        )
        self._add_estimate_curve(item)
        self.k_line = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen("#888", width=1))
        item.addItem(self.k_line)
        self.plot.setToolTip(
            "ACC and ASR when only the shown method prunes, versus its threshold k, on a "
            "fixed subset of the test set. It is not the combined mask: the numbers above are. "
            "The grey line is the method's current k."
        )

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(grid)
        layout.addWidget(self.status)
        layout.addWidget(self.plot, 1)

        session.preview_changed.connect(self._update_numbers)
        session.mask_changed.connect(self._update_numbers)
        session.curve_changed.connect(self._update_curve)
        session.view_changed.connect(self._update_curve)
        session.scores_changed.connect(self._update_curve)
        session.mask_changed.connect(self._update_k_line)
        session.trigger_changed.connect(self._update_numbers)
        self._update_numbers()
        self._update_curve()

    def _add_estimate_row(self, grid: QGridLayout, row: int) -> None:
        """ASR estimated from the suspected samples (no trigger needed), marked as an estimate."""
        tip = (
            "Estimated ASR: share of the clean samples stamped with a trigger reconstructed "
            "from the suspected poisoned samples, or else of those samples themselves, that "
            "the model classifies as the inferred target — an estimate, not a measurement"
        )
        name = QLabel("<b>ASR</b> <i>(est.)</i>")
        name.setToolTip(tip)
        grid.addWidget(name, row, 0)
        for col, stage in enumerate(("before", "after"), start=1):
            label = QLabel("–")
            label.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
            label.setToolTip(tip)
            grid.addWidget(label, row, col)
            self.labels[("ASR est.", stage)] = label
        state = self.session.suspects
        state.estimate_changed.connect(self._update_estimate)
        state.changed.connect(self._update_estimate)

    def _add_estimate_curve(self, item) -> None:
        """Estimated ASR versus threshold (dashed), from the suspected samples."""
        pen = pg.mkPen(ASR_COLOUR, width=2, style=Qt.DashLine)
        self.est_curve = item.plot([], [], pen=pen, name="ASR (est.)")
        state = self.session.suspects
        state.curve_changed.connect(self._update_estimate_curve)
        self.session.view_changed.connect(self._update_estimate_curve)

    def _update_estimate_curve(self) -> None:
        points = self.session.suspects.curves.get(self.session.view_method, [])
        self.est_curve.setData([k for k, _ in points], [p for _, p in points])

    def _update_estimate(self) -> None:
        state = self.session.suspects
        for stage, e in (("before", state.estimate_before), ("after", state.estimate)):
            label = self.labels[("ASR est.", stage)]
            if state.analysis is None or e is None or e.percent is None:
                label.setText("–")
            else:
                label.setText(f"≈{e.percent:.1f} %")
                label.setToolTip(f"{e.describe()}; 95 % interval {e.low:.0f}–{e.high:.0f} %")

    def apply_palette(self, foreground, background) -> None:
        style_plot(self.plot, foreground, background)

    def value(self, metric: str, stage: str) -> str:
        return self.labels[(metric, stage)].text()

    def _update_numbers(self) -> None:
        s = self.session
        p = s.preview
        if p is None:
            for label in self.labels.values():
                label.setText("–")
        else:
            # "before" is the unpruned model: once measured on the full set it stays fixed
            before = s.baseline.get(None) or p.before
            self.labels[("ACC", "before")].setText(_fmt(before.acc))
            self.labels[("ASR", "before")].setText(_fmt(before.asr))
            self.labels[("ACC", "after")].setText(_fmt(p.after.acc))
            self.labels[("ASR", "after")].setText(_fmt(p.after.asr))
        if s.inspection is None:
            status = "Open a checkpoint."
        elif s.eval_set() is None:
            status = "Open data (File › Open Data…) to measure ACC and ASR."
        elif p is None:
            status = "Measuring…"
        else:
            where = (
                f"fast subset of {p.after.n_clean} samples, full set coming…"
                if p.stage == "subset"
                else f"full test set: {p.after.n_clean} clean, {p.after.n_poison} triggered"
            )
            status = (
                f"{plural(p.pruned, 'neuron')} pruned — {where} (computed in {p.elapsed:.1f} s)"
            )
            if s.preview_pending and p.stage == "full":
                status += " — updating…"
        if s.inspection is not None and s.trigger is None and s.trigger_error:
            status += f"<br><i>No ASR: {_escape(s.trigger_error)}</i>"
        elif s.trigger is not None:
            target = label_text(class_names(s), s.trigger.target)
            status += (
                f"<br>ASR trigger: {_escape(s.trigger.source.describe())}, target {_escape(target)}"
            )
        self.status.setText(status)

    def _update_k_line(self) -> None:
        self.k_line.setValue(self.session.thresholds[self.session.view_method])

    def _update_curve(self) -> None:
        s = self.session
        points = s.curves.get(s.view_method, [])
        ks = [k for k, _ in points]
        self.acc_curve.setData(ks, [m.acc for _, m in points])
        asr = [(k, m.asr) for k, m in points if m.asr is not None]
        self.asr_curve.setData([k for k, _ in asr], [a for _, a in asr])
        name = METHOD_NAMES[s.view_method]
        self.plot.getPlotItem().setTitle(
            f"{name} alone: ACC / ASR versus k ({CURVE_SUBSET} samples)",
            size="9pt",
        )
        self._update_k_line()


def _escape(text: object) -> str:
    """A file's string in the rich-text status: control characters written out, HTML escaped."""
    import html

    from core.safety import printable

    return html.escape(printable(text))
