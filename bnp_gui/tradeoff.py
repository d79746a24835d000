"""The trade-off curve of the Session: ACC/ASR versus the viewed method's threshold k, measured on
a fixed subset of the test set within the other decisions as they are (other methods, union or
intersection, overrides), so that at the current k it measures the preview's mask. A curve is
kept with the decisions it was measured in and dropped as soon as they change.

A mixin of ``bnp_gui.session.Session`` (it uses the session's scores, decisions, runner and
signals); nothing here touches a widget.
"""

from __future__ import annotations

from bnp_gui.trigger_source import measure
from bnp_gui.workers import Job
from core.model.masks import PruneMask

CURVE_KS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)
CURVE_SUBSET = 256


class TradeoffCurves:
    """Session methods for the trade-off curve (``self.curves``: method → [(k, Metrics)])."""

    def curve_decisions(self, method: str) -> tuple[dict[str, float], str, list, list, bool]:
        """What the trade-off curve of ``method`` varies k within: the current mask's methods,
        combination and overrides when ``method`` is in the mask (the curve then passes through
        the preview's mask at the current k), else ``method`` alone. Returns (methods with
        their k, combine, force_prune, keep, in_mask)."""
        methods = self.mask_methods()
        if method in methods:
            return methods, self.combine, sorted(self.force_prune), sorted(self.keep), True
        return {method: self.thresholds[method]}, "union", [], [], False

    def curve_context(self, method: str) -> tuple:
        """The decisions a curve of ``method`` depends on (all but its own k), hashable."""
        methods, combine, force, keep, in_mask = self.curve_decisions(method)
        others = tuple(sorted((m, k) for m, k in methods.items() if m != method))
        return others, combine if len(methods) > 1 else "", tuple(force), tuple(keep), in_mask

    def curve_mask(self, method: str, k: float, decisions=None) -> PruneMask:
        """The mask of the curve of ``method`` at threshold ``k``."""
        from core.defense.inspection import build_mask

        methods, combine, force, keep, _ = decisions or self.curve_decisions(method)
        scores = {m: self.scores[m] for m in methods}
        return build_mask(scores, {**methods, method: k}, combine, force, keep, dict(self.layers))

    def _drop_stale_curves(self) -> None:
        """Forget curves measured within other decisions than the current ones."""
        stale = [m for m in self.curves if self._curve_contexts.get(m) != self.curve_context(m)]
        for method in stale:
            del self.curves[method]
        if stale:
            self.runner.cancel("curve", notify=False)
            self.curve_changed.emit()

    def _start_curve(self) -> None:
        """ACC/ASR versus the viewed method's threshold, the other decisions as they are, on
        the fast subset."""
        inspection, test, trigger = self.inspection, self.eval_set(), self.trigger
        method = self.view_method
        if inspection is None or test is None or not self.available(method):
            return
        if self.runner.is_running("preview") or self.runner.is_running("collect"):
            return  # restarted when the preview is done
        self._drop_stale_curves()
        self._curve_contexts[method] = self.curve_context(method)
        decisions = self.curve_decisions(method)
        done_points = list(self.curves.get(method, []))
        todo = [k for k in CURVE_KS if k not in {p[0] for p in done_points}]
        if not todo:
            return
        masks = {k: self.curve_mask(method, k, decisions) for k in todo}

        def curve(job: Job):
            for k in todo:
                mask = masks[k]
                metrics = measure(
                    inspection, test, trigger, mask=mask, limit=CURVE_SUBSET, cancel=job.cancelled
                )
                job.partial((method, k, metrics))
            return None

        self.runner.start(
            "curve",
            curve,
            partial=self._for_model(inspection, self._curve_point),
            error=lambda exc: None,
        )

    def _curve_point(self, point) -> None:
        method, k, metrics = point
        points = self.curves.setdefault(method, [])
        points.append((k, metrics))
        points.sort(key=lambda p: p[0])
        self.curve_changed.emit()
