"""The Repair step: the least change that holds on held-out samples, applied and undone.

Runs `core.evidence.repair_search.search_repair` (pruning, pruning + recovery, recovery alone, each
judged on samples that did not choose it) on the session's worker lane "repair", with progress and
cancel; shows the verdict, the held-out accuracy and estimated ASR before and after with their
intervals and the steps. *Apply* writes the repaired weights into the session's model (on the
engine's lane, never while another job uses it) and sets the thresholds to the pruning it chose;
*Undo* puts the original weights and the previous thresholds back. Exports then write the
repaired model. The neuron scores stay those of the model as analysed.
"""

from __future__ import annotations

import functools
import time

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QDockWidget,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from core.model.methods import METHODS


class RepairPanel(QWidget):
    """Repair, Cancel, Apply, Undo, and what the held-out verdict says."""

    def __init__(self, session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.outcome = None  # core.evidence.repair_search.RepairOutcome
        self.analysis = None  # the suspect analysis the outcome was found from
        self.original = None  # (inspection, state_dict, thresholds, enabled, combine) for undo
        self.repair_button = QPushButton("Repair")
        self.repair_button.setToolTip(
            "Find the least change (pruning, then fine-tuning that unlearns the suspected "
            "samples) whose held-out ASR bound and accuracy cost hold"
        )
        self.cancel_button = QPushButton("Cancel")
        self.apply_button = QPushButton("Apply")
        self.undo_button = QPushButton("Undo")
        self.recovery = QCheckBox("Try recovery (fine-tuning)")
        self.recovery.setChecked(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.verdict = QLabel("Analyse the suspect samples first, then Repair.")
        self.verdict.setWordWrap(True)
        self.details = QLabel("")
        self.details.setWordWrap(True)
        self.details.setTextFormat(Qt.RichText)
        buttons = QHBoxLayout()
        for widget in (self.repair_button, self.cancel_button, self.apply_button):
            buttons.addWidget(widget)
        buttons.addWidget(self.undo_button)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.recovery)
        layout.addWidget(self.progress)
        layout.addWidget(self.verdict)
        layout.addWidget(self.details, 1)
        self.repair_button.clicked.connect(self.repair)
        self.cancel_button.clicked.connect(self.cancel)
        self.apply_button.clicked.connect(self.apply)
        self.undo_button.clicked.connect(self.undo)
        session.suspects.changed.connect(self._update)
        session.checkpoint_changed.connect(self._forget)
        session.runner.busy_changed.connect(lambda lane, _running: self._update())
        self._update()

    # ------------------------------------------------------------------ intents
    def repair(self) -> None:
        """Search the repair on a worker."""
        s, state = self.session, self.session.suspects
        clean = s.data.get("clean")
        if s.inspection is None or state.analysis is None or clean is None:
            s.message.emit(
                "error", "Repair needs the suspect samples analysed and clean samples: Analyze."
            )
            return
        inspection, analysis, probe, train = s.inspection, state.analysis, state.probe, state.train
        budget, recovery = state.acc_budget, self.recovery.isChecked()

        def run(job):
            from core.evidence.repair_search import search_repair

            return search_repair(
                inspection, analysis, train, clean, probe=probe, acc_budget=budget,
                recovery=recovery, progress=job.progress, cancel=job.cancelled,
            )  # fmt: skip

        self.analysis = analysis
        s._progress_start["repair"] = time.monotonic()
        self.verdict.setText("Repairing: choosing on one part of the data, judging on another…")
        self.progress.setValue(0)
        s.runner.start(
            "repair",
            run,
            done=s._for_model(inspection, self._found),
            error=functools.partial(s._report_error, "Repair failed"),
            progress=self._progressed,
            cancelled=lambda: self.verdict.setText("Repair cancelled."),
        )
        self._update()

    def cancel(self) -> None:
        self.session.runner.cancel("repair")
        self._update()

    def apply(self) -> None:
        """Write the repaired weights into the model and set the chosen pruning (undoable)."""
        s, outcome = self.session, self.outcome
        if outcome is None or s.inspection is None:
            return
        inspection = s.inspection
        keep = self.original is None or self.original[0] is not inspection
        decisions = (dict(s.thresholds), dict(s.enabled), s.combine)

        def run(job):
            # on the engine's lane: a preview's functional_call swaps masked parameters into the
            # model while it runs, so both models' weights are read and written only here, never
            # from the window's thread (a pruning-only repair's model *is* the session's model:
            # read there, the copy could carry the preview's zeros into the weights for good)
            before = {k: v.detach().clone() for k, v in inspection.model.state_dict().items()}
            if outcome.model is not inspection.model:
                weights = {k: v.detach().clone() for k, v in outcome.model.state_dict().items()}
                inspection.model.load_state_dict(weights)
            return before

        def done(before) -> None:
            if keep:
                self.original = (inspection, before, *decisions)
            self._decisions(outcome)

        s.runner.start(
            "repair",
            run,
            done=s._for_model(inspection, done),
            error=functools.partial(s._report_error, "Applying the repair failed"),
        )

    def undo(self) -> None:
        """The original weights and the previous thresholds back."""
        s = self.session
        if self.original is None or self.original[0] is not s.inspection:
            return
        inspection, state, thresholds, enabled, combine = self.original
        self.original = None

        def restore(_result) -> None:
            s.thresholds.update(thresholds)
            s.enabled.update(enabled)
            s.set_combine(combine)
            s._recompute_flags()
            s.request_preview(immediate=True)
            s.message.emit("info", "Repair undone: the original weights are back.")
            self._update()

        s.runner.start(
            "repair",
            lambda job: inspection.model.load_state_dict(state),
            done=s._for_model(inspection, restore),
            error=functools.partial(s._report_error, "Undoing the repair failed"),
        )

    # ------------------------------------------------------------------ results
    def _progressed(self, done: int, total: int) -> None:
        self.progress.setValue(int(1000 * done / max(total, 1)))
        self.session._report_progress("repair", done, total)

    def _found(self, outcome) -> None:
        self.outcome = outcome
        self.progress.setValue(1000)
        v = outcome.verdict
        self.verdict.setText(f"<b>{v.verdict.capitalize()}</b>. {outcome.why}")
        self.details.setText(render(outcome))
        level = "info" if v.repairs else "warning"
        self.session.message.emit(level, f"Repair: {v.reason}")
        self._update()

    def _decisions(self, outcome) -> None:
        s = self.session
        if outcome.mask.count() and outcome.suggestion is not None:
            s.suspects.apply(outcome.suggestion)
        else:
            for method in METHODS:
                s.enabled[method] = False
            s._recompute_flags()
        s.request_preview(immediate=True)
        s.message.emit("info", "Repair applied: " + "; ".join(outcome.steps or ["nothing"]))
        self._update()

    def _forget(self) -> None:
        self.outcome = self.original = None
        self.verdict.setText("Analyse the suspect samples first, then Repair.")
        self.details.setText("")
        self._update()

    def _update(self) -> None:
        s = self.session
        running = s.runner.is_running("repair")
        ready = s.inspection is not None and s.suspects.analysis is not None
        self.repair_button.setEnabled(ready and not running)
        self.cancel_button.setEnabled(running)
        current = self.outcome is not None and self.analysis is s.suspects.analysis
        self.apply_button.setEnabled(current and bool(self.outcome.steps) and not running)
        self.undo_button.setEnabled(
            self.original is not None and self.original[0] is s.inspection and not running
        )


def render(outcome) -> str:
    """Before/after held-out accuracy and estimated ASR with intervals, and the steps."""
    v, b = outcome.verdict, outcome.before

    def asr(x) -> str:
        if x is None or x.estimate is None:
            return "–"
        return f"{x.estimate:.1f} % [{x.interval[0]:.1f}, {x.interval[1]:.1f}]"

    rows = [("Estimated ASR", asr(b), asr(v))]
    if v.acc_before is not None:
        drop = (
            f" (drop {v.acc_drop:.1f} [{v.acc_interval[0]:.1f}, {v.acc_interval[1]:.1f}]"
            f"{v.gain_note()})"
        )
        rows.append(("Clean ACC", f"{v.acc_before:.1f} %", f"{v.acc_after:.1f} %{drop}"))
    table = "".join(f"<tr><td>{a}</td><td>{x}</td><td>{y}</td></tr>" for a, x, y in rows)
    steps = "".join(f"<li>{step}</li>" for step in outcome.steps) or "<li>nothing applied</li>"
    return (
        f"<table><tr><th></th><th>before</th><th>after</th></tr>{table}</table>"
        f"<p>Held out: {v.n} samples for the ASR, {v.n_acc} clean samples "
        f"({v.confidence:.0f} % intervals).</p><ul>{steps}</ul>"
    )


def install(window) -> RepairPanel:
    """The Repair dock and its Analysis-menu entry on a MainWindow."""
    panel = RepairPanel(window.session)
    dock = QDockWidget("Repair", window)
    dock.setObjectName("dock_repair")
    dock.setWidget(panel)
    window.addDockWidget(Qt.RightDockWidgetArea, dock)
    dock.hide()
    action = dock.toggleViewAction()
    action.setText("&Repair…")
    action.setToolTip("Repair beyond pruning, judged on held-out samples")
    for menu_action in window.menuBar().actions():
        if menu_action.menu() is not None and "Analysis" in menu_action.text():
            menu_action.menu().addAction(action)
            break
    panel.dock = dock
    return panel
