"""Neuron table: every neuron as a sortable row (layer, channel, EP/BNP/CLP score and z, which
methods flag it, the decision), linked both ways with the heatmap's selection; a filter box finds
layers by name; rows copy to the clipboard and the whole table writes to CSV.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QEvent, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from bnp_gui.session import Session
from core.model.methods import METHOD_NAMES, METHODS

COLUMNS = (
    "layer",
    "channel",
    *(f"{METHOD_NAMES[m]} {what}" for m in METHODS for what in ("score", "z")),
    "flagged by",
    "decision",
)
SORT_ROLE = Qt.UserRole + 1


def neuron_rows(session: Session) -> list[list]:
    """One row per neuron in data-flow order: layer, channel, per-method score and z (NaN when
    missing), the methods that flag it at their thresholds, and what the mask does with it."""
    mask = session.display_mask
    rows = []
    for name, channels in session.layers:
        columns = []
        for m in METHODS:
            for table in (session.scores, session.zscores):
                values = (table.get(m) or {}).get(name)
                if values is None:
                    columns.append(np.full(channels, np.nan))
                else:
                    columns.append(values.detach().double().cpu().numpy())
        flags = {
            m: (session.flags.get(m) or {}).get(name)
            for m in METHODS
            if session.available(m) and name in (session.flags.get(m) or {})
        }
        pruned = mask.gamma.get(name)
        for ch in range(channels):
            by = ", ".join(METHOD_NAMES[m] for m, f in flags.items() if bool(f[ch]))
            override = session.override((name, ch))
            if override == "prune":
                decision = "force-pruned"
            elif override == "keep":
                decision = "kept"
            elif pruned is not None and bool(pruned[ch]):
                decision = "pruned"
            else:
                decision = "—"
            rows.append([name, ch, *(float(c[ch]) for c in columns), by, decision])
    return rows


def write_csv(session: Session, path: str | Path) -> int:
    """Every neuron's scores and decision as CSV (empty cell: no score); returns the row count."""
    rows = neuron_rows(session)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([c.replace(" ", "_").lower() for c in COLUMNS])
        for row in rows:
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])
    return len(rows)


class NeuronTableModel(QAbstractTableModel):
    """The rows of ``neuron_rows`` for a QTableView; numbers sort as numbers, NaN last."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.rows: list[list] = []
        self.index_of: dict[tuple[str, int], int] = {}

    def refresh(self) -> None:
        rows = neuron_rows(self.session)
        if len(rows) == len(self.rows) and rows and rows[0][:2] == self.rows[0][:2]:
            self.rows = rows  # same neurons: values changed in place
            self.dataChanged.emit(self.index(0, 0), self.index(len(rows) - 1, len(COLUMNS) - 1), [])
            return
        self.beginResetModel()
        self.rows = rows
        self.index_of = {(r[0], r[1]): i for i, r in enumerate(rows)}
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802, B008 - Qt API
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802, B008 - Qt API
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.DisplayRole):  # noqa: N802 - Qt API
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return COLUMNS[section]
        if orientation == Qt.Horizontal and role == Qt.ToolTipRole:
            return "Click to sort" if section else "Layer (data-flow order); click to sort"
        return None

    def data(self, index, role=Qt.DisplayRole):
        if not index.isValid():
            return None
        value = self.rows[index.row()][index.column()]
        if role == Qt.DisplayRole:
            if isinstance(value, float):
                return "" if math.isnan(value) else f"{value:.4g}"
            return str(value) if index.column() != 0 else value
        if role == SORT_ROLE:
            if index.column() == 0:
                return index.row()  # data-flow order of the layers, channels within
            if isinstance(value, float):
                return -math.inf if math.isnan(value) else value
            return value
        if role == Qt.TextAlignmentRole and index.column() not in (0, len(COLUMNS) - 2):
            return int(Qt.AlignRight | Qt.AlignVCenter)
        return None


class LayerFilter(QSortFilterProxyModel):
    """Rows whose layer name contains the text; optionally only flagged or pruned neurons."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.only_marked = False
        self.setSortRole(SORT_ROLE)

    def set_text(self, text: str) -> None:
        self.text = text.strip().lower()
        self.invalidate()

    def set_only_marked(self, on: bool) -> None:
        self.only_marked = on
        self.invalidate()

    def filterAcceptsRow(self, row: int, parent) -> bool:  # noqa: N802 - Qt API
        rows = self.sourceModel().rows
        if row >= len(rows):
            return False
        r = rows[row]
        if self.text and self.text not in r[0].lower():
            return False
        return not self.only_marked or bool(r[-2]) or r[-1] != "—"


