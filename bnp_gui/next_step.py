"""The "next step" line under the toolbar: what to do now that the last step is done (open
data, Analyze, Suggest or Repair, Export), from the session's state; quiet while work is running."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

BUSY = ("load", "data", "collect", "suggest", "export")


def next_step(session) -> str:
    """One sentence: the step that moves the inspection on ("" while work is running)."""
    s = session
    if any(s.is_busy(task) for task in BUSY):
        return ""
    if s.inspection is None:
        return "Next: open a checkpoint (Ctrl+O) and its data (Ctrl+D), or File › Open Demo."
    if not s.data:
        return "Next: open the data (Ctrl+D): clean samples (BNP), suspect training set (EP)."
    if not ({"ep", "bnp"} & set(s.scores)):
        return "Next: Analyze (Ctrl+R): the statistics that EP and BNP score."
    state = s.suspects
    export = "Export (Ctrl+E): the pruned model and a report with the evidence."
    if state.suggestion is not None:
        return f"Next: check the preview, then {export} (Ctrl+Z undoes Suggest.)"
    if state.analysis is not None:
        return (
            "Next: Suggest (Ctrl+G), Analysis › Repair… or the thresholds by hand; then "
            "Export (Ctrl+E) the model and a report with the evidence."
        )
    return f"Next: set the thresholds, watch the preview; then {export}"


class NextStepHint(QLabel):
    """The next step, in words, kept up to date with the session."""

    def __init__(self, session, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.suppressed = False
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.setContentsMargins(4, 0, 4, 0)
        for signal in (
            session.checkpoint_changed,
            session.data_changed,
            session.scores_changed,
            session.busy_changed,
            session.suspects.changed,
            session.suspects.suggestion_changed,
        ):
            signal.connect(self.refresh)
        self.refresh()

    def set_suppressed(self, suppressed: bool) -> None:
        """Presentation mode: not shown (the audience needs no instructions)."""
        self.suppressed = suppressed
        self.refresh()

    def refresh(self, *_) -> None:
        text = next_step(self.session)
        self.setText(f"<i>{text}</i>" if text else "")
        self.setVisible(bool(text) and not self.suppressed)
