"""Thresholds: per method a check box, slider and spin box for k; union or intersection of the
methods; counts of pruned neurons per layer and in total.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QRadioButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from bnp_gui.session import K_MAX, K_MIN, Session
from core.model.methods import METHOD_NAMES, METHODS

K_STEPS_PER_UNIT = 20  # slider: 0.05 steps over the session's [K_MIN, K_MAX]

TIPS = {
    "ep": "EP: flags neurons whose maximum-activation entropy on the training set is below "
    "mean − k·std of their layer (needs the suspect training set).",
    "bnp": "BNP: flags neurons whose clean statistics diverge from the BatchNorm's stored "
    "statistics by more than mean + k·std of their layer (KL; needs clean samples).",
    "clp": "CLP: flags neurons whose channel Lipschitz bound is above mean + k·std of their "
    "layer (data-free; also zeroes β).",
}


class ThresholdPanel(QWidget):
    """Per-method thresholds, the combination rule and the flagged-neuron counts."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.checks: dict[str, QCheckBox] = {}
        self.sliders: dict[str, QSlider] = {}
        self.spins: dict[str, QDoubleSpinBox] = {}
        self.counts: dict[str, QLabel] = {}

        grid = QGridLayout()
        grid.addWidget(QLabel("<b>method</b>"), 0, 0)
        grid.addWidget(QLabel("<b>threshold k</b>"), 0, 1, 1, 2)
        grid.addWidget(QLabel("<b>flagged</b>"), 0, 3)
        for row, m in enumerate(METHODS, start=1):
            check = QCheckBox(METHOD_NAMES[m])
            check.setToolTip(TIPS[m] + "\nChecked: this method's flags enter the prune mask.")
            check.toggled.connect(self._enabled_toggled)
            check.setProperty("method", m)
            slider = QSlider(Qt.Horizontal)
            slider.setRange(int(K_MIN * K_STEPS_PER_UNIT), int(K_MAX * K_STEPS_PER_UNIT))
            slider.setToolTip(TIPS[m])
            slider.setProperty("method", m)
            slider.valueChanged.connect(self._slider_moved)
            spin = QDoubleSpinBox()
            spin.setRange(K_MIN, K_MAX)
            spin.setSingleStep(0.1)
            spin.setDecimals(2)
            spin.setKeyboardTracking(False)
            spin.setToolTip(TIPS[m])
            spin.setProperty("method", m)
            spin.valueChanged.connect(self._spin_changed)
            count = QLabel("–")
            count.setMinimumWidth(60)
            count.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
            grid.addWidget(check, row, 0)
            grid.addWidget(slider, row, 1)
            grid.addWidget(spin, row, 2)
            grid.addWidget(count, row, 3)
            self.checks[m], self.sliders[m], self.spins[m], self.counts[m] = (
                check,
                slider,
                spin,
                count,
            )
        grid.setColumnStretch(1, 1)

        self.union = QRadioButton("&Union")
        self.union.setToolTip("Prune a neuron when any checked method flags it.")
        self.intersection = QRadioButton("&Intersection")
        self.intersection.setToolTip("Prune a neuron only when every checked method flags it.")
        combine = QButtonGroup(self)
        combine.addButton(self.union)
        combine.addButton(self.intersection)
        self.union.toggled.connect(self._combine_toggled)
        self.clear_button = QPushButton("Clear overrides")
        self.clear_button.setToolTip("Forget every force-prune and keep decision.")
        self.clear_button.clicked.connect(session.clear_overrides)
        self.combine_box = QWidget()  # hidden in presentation mode, with Clear overrides
        combine_row = QHBoxLayout(self.combine_box)
        combine_row.setContentsMargins(0, 0, 0, 0)
        combine_row.addWidget(QLabel("Combine:"))
        combine_row.addWidget(self.union)
        combine_row.addWidget(self.intersection)
        combine_row.addStretch(1)

        self.total = QLabel(" ")
        self.total.setWordWrap(True)
        self.table = QTableWidget(0, 3 + len(METHODS))
        self.table.setHorizontalHeaderLabels(
            ["layer", "neurons", *(METHOD_NAMES[m] for m in METHODS), "pruned"]
        )
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.NoSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.verticalHeader().setDefaultSectionSize(18)
        self.table.setToolTip(
            "Per BatchNorm layer: neurons flagged by each method at its threshold, and the "
            "neurons the combined mask (with manual overrides) prunes."
        )

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(grid)
        layout.addWidget(self.combine_box)
        total_row = QHBoxLayout()  # the button beside the count: the panel fits 1280 px
        total_row.addWidget(self.total, 1)
        total_row.addWidget(self.clear_button)
        layout.addLayout(total_row)
        layout.addWidget(self.table, 1)

        session.mask_changed.connect(self.sync)
        session.scores_changed.connect(self.sync)
        session.checkpoint_changed.connect(self.sync)
        self.sync()

    def set_compact(self, compact: bool) -> None:
        """Presentation mode: the thresholds and the count only (no combination, no table)."""
        self.combine_box.setVisible(not compact)
        self.clear_button.setVisible(not compact)

    # --- session → widgets ---
    def sync(self) -> None:
        s = self.session
        for m in METHODS:
            available = s.available(m)
            for w in (self.sliders[m], self.spins[m]):
                w.blockSignals(True)
            self.sliders[m].setValue(round(s.thresholds[m] * K_STEPS_PER_UNIT))
            self.spins[m].setValue(s.thresholds[m])
            for w in (self.sliders[m], self.spins[m]):
                w.blockSignals(False)
            self.checks[m].blockSignals(True)
            self.checks[m].setChecked(s.enabled[m])
            self.checks[m].blockSignals(False)
            flags = s.flags.get(m)
            self.counts[m].setText(
                str(int(sum(int(f.sum()) for f in flags.values()))) if flags else "–"
            )
            self.counts[m].setToolTip("" if available else "not computed yet: run Analyze")
        self.union.blockSignals(True)
        self.intersection.blockSignals(True)
        self.union.setChecked(s.combine == "union")
        self.intersection.setChecked(s.combine == "intersection")
        self.union.blockSignals(False)
        self.intersection.blockSignals(False)
        counts = s.layer_counts()
        total_neurons = sum(c for _, c in s.layers)
        used = ", ".join(METHOD_NAMES[m] for m in s.mask_methods()) or "no method"
        overrides = len(s.force_prune) + len(s.keep)
        self.total.setText(
            f"<b>{s.total_pruned()}</b> of {total_neurons} neurons pruned ({used}"
            + (f", {overrides} manual" if overrides else "")
            + ")"
        )
        # Only cells whose text or weight changed are touched: every change makes the table
        # re-measure its columns, and rewriting all cells of a deep model took ~0.2 s of the
        # GUI thread per threshold change (bench/bench_responsiveness.py).
        self.table.setUpdatesEnabled(False)
        try:
            self.table.setRowCount(len(s.layers))
            for row, (name, channels) in enumerate(s.layers):
                n = counts.get(name, 0)
                flagged = [
                    str(int(s.flags[m][name].sum())) if m in s.flags and name in s.flags[m] else "–"
                    for m in METHODS
                ]
                for col, text in enumerate((name, str(channels), *flagged, str(n))):
                    self._set_cell(row, col, text, bold=n > 0)
        finally:
            self.table.setUpdatesEnabled(True)

    def _set_cell(self, row: int, col: int, text: str, *, bold: bool) -> None:
        item = self.table.item(row, col)
        if item is None:
            item = QTableWidgetItem()
            if col:
                item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
            self.table.setItem(row, col, item)
        if item.text() != text:
            item.setText(text)
        if item.font().bold() != bold:
            font = item.font()
            font.setBold(bold)
            item.setFont(font)

    # --- widgets → session ---
    def _slider_moved(self, value: int) -> None:
        m = self.sender().property("method")
        self.session.set_threshold(m, value / K_STEPS_PER_UNIT)

    def _spin_changed(self, value: float) -> None:
        m = self.sender().property("method")
        self.session.set_threshold(m, value)

    def _enabled_toggled(self, checked: bool) -> None:
        m = self.sender().property("method")
        self.session.set_enabled(m, checked)

    def _combine_toggled(self, union_checked: bool) -> None:
        self.session.set_combine("union" if union_checked else "intersection")