class NeuronTablePanel(QWidget):
    """The sortable, filterable neuron table; selecting a row selects the neuron everywhere."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.model = NeuronTableModel(session)
        self.proxy = LayerFilter()
        self.proxy.setSourceModel(self.model)
        self.find = QLineEdit()
        self.find.setPlaceholderText("Find layer by name (Ctrl+F)…")
        self.find.setClearButtonEnabled(True)
        self.find.setToolTip("Show only the layers whose name contains this text")
        self.find.textChanged.connect(self._find_changed)
        self.find.returnPressed.connect(self._select_first)
        self.only_marked = QCheckBox("only flagged or pruned")
        self.only_marked.setToolTip("Hide neurons that no method flags and the mask keeps")
        self.only_marked.toggled.connect(self.proxy.set_only_marked)
        self.count = QLabel(" ")
        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(0, Qt.AscendingOrder)
        self.view.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.view.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(20)
        self.view.horizontalHeader().setSectionResizeMode(QHeaderView.Interactive)
        self.view.horizontalHeader().setStretchLastSection(True)
        self.view.setToolTip(
            "Every neuron: click a header to sort, a row to select the neuron (the heatmap "
            "follows); Ctrl+C copies the selected rows."
        )
        self.view.selectionModel().currentRowChanged.connect(self._row_changed)
        self.view.installEventFilter(self)  # Ctrl+C copies whole rows, not one cell
        top = QHBoxLayout()
        top.addWidget(self.find, 1)
        top.addWidget(self.only_marked)
        top.addWidget(self.count)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.view, 1)
        self._syncing = False
        self._dirty = True
        for signal in (session.checkpoint_changed, session.scores_changed, session.mask_changed):
            signal.connect(self.refresh)
        session.selection_changed.connect(self._follow_selection)
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the rows now when shown, else on the next show (large models, fast sliders;
        a hidden table cost the GUI thread 0.3–0.7 s at every checkpoint load)."""
        self._dirty = True
        if self.isVisible():
            self._refresh_now()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        if self._dirty:
            self._refresh_now()
        super().showEvent(event)

    def _refresh_now(self) -> None:
        self._dirty = False
        self.model.refresh()
        self.proxy.invalidate()
        self._update_count()
        self._follow_selection()

    def _update_count(self) -> None:
        self.count.setText(f"{self.proxy.rowCount()} of {self.model.rowCount()} neurons")

    def _find_changed(self, text: str) -> None:
        self.proxy.set_text(text)
        self._update_count()

    def _select_first(self) -> None:
        if self.proxy.rowCount():
            self.view.setCurrentIndex(self.proxy.index(0, 0))

    def focus_find(self) -> None:
        self.find.setFocus()
        self.find.selectAll()

    def _row_changed(self, current, _previous) -> None:
        if self._syncing or not current.isValid():
            return
        row = self.model.rows[self.proxy.mapToSource(current).row()]
        self.session.select_neuron((row[0], row[1]))

    def _follow_selection(self) -> None:
        sel = self.session.selected
        row = self.model.index_of.get(sel) if sel is not None else None
        if row is None:
            return
        index = self.proxy.mapFromSource(self.model.index(row, 0))
        if not index.isValid() or index == self.view.currentIndex():
            return
        self._syncing = True
        try:
            self.view.setCurrentIndex(index)
            self.view.scrollTo(index)
        finally:
            self._syncing = False

    def selected_rows_text(self) -> str:
        """Header and selected rows as tab-separated text (what Ctrl+C copies)."""
        rows = sorted({i.row() for i in self.view.selectionModel().selectedIndexes()})
        lines = ["\t".join(COLUMNS)]
        for r in rows:
            cells = [self.proxy.index(r, c).data() for c in range(len(COLUMNS))]
            lines.append("\t".join(str(c) for c in cells))
        return "\n".join(lines)

    def copy_rows(self) -> None:
        QApplication.clipboard().setText(self.selected_rows_text())

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if (
            obj is self.view
            and event.type() == QEvent.KeyPress
            and event.matches(QKeySequence.Copy)
        ):
            self.copy_rows()
            return True
        return super().eventFilter(obj, event)
