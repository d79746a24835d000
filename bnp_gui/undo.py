"""Undo/redo of the analyst's decisions (thresholds, methods, combination, overrides).

``DecisionHistory`` watches the session: whenever the decisions differ from the last ones it
saw, it pushes one ``QUndoCommand`` holding the before and after ``Decisions``. It therefore
records every way a decision is taken (slider, spin box, dragged line, keyboard, menus) without
any widget knowing about it. A drag of one threshold becomes one step: consecutive changes of the
same method's k within ``MERGE_S`` seconds merge. A new checkpoint starts a new history.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QObject
from PySide6.QtGui import QUndoCommand, QUndoStack

from bnp_gui.decisions import Decisions, apply, capture

MERGE_S = 1.5
_THRESHOLD_ID = 1


class DecisionCommand(QUndoCommand):
    """One change of decisions; undo/redo put the before/after value back into the session."""

    def __init__(
        self,
        history: DecisionHistory,
        before: Decisions,
        after: Decisions,
        text: str | None = None,
    ) -> None:
        super().__init__(text or after.describe_change(before))
        self.history = history
        self.before = before
        self.after = after
        self.stamp = time.monotonic()
        # only plain threshold changes merge (a drag); named steps (a reset) stay whole
        self.method = _only_threshold_change(before, after) if text is None else None

    def id(self) -> int:
        return _THRESHOLD_ID if self.method is not None else -1

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802 - Qt API
        if not isinstance(other, DecisionCommand) or other.method != self.method:
            return False
        if other.stamp - self.stamp > MERGE_S:
            return False
        self.after = other.after
        self.stamp = other.stamp
        self.setText(self.after.describe_change(self.before))
        return True

    def redo(self) -> None:
        if self.history.recording:  # the first redo is the change that already happened
            return
        self.history.put(self.after)

    def undo(self) -> None:
        self.history.put(self.before)


def _only_threshold_change(before: Decisions, after: Decisions) -> str | None:
    if (before.enabled, before.combine, before.force_prune, before.keep) != (
        after.enabled,
        after.combine,
        after.force_prune,
        after.keep,
    ):
        return None
    pairs = zip(before.thresholds, after.thresholds, strict=True)
    changed = [m for (m, a), (_, b) in pairs if a != b]
    return changed[0] if len(changed) == 1 else None


class DecisionHistory(QObject):
    """The QUndoStack of one session's decisions."""

    def __init__(self, session, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.stack = QUndoStack(self)
        self.last = capture(session)
        self.recording = False
        self._applying = False
        session.mask_changed.connect(self._changed)
        session.checkpoint_changed.connect(self.reset)

    def reset(self) -> None:
        """Forget the history (new checkpoint, session file, reset to defaults)."""
        self.stack.clear()
        self.last = capture(self.session)

    def _changed(self) -> None:
        if self._applying:
            return
        now = capture(self.session)
        if now == self.last:
            return
        before, self.last = self.last, now
        self.recording = True
        try:
            text = self.session.change_label or None  # a named step (Suggest) never merges
            self.stack.push(DecisionCommand(self, before, now, text))
        finally:
            self.recording = False

    def change(self, decisions: Decisions, text: str) -> None:
        """Apply several decisions at once as one undoable step named ``text``."""
        before = capture(self.session)
        self.put(decisions)
        if self.last != before:
            self.recording = True
            try:
                self.stack.push(DecisionCommand(self, before, self.last, text))
            finally:
                self.recording = False

    def put(self, decisions: Decisions) -> None:
        """Apply decisions to the session without recording them as a new step."""
        self._applying = True
        try:
            apply(self.session, decisions)
        finally:
            self._applying = False
        self.last = capture(self.session)
