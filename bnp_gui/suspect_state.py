"""The window's side of repair without knowing the attack: suspect samples, the target, the
label-free ASR estimate of the current mask, the analyst's marks and the suggestion.

One QObject attached to the Session (``session.suspects``). Everything is computed by
``core.evidence.suspects`` / ``core.evidence.held_out_suggest`` on the session's worker lanes
("suspects", "estimate", "suggest"); this object keeps the results, announces them with ``changed``,
and turns a suggestion into thresholds through the session's ordinary intents. Suggest's verdict is
judged on held-out samples, never on those that chose the pruning (issue 17).
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal

from core.model.methods import METHODS

if TYPE_CHECKING:  # torch is imported where it is used, once the engine has loaded
    import torch

ESTIMATE_DEBOUNCE_MS = 150
NO_EVIDENCE = "No backdoor evidence"
# A measured ASR (%) at or above this says the model obeys the trigger, whatever the suspect
# samples show: a model without a backdoor sends a few % of triggered samples to one class.
CONTRADICTING_ASR = 10.0


class SuspectState(QObject):
    """Suspects, target, estimate and suggestion of the session's current analysis."""

    changed = Signal()  # analysis, marks or target
    estimate_changed = Signal()
    suggestion_changed = Signal()
    highlight_changed = Signal()
    curve_changed = Signal()  # estimated ASR versus the viewed method's threshold

    def __init__(self, session) -> None:
        super().__init__(session)
        self.session = session
        self.analysis = None  # core.evidence.suspects.SuspectAnalysis
        self.probe = None  # core.evidence.suspects.MaskProbe over the suspect and clean samples
        self.estimate = None  # AsrEstimate of the current mask
        self.estimate_before = None  # AsrEstimate with nothing pruned
        self.estimate_pruned = -1  # neurons pruned by the mask the estimate belongs to
        self.suggestion = None  # core.evidence.held_out_suggest.HeldOutSuggestion
        self.highlight: torch.Tensor | None = None  # N bool: the selected neuron's high mode
        self.acc_budget = 2.0
        self.error = ""
        self.curves: dict[str, list[tuple[float, float]]] = {}  # method → [(k, est. ASR %)]
        self._contexts: dict[str, tuple] = {}  # method → Session.curve_context of its curve
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(ESTIMATE_DEBOUNCE_MS)
        self._timer.timeout.connect(self._start_estimate)
        session.checkpoint_changed.connect(self.clear)
        session.data_changed.connect(self.clear)
        session.analysis_finished.connect(self.analyse)
        session.mask_changed.connect(self.request_estimate)
        session.selection_changed.connect(self._update_highlight)
        session.view_changed.connect(self._start_curve)

    # ------------------------------------------------------------------ queries
    @property
    def train(self):
        return self.session.data.get("train")

    def measured_asr(self) -> float | None:
        """The unpruned model's ASR measured with the trigger on the full test set (None: not
        measured, or no trigger): what the suspect analysis is checked against."""
        s = self.session
        before = s.baseline.get(None)
        if before is None and s.preview is not None and s.preview.stage == "full":
            before = s.preview.before
        return None if before is None else before.asr

    def contradicted(self) -> bool:
        """The suspect samples show no backdoor but the measured ASR says there is one."""
        a, asr = self.analysis, self.measured_asr()
        return a is not None and a.target is None and asr is not None and asr >= CONTRADICTING_ASR

    def trust(self) -> str:
        """The trust to place in the numbers, in words."""
        a = self.analysis
        if a is None:
            return "No suspect samples analysed (needs the suspect training set)."
        if a.target is None:
            reason = a.reason
            if reason.startswith(NO_EVIDENCE):
                reason = reason[len(NO_EVIDENCE) :].lstrip(": ")
            if self.contradicted():
                return (
                    f"The suspect samples show no backdoor ({reason.rstrip('.')}), but the ASR "
                    f"measured with the trigger is {self.measured_asr():.2f} %: the measurement "
                    "contradicts them — trust the measurement."
                )
            return f"{NO_EVIDENCE}: {reason}"
        e = self.estimate
        source = (
            e.source()
            if e is not None and e.percent is not None
            else f"{a.n_suspected} suspected samples"
        )
        return (
            f"Target {a.target} (confidence {a.confidence:.2f}); ASR estimates come from "
            f"{source} — an estimate, not a measurement."
        )

    def file_of(self, index: int) -> str:
        """The sample's file (relative to the training folder), else its index."""
        train = self.train
        if train is not None and train.files is not None:
            return train.files[index]
        return f"sample {index}"

    # ------------------------------------------------------------------ analysis
    def clear(self) -> None:
        for lane in ("suspects", "estimate", "suggest", "estimate_curve"):
            self.session.runner.cancel(lane, notify=False)
        self.curves = {}
        self.analysis = self.probe = self.estimate = self.estimate_before = None
        self.suggestion = None
        self.highlight = None
        self.error = ""
        self.changed.emit()
        self.estimate_changed.emit()
        self.suggestion_changed.emit()
        self.highlight_changed.emit()
        self.curve_changed.emit()

    def analyse(self) -> None:
        """Score the suspect samples (after an analysis that collected their statistics)."""
        s = self.session
        inspection, train, clean = s.inspection, self.train, s.data.get("clean")
        if inspection is None or train is None or inspection.train_stats is None:
            self.clear()
            return

        def run(job):
            from core.evidence.suspects import analyse_suspects, make_probe

            probe = make_probe(inspection, train, clean)
            analysis = analyse_suspects(
                inspection, train, clean, probe=probe, progress=job.progress, cancel=job.cancelled
            )
            return analysis, probe

        s.runner.start(
            "suspects",
            run,
            done=self._analysed,
            error=functools.partial(self._failed, "Suspect samples"),
        )

    def _analysed(self, result) -> None:
        self.analysis, self.probe = result
        self.error = ""
        self.suggestion = None
        self.estimate_before = None
        for warning in self.analysis.warnings:
            self.session.message.emit("warning", warning)
        self._update_highlight()
        self.changed.emit()
        self.suggestion_changed.emit()
        self.request_estimate()
        self.curves = {}
        self._start_curve()

    def _failed(self, what: str, exc: BaseException) -> None:
        from bnp_gui.session_values import describe_error

        self.error = f"{what}: {describe_error(exc)}"
        self.session.message.emit("error", self.error)
        self.changed.emit()

    # ------------------------------------------------------------------ marks
    def mark(self, indices, poisoned: bool | None) -> None:
        """The analyst says these samples are poisoned (True), clean (False), or unmarks."""
        if self.analysis is None:
            return
        self.analysis = self.analysis.with_marks({int(i): poisoned for i in indices})
        self.estimate_before = None
        self.changed.emit()
        self.request_estimate(immediate=True)
        self.curves = {}
        self._start_curve()

    # ------------------------------------------------------------------ highlight
    def _update_highlight(self) -> None:
        """The samples in the selected neuron's high mode (maxima above every clean one)."""
        s = self.session
        inspection, neuron = s.inspection, s.selected
        highlight = None
        if self.analysis is not None and neuron is not None and inspection is not None:
            stats = inspection.train_stats
            if stats is not None and neuron[0] in stats.layers:
                from core.evidence.suspects import high_mode

                highlight = high_mode(stats, inspection.clean_stats, *neuron)
        self.highlight = highlight
        self.highlight_changed.emit()

    # ------------------------------------------------------------------ estimate
    def request_estimate(self, immediate: bool = False) -> None:
        if self.analysis is None or self.probe is None:
            return
        if immediate:
            self._timer.stop()
            self._start_estimate()
        else:
            self._timer.start()

    def _start_estimate(self) -> None:
        s = self.session
        analysis, probe = self.analysis, self.probe
        if analysis is None or probe is None or s.runner.is_running("collect"):
            return
        mask = s.display_mask
        clean = s.data.get("clean")
        labels = clean.labels if clean is not None else None
        need_before = self.estimate_before is None

        def run(job):
            from core.evidence.suspects import estimate_asr

            before = (
                estimate_asr(probe, analysis, None, labels, job.cancelled) if need_before else None
            )
            after = estimate_asr(probe, analysis, mask, labels, job.cancelled)
            return before, after, mask.count()

        s.runner.start(
            "estimate",
            run,
            done=self._estimated,
            error=functools.partial(self._failed, "ASR estimate"),
        )

    def _estimated(self, result) -> None:
        before, after, pruned = result
        if before is not None:
            self.estimate_before = before
        self.estimate = after
        self.estimate_pruned = pruned
        self.estimate_changed.emit()
        self._start_curve()  # its masks follow the decisions (nothing to do when unchanged)

    # ------------------------------------------------------------------ curve
    def _start_curve(self) -> None:
        """Estimated ASR at each threshold of the preview's curve, over the same masks (the
        viewed method's k varied, the other decisions as they are)."""
        from bnp_gui.tradeoff import CURVE_KS

        s = self.session
        analysis, probe, method = self.analysis, self.probe, s.view_method
        if analysis is None or probe is None or analysis.target is None:
            return
        context = s.curve_context(method) if method in s.scores else None
        for stale in [m for m in self.curves if self._contexts.get(m) != s.curve_context(m)]:
            del self.curves[stale]
        if method not in s.scores or method in self.curves:
            self.curve_changed.emit()
            return
        masks = {k: s.curve_mask(method, k) for k in CURVE_KS}
        clean = s.data.get("clean")
        labels = clean.labels if clean is not None else None

        def run(job):
            from core.evidence.suspects import estimate_asr

            points = []
            for k in CURVE_KS:
                e = estimate_asr(probe, analysis, masks[k], labels, job.cancelled)
                points.append((k, e.percent))
            return method, context, points

        self.curve_changed.emit()  # a stale curve is gone at once
        s.runner.start("estimate_curve", run, done=self._curve_ready, error=lambda exc: None)

    def _curve_ready(self, result) -> None:
        method, context, points = result
        if context != self.session.curve_context(method):
            return  # the decisions changed meanwhile: the next estimate starts it again
        self.curves[method] = [(k, p) for k, p in points if p is not None]
        self._contexts[method] = context
        self.curve_changed.emit()

    # ------------------------------------------------------------------ suggest
    def suggest(self) -> None:
        """Find the suggested configuration on a worker, then set the thresholds to it."""
        s = self.session
        if s.inspection is None:
            s.message.emit("error", "Open a checkpoint first (File › Open Checkpoint…).")
            return
        if self.analysis is None or self.probe is None:
            s.message.emit(
                "error",
                "Suggest needs the suspect training set and clean samples, analysed: choose "
                "them with File › Open Data…, then Analyze.",
            )
            return
        clean = s.data.get("clean")
        if clean is None:
            s.message.emit("error", "Suggest checks the clean accuracy: choose clean samples.")
            return
        inspection, analysis, probe, train = s.inspection, self.analysis, self.probe, self.train
        budget = self.acc_budget
        s._progress_start["suggest"] = time.monotonic()

        def run(job):
            from core.evidence.held_out_suggest import suggest_held_out

            return suggest_held_out(
                inspection,
                analysis,
                train,
                clean,
                acc_budget=budget,
                probe=probe,
                progress=job.progress,
                cancel=job.cancelled,
            )

        s.message.emit(
            "info",
            "Looking for the smallest pruning: chosen on one part of the data, judged on another…",
        )
        s.runner.start(
            "suggest",
            run,
            done=self._suggested,
            error=functools.partial(self._failed, "Suggest failed"),
            progress=lambda done, total: s._report_progress("suggest", done, total),
            cancelled=lambda: s.message.emit("info", "Suggest cancelled."),
        )

    def cancel(self) -> None:
        self.session.runner.cancel("suggest")

    def _suggested(self, suggestion: Any) -> None:
        """A held-out suggestion (`core.evidence.held_out_suggest`): its pruning set, its verdict
        said."""
        self.suggestion = suggestion
        self.apply(suggestion)
        self.suggestion_changed.emit()
        if suggestion.repairs:  # the held-out verdict's; the reasons stay in the panel
            from core.evidence.suggest import describe

            self.session.message.emit(
                "info",
                f"Suggestion applied: {describe(suggestion.methods, suggestion.combine)} — "
                "repairs on held-out samples (why: Suspect samples panel; Ctrl+Z undoes it).",
            )
        else:
            self.session.message.emit("warning", f"Suggestion: {suggestion.why}")

    def apply(self, suggestion) -> None:
        """Set the session's methods, thresholds and combination to the suggestion's, as one
        change (one undo step named after the suggestion). The suggestion's thresholds were
        chosen on the selection part's scores; where the session's scores (all samples) flag
        other neurons at them, overrides make the session prune exactly the neurons the
        held-out verdict judged."""
        from dataclasses import replace

        from bnp_gui.decisions import capture
        from core.evidence.suggest import describe

        s = self.session
        now = capture(s)
        thresholds = {m: float(suggestion.methods.get(m, k)) for m, k in now.thresholds}
        judged = _neurons(getattr(suggestion, "mask", None)) if suggestion.methods else set()
        flagged = set()
        if suggestion.methods and s.scores:
            from core.defense.inspection import build_mask

            flagged = _neurons(
                build_mask(
                    s.scores, dict(suggestion.methods), suggestion.combine, channels=dict(s.layers)
                )
            )
        decisions = replace(
            now,
            thresholds=tuple(thresholds.items()),
            enabled=tuple((m, m in suggestion.methods) for m in METHODS),
            combine=suggestion.combine if suggestion.methods else now.combine,
            force_prune=frozenset(judged - flagged),
            keep=frozenset(flagged - judged),
        )
        s.set_decisions(decisions, f"Suggest: {describe(suggestion.methods, suggestion.combine)}")


def _neurons(mask) -> set[tuple[str, int]]:
    """The (layer, channel) pairs a prune mask prunes (none for no mask)."""
    if mask is None:
        return set()
    return {(layer, int(c)) for layer, channels in mask.neurons().items() for c in channels}
