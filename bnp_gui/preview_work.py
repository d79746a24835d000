"""The session's preview: ACC and ASR before and after the current mask, debounced, first on
a fast subset sized from the measured forward rate, then on the full test set (worker lane
"preview"). A mixin of `Session`: it uses the session's runner, timer, signals and state."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

from bnp_gui.trigger_source import measure
from bnp_gui.workers import Job

# The fast first numbers: as many test samples (each also run with the trigger) as this machine
# gets through in FIRST_NUMBERS_BUDGET_S, measured on the previous previews.
PREVIEW_SUBSET_MAX = 256
PREVIEW_SUBSET_MIN = 64
FIRST_NUMBERS_BUDGET_S = 0.35
PREVIEW_DEBOUNCE_MS = 120


@dataclasses.dataclass
class PreviewResult:
    """ACC/ASR before and after the current mask, on the fast subset or the full test set."""

    stage: str  # "subset" or "full"
    before: Any  # core.defense.evaluation.Metrics
    after: Any
    pruned: int
    elapsed: float  # seconds of computation for this result
    limit: int | None = None  # test samples of the subset (None: all)
    rate: float | None = None  # forward passes per second while measuring "after"


class PreviewWork:
    """Preview measurements of a `Session` (mixin)."""

    def _invalidate_metrics(self) -> None:
        self.baseline = {}
        self.preview = None
        self.curves.clear()
        self.preview_changed.emit()
        self.curve_changed.emit()

    def request_preview(self, immediate: bool = False) -> None:
        """Debounced: the newest decisions are measured once the user pauses."""
        if self.inspection is None or self.eval_set() is None:
            return
        self.preview_pending = True
        self.runner.cancel("curve", notify=False)  # the preview has the CPU first
        if immediate:
            self._preview_timer.stop()
            self._start_preview()
        else:
            self._preview_timer.start()

    def _start_preview(self) -> None:
        inspection, test, trigger = self.inspection, self.eval_set(), self.trigger
        if inspection is None or test is None or self.runner.is_running("collect"):
            return
        mask = self.display_mask
        baseline = dict(self.baseline)
        subset = self.preview_subset_size()
        stages = [("full", None)]
        if subset < len(test):
            stages.insert(0, ("subset", subset))

        def preview(job: Job):
            started = time.monotonic()  # after waiting for the engine lock
            for stage, limit in stages:
                start = time.monotonic()
                after = measure(
                    inspection, test, trigger, mask=mask, limit=limit, cancel=job.cancelled
                )
                rate = (after.n_clean + after.n_poison) / max(time.monotonic() - start, 1e-6)
                before = baseline.get(limit)
                if before is None:
                    before = measure(inspection, test, trigger, limit=limit, cancel=job.cancelled)
                result = PreviewResult(
                    stage, before, after, mask.count(), time.monotonic() - started, limit, rate
                )
                if stage == "subset":
                    job.partial(result)
            return result

        self.runner.start(
            "preview",
            preview,
            partial=self._for_model(inspection, self._preview_ready),
            done=self._for_model(inspection, self._preview_done),
            error=self._for_model(
                inspection, functools.partial(self._report_error, "Preview failed")
            ),
        )

    def preview_subset_size(self) -> int:
        """Test samples for the fast first numbers, from the measured forward-pass rate."""
        if self._forward_rate is None:
            return PREVIEW_SUBSET_MAX
        size = int(self._forward_rate * FIRST_NUMBERS_BUDGET_S / 2)  # clean + triggered pass
        # powers of two only, so the "before" numbers of each size are measured once
        chosen = PREVIEW_SUBSET_MAX
        while chosen > PREVIEW_SUBSET_MIN and chosen > size:
            chosen //= 2
        return chosen

    def _preview_ready(self, result: PreviewResult) -> None:
        self.baseline[result.limit] = result.before
        if result.rate is not None and result.stage == "full":  # subsets carry fixed overheads
            self._forward_rate = result.rate
        self.preview = result
        self.preview_changed.emit()

    def _preview_done(self, result: PreviewResult) -> None:
        self.preview_pending = False
        self._preview_ready(result)
        self._start_curve()
