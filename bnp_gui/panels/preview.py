"""Preview: ACC and ASR before versus after pruning, and ACC/ASR versus the viewed method's k.

The numbers arrive from the session's preview worker, first on a fast subset then on the full
test set; the curve is computed on the subset and fills in point by point.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QGridLayout, QLabel, QVBoxLayout, QWidget

from bnp_gui.class_names import class_names, label_text
from bnp_gui.panels.plot_style import style_plot
from bnp_gui.report import plural
from bnp_gui.session import CURVE_KS, CURVE_SUBSET, Session
from core.model.methods import METHOD_NAMES

ACC_COLOUR = (40, 150, 70)
ASR_COLOUR = (220, 60, 50)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} %"


def curve_title(session) -> str:
    """What the trade-off curve measures, in its title."""
    method = session.view_method
    name = METHOD_NAMES[method]
    methods, combine, force, keep, in_mask = session.curve_decisions(method)
    if not in_mask:
        return f"{name} alone, not in the mask ({CURVE_SUBSET} samples)"
    rule = (" ∪ " if combine == "union" else " ∩ ").join(METHOD_NAMES[m] for m in methods)
    extra = " + overrides" if force or keep else ""
    return f"{rule}{extra}, {name} k varied ({CURVE_SUBSET} samples)"


class PreviewPanel(QWidget):
    """Before/after numbers and the trade-off curve."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        grid = QGridLayout()
        grid.setHorizontalSpacing(18)  # large numbers side by side stay apart
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
        # the preview's full-set numbers at the current k: the curve passes through them
        self.now_marks = pg.ScatterPlotItem(
            symbol="star", size=13, pen=pg.mkPen("#000000", width=1), pxMode=True
        )
        item.addItem(self.now_marks)
        self.plot.setToolTip(
            "ACC and ASR versus the shown method's threshold k, the other methods, the "
            "combination and the overrides as they are now (the method alone when it is not in "
            "the mask), on a fixed subset of the test set. The grey line is the current k; the "
            "stars are the numbers above, measured on the full test set."
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
        session.preview_changed.connect(self._update_now_marks)
        session.mask_changed.connect(self._update_curve)  # the title names the mask
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
            for key in (("ACC", "before"), ("ASR", "before"), ("ACC", "after"), ("ASR", "after")):
                self.labels[key].setText("–")
        else:
            # "before" is the unpruned model: once measured on the full set it stays fixed
            full_before = s.baseline.get(None)
            before = full_before or p.before
            subset = p.after.n_clean if p.stage == "subset" else None
            self._number("ACC", "before", before.acc, None if full_before else subset)
            self._number("ASR", "before", before.asr, None if full_before else subset)
            self._number("ACC", "after", p.after.acc, subset)
            self._number("ASR", "after", p.after.asr, subset)
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

    def _number(self, metric: str, stage: str, value: float | None, subset: int | None) -> None:
        """A full-set number in the label's (large) type; a fast-subset one small, in
        italics and marked with its sample count, so nobody reads it as the result."""
        label = self.labels[(metric, stage)]
        if subset is None or value is None:
            label.setText(_fmt(value))
            return
        size = QApplication.font().pointSizeF()
        label.setText(
            f"<span style='font-size:{size:g}pt; font-style:italic'>≈{_fmt(value)} "
            f"({subset} samples)</span>"
        )

    def _update_k_line(self) -> None:
        self.k_line.setValue(self.session.thresholds[self.session.view_method])

    def _update_curve(self) -> None:
        s = self.session
        points = s.curves.get(s.view_method, [])
        ks = [k for k, _ in points]
        self.acc_curve.setData(ks, [m.acc for _, m in points])
        asr = [(k, m.asr) for k, m in points if m.asr is not None]
        self.asr_curve.setData([k for k, _ in asr], [a for _, a in asr])
        self.plot.getPlotItem().setTitle(curve_title(s), size="9pt")
        self._update_k_line()
        self._update_now_marks()

    def _update_now_marks(self) -> None:
        """Stars at the current k: the preview's full-set ACC/ASR, where the curve's mask is
        the preview's (the viewed method is in the mask)."""
        s, p = self.session, self.session.preview
        in_mask = s.view_method in s.mask_methods()
        if p is None or p.stage != "full" or s.preview_pending or not in_mask:
            self.now_marks.setData([], [])
            return
        k = s.thresholds[s.view_method]
        spots = [{"pos": (k, p.after.acc), "brush": pg.mkBrush(ACC_COLOUR)}]
        if p.after.asr is not None:
            spots.append({"pos": (k, p.after.asr), "brush": pg.mkBrush(ASR_COLOUR)})
        self.now_marks.setData(spots)


def _escape(text: object) -> str:
    """A file's string in the rich-text status: control characters written out, HTML escaped."""
    import html

    from core.safety.paths import printable

    return html.escape(printable(text))
