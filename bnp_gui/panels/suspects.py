"""Suspect samples: a gallery of the most suspicious training images, the inferred target and
how far to trust it, marks (clean / poisoned), the estimated ASR, and Suggest.

Renders ``session.suspects`` (bnp_gui/suspect_state.py); every button is an intent sent there.
Thumbnails are scaled without smoothing, large enough to see a 3×3 patch on a 28×28 image.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QEvent, QSize, Qt, QTimer
from PySide6.QtGui import QBrush, QColor, QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDoubleSpinBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:  # torch is imported where it is used, once the engine has loaded
    import torch

THUMB = 56  # pixels: a 28×28 image at 2× (a 3×3 patch is 6 px), a 32×32 one at 1.75×
MAX_SHOWN = 60
SUSPECTED = QColor(248, 215, 218)
HIGHLIGHT = QColor(255, 225, 120)
CARD_TEXT = QColor(20, 20, 20)  # captions on the light card colours, whatever the palette
NOTE_LINES = 6  # the trust / estimate / suggestion notes scroll beyond this many lines


def thumbnail(image: torch.Tensor, size: int = THUMB) -> QPixmap:
    """One C×H×W image (uint8 or float in [0, 1]) as a pixmap, nearest-neighbour scaled."""
    x = image.detach().cpu()
    import torch

    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    a = np.ascontiguousarray(x.permute(1, 2, 0).numpy())
    h, w, c = a.shape
    if c == 1:
        qimage = QImage(a.data, w, h, w, QImage.Format_Grayscale8)
    else:
        a = np.ascontiguousarray(a[:, :, :3])
        qimage = QImage(a.data, w, h, 3 * w, QImage.Format_RGB888)
    return QPixmap.fromImage(qimage.copy()).scaled(
        size, size, Qt.KeepAspectRatio, Qt.FastTransformation
    )


class SuspectsPanel(QWidget):
    """Gallery of suspect samples with marks, the target's trust statement and Suggest."""

    def __init__(self, session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.state = session.suspects
        self.trust = QLabel("–")
        self.trust.setWordWrap(True)
        self.trust.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        self.estimate.setToolTip(
            "Share of the suspected poisoned samples still classified as the inferred target, "
            "corrected for those of the target class — an estimate from the suspect set, not a "
            "measurement with the trigger."
        )
        self.suggestion = QLabel("")
        self.suggestion.setWordWrap(True)
        self.suggestion.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.suggestion.setToolTip(
            "What Suggest chose and its verdict, judged on samples that did not choose it; it "
            "stays here until the next analysis. "
            "Edit › Undo (Ctrl+Z) returns to the thresholds before it."
        )
        self.why = QLabel("")  # the reasons behind the inferred target
        self.why.setWordWrap(True)
        self.why.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.suggest_button = QPushButton("Suggest")
        self.suggest_button.setToolTip(
            "Set methods, thresholds and union/intersection to the smallest pruning whose "
            "estimated ASR is low within the accuracy budget — chosen on half of the samples, "
            "judged on the other half (repairs, does not repair or unverified)"
        )
        self.suggest_button.clicked.connect(self.state.suggest)
        self.budget = QDoubleSpinBox()
        self.budget.setRange(0.0, 50.0)
        self.budget.setSingleStep(0.5)
        self.budget.setDecimals(1)
        self.budget.setSuffix(" pts")
        self.budget.setValue(self.state.acc_budget)
        self.budget.setToolTip("Clean accuracy the repair may cost (points)")
        self.budget.valueChanged.connect(self._budget_changed)

        self.gallery = QListWidget()
        self.gallery.setViewMode(QListWidget.IconMode)
        self.gallery.setIconSize(QSize(THUMB, THUMB))
        # three or more a row in the panel's narrowest width (a 1280-px screen); the score and
        # the file are in each card's tooltip
        self.gallery.setGridSize(QSize(THUMB + 18, THUMB + 38))
        self.gallery.setResizeMode(QListWidget.Adjust)
        self.gallery.setMovement(QListWidget.Static)
        self.gallery.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.gallery.setWordWrap(True)
        self.mark_poisoned = QPushButton("Mark poisoned")
        self.mark_clean = QPushButton("Mark clean")
        self.unmark = QPushButton("Unmark")
        self.export_button = QPushButton("Export list…")
        self.export_button.setToolTip(
            "Write every suspect sample, most suspicious first, with its score and whether it "
            "is believed poisoned (CSV or JSON) — to remove them and retrain"
        )
        self.export_button.clicked.connect(self._export_clicked)
        for button, value in (
            (self.mark_poisoned, True),
            (self.mark_clean, False),
            (self.unmark, None),
        ):
            button.setProperty("mark", value)
            button.clicked.connect(self._mark_clicked)
        self.mark_poisoned.setToolTip("The selected samples are poisoned: the estimates use them")
        self.mark_clean.setToolTip("The selected samples are clean: the estimates leave them out")

        top = QHBoxLayout()
        top.addWidget(self.suggest_button)
        top.addWidget(QLabel("ACC budget"))
        top.addWidget(self.budget)
        top.addStretch(1)
        marks = QGridLayout()  # two rows: the panel must fit beside the others on a 1440-px screen
        marks.addWidget(self.mark_poisoned, 0, 0)
        marks.addWidget(self.mark_clean, 0, 1)
        marks.addWidget(self.unmark, 1, 0)
        marks.addWidget(self.export_button, 1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        # what the numbers rest on, in words: scrolls when the panel is short (1280×720)
        notes = QWidget()
        notes_layout = QVBoxLayout(notes)
        notes_layout.setContentsMargins(0, 0, 0, 0)
        for label in (self.trust, self.estimate, self.suggestion, self.why):
            notes_layout.addWidget(label)
        notes_layout.addStretch(1)
        self.notes = QScrollArea()
        self.notes.setWidget(notes)
        self.notes.setWidgetResizable(True)
        self.notes.setFrameShape(QFrame.NoFrame)
        self.notes.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.notes.setMaximumHeight(self.fontMetrics().lineSpacing() * NOTE_LINES)
        layout.addWidget(self.notes)
        for label in (self.trust, self.estimate, self.suggestion, self.why):
            label.installEventFilter(self)  # a new text: the notes take the height it needs
        layout.addWidget(self.gallery, 1)
        layout.addLayout(marks)

        self.state.changed.connect(self.refresh)
        self.state.highlight_changed.connect(self.refresh)
        self.state.estimate_changed.connect(self._update_estimate)
        self.state.suggestion_changed.connect(self._update_suggestion)
        session.mask_changed.connect(self._update_suggestion)
        session.preview_changed.connect(self._update_trust)  # the measured ASR checks it
        session.busy_changed.connect(self._busy)
        self.refresh()

    # ------------------------------------------------------------------ rendering
    def shown_indices(self) -> list[int]:
        """Samples in the gallery, in order: the highlighted neuron's high mode first, then the
        highest scores."""
        a = self.state.analysis
        if a is None:
            return []
        # by score, marks aside: a sample marked clean stays in view, so it can be unmarked
        import torch

        order = torch.argsort(a.scores, descending=True, stable=True).tolist()
        highlight = self.state.highlight
        if highlight is not None:
            order = [i for i in order if highlight[i]] + [i for i in order if not highlight[i]]
        return order[:MAX_SHOWN]

    def refresh(self) -> None:
        state, a = self.state, self.state.analysis
        self.gallery.clear()
        self.trust.setText(state.error or state.trust())
        self.why.setText(
            f"<b>Why target {a.target}</b>: {escape(a.reason)}"
            if a is not None and a.target is not None
            else ""
        )
        enabled = a is not None
        for button in (self.mark_poisoned, self.mark_clean, self.unmark, self.export_button):
            button.setEnabled(enabled)
        self.suggest_button.setEnabled(enabled and not self.session.is_busy("suggest"))
        train = state.train
        if a is None or train is None:
            self._update_estimate()
            return
        highlight = state.highlight
        for i in self.shown_indices():
            mark = a.marks.get(i)
            note = {True: " · marked poisoned", False: " · marked clean"}.get(mark, "")
            item = QListWidgetItem(f"#{i}\nlabel {int(a.labels[i])}")
            item.setIcon(thumbnail(train.images[i]))
            item.setData(Qt.UserRole, i)
            status = "believed poisoned" if bool(a.poisoned[i]) else "believed clean"
            item.setToolTip(
                f"{state.file_of(i)}\nlabel {int(a.labels[i])}, score {float(a.scores[i]):.3f}, "
                f"{status}{note}"
            )
            background = None
            if highlight is not None and bool(highlight[i]):
                background = HIGHLIGHT
            elif bool(a.poisoned[i]):
                background = SUSPECTED
            if background is not None:  # light cards: dark captions in a dark palette too
                item.setBackground(QBrush(background))
                item.setForeground(QBrush(CARD_TEXT))
            self.gallery.addItem(item)
        self._update_estimate()

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if event.type() in (QEvent.Resize, QEvent.Show, QEvent.Hide):
            QTimer.singleShot(0, self._fit_notes)
        return super().eventFilter(obj, event)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._fit_notes()

    def _fit_notes(self) -> None:
        """The notes as tall as their text (up to NOTE_LINES lines; then they scroll): the
        gallery gets the rest, but never at the cost of the estimate's caveat."""
        width = self.notes.viewport().width()
        content = self.notes.widget()
        if width <= 0 or content is None:
            return
        layout = content.layout()
        needed = layout.totalHeightForWidth(width) if layout.hasHeightForWidth() else 0
        needed = max(needed, content.sizeHint().height() if not layout.hasHeightForWidth() else 0)
        self.notes.setMinimumHeight(min(needed, self.notes.maximumHeight()))

    def _update_trust(self) -> None:
        self.trust.setText(self.state.error or self.state.trust())

    def _update_suggestion(self) -> None:
        """The last suggestion's explanation, and whether the thresholds are still its own."""
        suggestion = self.state.suggestion
        if suggestion is None:
            self.suggestion.setText("")
            return
        from bnp_gui.evidence import suggestion_applied

        applied = suggestion_applied(self.session, suggestion)
        state = "applied" if applied else "<i>not applied now</i> (thresholds changed since)"
        self.suggestion.setText(f"<b>Suggestion</b> ({state}): {escape(suggestion.why)}")

    def _update_estimate(self) -> None:
        state = self.state
        e, before = state.estimate, state.estimate_before
        if state.analysis is None or e is None:
            self.estimate.setText("")
            return
        if e.percent is None:
            self.estimate.setText("<i>No ASR estimate: no backdoor evidence.</i>")
            return
        self.trust.setText(state.error or state.trust())  # names the estimate's basis, once
        text = "<b>Estimated ASR</b>: "
        if before is not None and before.percent is not None:
            text += f"{before.percent:.1f} % before → "
        text += f"{e.percent:.1f} % with {state.estimate_pruned} neurons pruned"
        self.estimate.setText(text)
        self.estimate.setToolTip(f"An estimate from {e.source()}, not a measurement.")

    # ------------------------------------------------------------------ intents
    def selected_indices(self) -> list[int]:
        return [int(item.data(Qt.UserRole)) for item in self.gallery.selectedItems()]

    def _mark_clicked(self) -> None:
        indices = self.selected_indices()
        if indices:
            self.state.mark(indices, self.sender().property("mark"))

    def _export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export suspect samples", "suspects.csv", "CSV (*.csv);;JSON (*.json)"
        )
        if path:
            self.export_list(path)

    def export_list(self, path: str) -> None:
        """Write the suspect list (the analyst's marks applied) as CSV or JSON."""
        state = self.state
        if state.analysis is None:
            return
        from core.errors import BnpError
        from core.evidence.repair import write_suspects

        train = state.train
        try:
            write_suspects(path, state.analysis.records(train.files if train else None))
        except (BnpError, OSError) as exc:
            self.session.message.emit("error", f"Cannot export the suspect list: {exc}")
            return
        self.session.message.emit("info", f"Suspect list written to {path}.")

    def _budget_changed(self, value: float) -> None:
        self.state.acc_budget = float(value)

    def _busy(self, task: str, running: bool) -> None:
        if task == "suggest":
            self.suggest_button.setEnabled(not running and self.state.analysis is not None)
