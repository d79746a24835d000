"""The session: everything the analyst has opened, computed and decided, in one QObject.

Widgets read the state from here and send intents back (``open_checkpoint``, ``set_threshold``,
``select_neuron`` ...); every change is announced by a signal. All computation is done by the
engine (``core``) on worker threads through the ``Runner``: this object only keeps results and
decides what to recompute. Nothing here touches a widget.

Importing and constructing a Session does not import torch (the window paints before the engine
has loaded, bnp_gui/engine.py): the engine is imported where it is used, on worker threads or in
slots that only run once a checkpoint is open.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal

from bnp_gui.data_roles import DataRoles, load_roles
from bnp_gui.neuron_values import LayerValueCache
from bnp_gui.neuron_work import Neuron, NeuronActivations, NeuronWork
from bnp_gui.preview_work import PREVIEW_DEBOUNCE_MS, PreviewResult, PreviewWork
from bnp_gui.session_values import (
    BATCH_SIZE,
    DEFAULT_K,
    K_MAX,
    K_MIN,
    MODEL_LANES,
    _cancel_argument,
    describe_error,
    model_warning,
    valid_threshold,
)
from bnp_gui.suspect_state import SuspectState
from bnp_gui.tradeoff import CURVE_KS, CURVE_SUBSET, TradeoffCurves
from bnp_gui.trigger_source import ResolvedTrigger, TriggerSource, resolve_trigger
from bnp_gui.workers import Job, Runner
from core.errors import ArchitectureMismatch, BnpError, UnsafeCheckpointError
from core.model.masks import PruneMask
from core.model.methods import DIRECTION, METHOD_NAMES, METHODS

if TYPE_CHECKING:
    import torch

    from core.defense.inspection import Inspection

__all__ = [
    "CURVE_KS",
    "CURVE_SUBSET",
    "DIRECTION",
    "K_MAX",
    "K_MIN",
    "Session",
    "valid_threshold",
]


class Session(TradeoffCurves, PreviewWork, NeuronWork, QObject):
    """Checkpoint, data roles, statistics, thresholds, masks and metrics of one inspection."""

    checkpoint_changed = Signal()
    data_changed = Signal()
    trigger_changed = Signal()
    scores_changed = Signal()  # new statistics → new scores for some methods
    view_changed = Signal()  # the method shown in the heatmap
    mask_changed = Signal()  # thresholds, combination, overrides → flags and mask
    selection_changed = Signal()
    activations_changed = Signal()
    preview_changed = Signal()
    curve_changed = Signal()
    busy_changed = Signal(str, bool)  # task, running
    progress = Signal(str, int, int, float)  # task, done, total, ETA in seconds (-1 unknown)
    message = Signal(str, str)  # level ("error", "warning", "info"), text
    unsafe_checkpoint = Signal(str, str)  # path, why: ask before trusting the pickle
    architecture_needed = Signal(str, str)  # path, why: let the user choose the architecture
    analysis_finished = Signal()
    exported = Signal(str)  # folder

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner = Runner(self)
        self.runner.busy_changed.connect(self.busy_changed)
        self.checkpoint_path = ""
        self.inspection: Inspection | None = None
        self.model_warning = ""  # what is wrong with the loaded model itself, for the banner
        self.roles = DataRoles()
        self.data: dict = {}
        self.trigger_source = TriggerSource()
        self.trigger: ResolvedTrigger | None = None
        self.trigger_error = ""
        self.scores: dict[str, dict[str, torch.Tensor]] = {}
        self.zscores: dict[str, dict[str, torch.Tensor]] = {}
        self.thresholds = {m: DEFAULT_K for m in METHODS}
        self.enabled = {"ep": True, "bnp": True, "clp": False}
        self.combine = "union"
        self.force_prune: set[Neuron] = set()
        self.keep: set[Neuron] = set()
        self.view_method = "bnp"
        self.change_label = ""  # the name of the undo step the current mask change makes
        self.flags: dict[str, dict[str, torch.Tensor]] = {}
        self.display_mask = PruneMask()
        self.selected: Neuron | None = None
        self.activations: NeuronActivations | None = None
        self._layer_values = LayerValueCache()  # the neuron plot's data, a layer at a time
        for changed in (self.checkpoint_changed, self.data_changed, self.trigger_changed):
            changed.connect(self._layer_values.clear)
        self.scores_changed.connect(self._layer_values.clear)  # also after new input settings
        self.baseline: dict[int | None, Any] = {}  # subset size (None: all) → unpruned Metrics
        self.preview: PreviewResult | None = None
        self.preview_pending = False
        self.curves: dict[str, list[tuple[float, Any]]] = {}
        self._curve_contexts: dict[str, tuple] = {}  # method → curve_context it was measured in
        self.auto_analyze = False
        self._queued_analysis = False  # Analyze pressed while a checkpoint was loading
        self._progress_start: dict[str, float] = {}
        self._forward_rate: float | None = None  # samples/s of the last preview
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(PREVIEW_DEBOUNCE_MS)
        self._preview_timer.timeout.connect(self._start_preview)
        self.suspects = SuspectState(self)  # suspect samples, target, estimate, suggestion

    # ------------------------------------------------------------------ queries
    @property
    def layers(self) -> list[tuple[str, int]]:
        if self.inspection is None:
            return []
        return [(layer.name, layer.channels) for layer in self.inspection.layers]

    def available(self, method: str) -> bool:
        return method in self.scores

    def mask_methods(self) -> dict[str, float]:
        """Methods entering the mask (enabled and with scores), with their thresholds."""
        return {m: self.thresholds[m] for m in METHODS if self.enabled[m] and self.available(m)}

    def eval_set(self):
        """The samples that give ACC/ASR: the test set, else the clean samples."""
        return self.data.get("test") or self.data.get("clean")

    def is_busy(self, task: str) -> bool:
        return self.runner.is_running(task)

    def override(self, neuron: Neuron) -> str | None:
        if neuron in self.force_prune:
            return "prune"
        if neuron in self.keep:
            return "keep"
        return None

    def layer_counts(self) -> dict[str, int]:
        return self.display_mask.per_layer_counts()

    def total_pruned(self) -> int:
        return self.display_mask.count()

    def current_mask(self) -> PruneMask:
        """The mask of the current decisions, from cached scores (equal to Inspection.mask)."""
        if not self.scores:  # nothing opened yet (the engine may still be loading)
            return PruneMask()
        from core.defense.inspection import build_mask

        return build_mask(
            self.scores,
            self.mask_methods(),
            self.combine,
            sorted(self.force_prune),
            sorted(self.keep),
            dict(self.layers),
        )

    def _for_model(self, inspection: Inspection, callback):
        """``callback``, dropped when its result belongs to a model the session has replaced
        (results are tied to the inspection they were computed with, not to the lane only)."""

        def call(*args):
            if self.inspection is inspection:
                callback(*args)

        return call

    def _report_error(self, what: str, exc: BaseException) -> None:
        """A failure as one line in the window: what failed, then why (never a traceback)."""
        self.message.emit("error", f"{what}: {describe_error(exc)}")

    # ------------------------------------------------------------------ open
    def open_checkpoint(
        self,
        path: str,
        *,
        arch: str | None = None,
        trust_pickle: bool = False,
        model_code: str | None = None,
        weights: str | None = None,
    ) -> None:
        """Load a checkpoint (any engine format) and compute its data-free CLP scores."""
        path = str(Path(path).expanduser())
        # The current model's work goes on until the new file has been read: a file that fails
        # to open leaves the window as it was (numbers, preview, a running analysis).
        interrupted: set[str] = set()

        def load(job: Job):
            from core.defense.inspection import Inspection
            from core.io.checkpoint import load_checkpoint

            ckpt = load_checkpoint(
                path,
                arch=arch,
                trust_pickle=trust_pickle,
                model_code=model_code,
                weights=weights,
                **_cancel_argument(load_checkpoint, job),
            )
            _ = (
                ckpt.model
            )  # built here if loading deferred it (core.model.described): its errors too
            if job.cancelled():
                return None
            job.partial("read")  # the main thread stops the current model's work now
            # Tracing the model (torch.fx, in Inspection) patches nn.Module.__call__ for the
            # whole process: a forward pass on another thread meanwhile fails ("module is not
            # installed as a submodule"). Hold the engine lock, as every forward-pass job does.
            with job.holding(self.runner.engine_lock):
                return Inspection(ckpt)

        def read(_) -> None:
            interrupted.update(self._stop_model_work())

        def failed(exc: BaseException) -> None:
            self._queued_analysis = False
            self._resume_model_work(interrupted, Path(path).name)
            if isinstance(exc, UnsafeCheckpointError):
                self.unsafe_checkpoint.emit(path, describe_error(exc))
            elif isinstance(exc, ArchitectureMismatch):
                self.architecture_needed.emit(path, describe_error(exc))
            else:
                self._report_error(f"Cannot open {Path(path).name}", exc)

        def cancelled() -> None:
            self._queued_analysis = False
            self.message.emit("info", f"Opening {Path(path).name} cancelled.")
            self._resume_model_work(interrupted, Path(path).name)

        self.message.emit("info", f"Opening {Path(path).name}…")
        self.runner.start(
            "load",
            load,
            partial=read,
            done=lambda insp: self._loaded(path, insp, interrupted),
            error=failed,
            cancelled=cancelled,
            uses_engine=False,  # a new model: nothing shared with running jobs
        )

    def _stop_model_work(self) -> set[str]:
        """Cancel the current model's work (a new model replaces it); the lanes that ran. The
        waited-for lanes are announced as ended, so progress bar and Cancel go away."""
        stopped = set()
        for lane in MODEL_LANES:
            if self.runner.is_running(lane):
                self.runner.cancel(lane, notify=False)
                self.runner.busy_changed.emit(lane, False)
                stopped.add(lane)
        if self._preview_timer.isActive():
            self._preview_timer.stop()
            stopped.add("preview")
        return stopped

    def _resume_model_work(self, interrupted: set[str], name: str) -> None:
        """A new file was read but did not open (or its opening was cancelled): what it
        interrupted starts again for the model still open, so no number is left stale."""
        if not interrupted or self.inspection is None:
            return
        lanes = set(interrupted)
        interrupted.clear()
        if "collect" in lanes:
            self.message.emit("info", f"{name} did not open: the analysis starts again.")
            self.analyze()
            return
        if "preview" in lanes or self.preview_pending:
            self.request_preview(immediate=True)  # the curve follows the preview
        elif "curve" in lanes:
            self._start_curve()
        if "neuron" in lanes and self.selected is not None:
            self._start_activations()

    def _loaded(self, path: str, inspection: Inspection | None, interrupted=None) -> None:
        if inspection is None:
            return
        from core.defense.scores import z_scores

        stopped = self._stop_model_work() | (interrupted or set())  # the previous model's work
        replaced = (
            " The previous model's analysis was stopped."
            if "collect" in stopped and self.inspection is not None
            else ""
        )
        self.checkpoint_path = path
        self.inspection = inspection
        self.scores = {"clp": inspection.clp}
        self.zscores = {"clp": z_scores(inspection.clp)}
        self.force_prune.clear()
        self.keep.clear()
        self.selected = None
        self.activations = None
        self._invalidate_metrics()
        if not self.available(self.view_method):
            self.view_method = "clp"
        self._recompute_flags(emit=False)
        self.checkpoint_changed.emit()
        self.mask_changed.emit()
        self.view_changed.emit()
        self.selection_changed.emit()
        meta = inspection.ckpt.metadata
        self.message.emit(
            "info",
            f"Opened {Path(path).name}: {meta.arch}, {meta.num_classes} classes, "
            f"{len(inspection.layers)} BatchNorm layers, {sum(c for _, c in self.layers)} "
            f"neurons ({inspection.ckpt.format} format). CLP scores are ready.{replaced}",
        )
        self.model_warning = model_warning(inspection)
        if self.model_warning:
            self.message.emit("warning", self.model_warning)
        self.set_trigger_source(self.trigger_source)
        queued, self._queued_analysis = self._queued_analysis, False
        if (self.auto_analyze or queued) and self.data:
            self.analyze()

    def set_data(self, roles: DataRoles) -> None:
        """Read the data folders of each role on a worker thread; ``roles`` becomes the data
        in use only once every folder was read (a failed Open Data leaves the previous data)."""

        def load(job: Job):
            return roles, load_roles(roles, cancel=job.cancelled)

        self.message.emit("info", "Reading data…")
        self.runner.start(
            "data",
            load,
            done=self._data_loaded,
            error=functools.partial(self._report_error, "Cannot read data"),
            uses_engine=False,
        )

    def _data_loaded(self, loaded: tuple) -> None:
        roles, sets = loaded
        self.roles = roles
        for lane in ("collect", "preview", "curve", "neuron"):
            self.runner.cancel(lane)  # they were computing with the previous data
        self.data = sets
        for stats_attr in ("clean_stats", "train_stats"):
            if self.inspection is not None:
                setattr(self.inspection, stats_attr, None)
        self.scores = {k: v for k, v in self.scores.items() if k == "clp"}
        self.zscores = {k: v for k, v in self.zscores.items() if k == "clp"}
        self._invalidate_metrics()
        self.data_changed.emit()
        self._recompute_flags(emit=False)
        self.scores_changed.emit()
        self.mask_changed.emit()
        described = ", ".join(f"{role}: {len(s)} samples" for role, s in sets.items())
        self.message.emit("info", f"Data ready ({described}).")
        if self.trigger_source.kind == "folder" or self.trigger is None:
            self.set_trigger_source(self.trigger_source)
        if self.auto_analyze and self.inspection is not None:
            self.analyze()
        else:
            self.request_preview()

    def set_trigger_source(self, source: TriggerSource) -> None:
        """Resolve the trigger used for ASR (and the triggered curve of the neuron plot)."""
        self.trigger_source = source
        ckpt = self.inspection.ckpt if self.inspection is not None else None
        if ckpt is None:
            self.trigger_changed.emit()
            return

        def resolve(job: Job):
            return resolve_trigger(source, ckpt)

        def failed(exc: BaseException) -> None:
            self.trigger = None
            self.trigger_error = describe_error(exc)
            self._invalidate_metrics()
            self.trigger_changed.emit()
            also = f"<br>{self.model_warning}" if self.model_warning else ""
            self.message.emit("warning", f"No ASR: {self.trigger_error}{also}")
            self.request_preview()

        self.runner.start(
            "trigger", resolve, done=self._trigger_resolved, error=failed, uses_engine=False
        )

    def _trigger_resolved(self, trigger: ResolvedTrigger | None) -> None:
        self.trigger = trigger
        self.trigger_error = "" if trigger is not None else "no trigger chosen"
        self._invalidate_metrics()
        self.trigger_changed.emit()
        self.request_preview()
        if self.selected is not None:
            self._start_activations()

    def set_input_spec(self, **changes: Any) -> None:
        """Override channels/size/mean/std of the model's input (re-analyse afterwards)."""
        if self.inspection is None:
            return
        for lane in ("collect", "preview", "curve", "neuron"):
            self.runner.cancel(lane)  # they use the spec being replaced
        try:
            self.inspection.set_spec(**changes)
        except (BnpError, TypeError, ValueError) as exc:
            self._report_error("Invalid input settings", exc)
            return
        from core.defense.scores import z_scores

        self.scores = {"clp": self.inspection.clp}
        self.zscores = {"clp": z_scores(self.inspection.clp)}
        self._invalidate_metrics()
        self._recompute_flags(emit=False)
        self.scores_changed.emit()
        self.mask_changed.emit()
        self.message.emit("info", "Input settings changed: run Analyze again.")
        self.request_preview()

    # ------------------------------------------------------------------ collect
    def analyze(self) -> None:
        """One statistics pass over the clean and training samples, then BNP/EP scores."""
        inspection = self.inspection
        if self.is_busy("load"):  # the model being loaded replaces this one: analyse that
            self._queued_analysis = True
            self.message.emit("info", "Analysis starts once the checkpoint is loaded.")
            return
        if inspection is None:
            self.message.emit("error", "Open a checkpoint first (File › Open Checkpoint…).")
            return
        clean, train = self.data.get("clean"), self.data.get("train")
        if clean is None and train is None:
            self.message.emit(
                "error",
                "Analyze needs clean samples (BNP) or the suspect training set (EP): "
                "choose them with File › Open Data….",
            )
            return
        for lane in ("preview", "curve", "neuron"):
            self.runner.cancel(lane, notify=False)

        def collect(job: Job):
            from core.defense.scores import z_scores

            inspection.collect(
                clean, train, progress=job.progress, cancel=job.cancelled, batch_size=BATCH_SIZE
            )
            scores = {}
            for method in ("bnp", "ep"):
                if inspection.available(method):
                    scores[method] = inspection.scores(method)
            return scores, {m: z_scores(s) for m, s in scores.items()}

        def failed(exc: BaseException) -> None:
            self._report_error("Analysis failed", exc)

        self._progress_start["collect"] = time.monotonic()
        self.message.emit("info", f"Analyzing on {inspection.device_name}…")
        self.runner.start(
            "collect",
            collect,
            done=self._for_model(inspection, self._analyzed),
            error=self._for_model(inspection, failed),
            progress=lambda done, total: self._report_progress("collect", done, total),
            cancelled=lambda: self.message.emit("info", "Analysis cancelled."),
        )

    def cancel_analysis(self) -> None:
        """Esc / Cancel: stop what the user is waiting for: opening a checkpoint, the analysis
        or the export."""
        self.runner.cancel("load")
        self.runner.cancel("collect")
        self.runner.cancel("export")

    def _report_progress(self, task: str, done: int, total: int) -> None:
        start = self._progress_start.get(task, time.monotonic())
        elapsed = time.monotonic() - start
        eta = elapsed * (total - done) / done if done > 0 else -1.0
        self.progress.emit(task, done, total, eta)

    def _analyzed(self, result) -> None:
        scores, zs = result
        self.scores = {"clp": self.scores.get("clp", self.inspection.clp), **scores}
        self.zscores = {"clp": self.zscores.get("clp"), **zs}
        self.curves.clear()
        if self.view_method == "clp" and "bnp" in scores:
            self.view_method = "bnp"  # the paper's method, once it can be shown
        self._recompute_flags(emit=False)
        self.scores_changed.emit()  # panels redraw for the (possibly new) viewed method
        self.mask_changed.emit()
        names = ", ".join(METHOD_NAMES[m] for m in scores)
        self.message.emit("info", f"Analysis done: {names} scores ready.")
        self.analysis_finished.emit()
        self.request_preview(immediate=True)
        if self.selected is not None:
            self._start_activations()

    # ------------------------------------------------------------------ decide
    def set_view_method(self, method: str) -> None:
        if method == self.view_method:
            return
        self.view_method = method
        self.view_changed.emit()
        self._start_curve()

    def set_threshold(self, method: str, k: float) -> None:
        """Set one method's k, clamped to [K_MIN, K_MAX]; a non-finite k is refused."""
        valid = valid_threshold(k)
        if valid is None:
            self.message.emit(
                "error", f"Threshold k must be a number from {K_MIN:g} to {K_MAX:g}, not {k!r}."
            )
            self.mask_changed.emit()  # widgets show the k still in force
            return
        if self.thresholds.get(method) == valid:
            if valid != k:
                self.mask_changed.emit()  # clamped: widgets (a dragged line) snap back to it
            return
        self.thresholds[method] = valid
        self._recompute_flags(only=method)
        self.request_preview()

    def set_enabled(self, method: str, enabled: bool) -> None:
        if self.enabled.get(method) == enabled:
            return
        self.enabled[method] = enabled
        self._recompute_flags()
        self.request_preview()

    def set_combine(self, combine: str) -> None:
        if combine not in ("union", "intersection") or combine == self.combine:
            return
        self.combine = combine
        self._recompute_flags()
        self.request_preview()

    def set_override(self, neuron: Neuron, state: str | None) -> None:
        """Force-prune ("prune"), keep ("keep") or leave a neuron to the thresholds (None)."""
        self.force_prune.discard(neuron)
        self.keep.discard(neuron)
        if state == "prune":
            self.force_prune.add(neuron)
        elif state == "keep":
            self.keep.add(neuron)
        self._recompute_flags()
        self.request_preview()

    def set_decisions(self, decisions, label: str) -> None:
        """Thresholds, methods, combination and overrides at once (a ``Decisions``): one mask
        change, one preview, and one undo step named ``label`` (Suggest)."""
        for m, k in decisions.thresholds:
            valid = valid_threshold(k)
            if valid is not None:
                self.thresholds[m] = valid
        self.enabled.update(dict(decisions.enabled))
        self.combine = decisions.combine
        self.force_prune = set(decisions.force_prune)
        self.keep = set(decisions.keep)
        self.change_label = label
        try:
            self._recompute_flags()
        finally:
            self.change_label = ""
        self.request_preview()

    def clear_overrides(self) -> None:
        self.force_prune.clear()
        self.keep.clear()
        self._recompute_flags()
        self.request_preview()

    def _recompute_flags(self, emit: bool = True, only: str | None = None) -> None:
        """Flags per method (or only one) and the combined mask, from cached scores."""
        if not self.scores:  # nothing opened: no engine call (it may still be loading)
            self.flags = {}
        elif only is not None and only in self.scores:
            from core.defense.inspection import method_flags

            self.flags[only] = method_flags(self.scores, only, self.thresholds[only])
        else:
            from core.defense.inspection import method_flags

            self.flags = {m: method_flags(self.scores, m, self.thresholds[m]) for m in self.scores}
        self.display_mask = self.current_mask()
        self._drop_stale_curves()
        if emit:
            self.mask_changed.emit()

    # ------------------------------------------------------------------ export
    def export(self, folder: str, *, fmt: str = "seed", render=None, steps=()) -> None:
        """Measure the current mask on the full set and write model + reports (worker thread);
        then ``render(folder)`` draws the figures on the main thread, with the curve complete.
        ``steps``: the analyst's decisions in order (the undo history), for the report."""
        inspection = self.inspection
        if inspection is None:
            self.message.emit("error", "Nothing to export: open a checkpoint first.")
            return
        from bnp_gui.evidence import plan_evidence
        from bnp_gui.report import export_session, plan_export

        plan = plan_export(self, folder, fmt)
        plan.evidence = plan_evidence(self, steps)
        self._preview_timer.stop()
        for lane in ("preview", "curve"):  # stale work must not delay the export
            self.runner.cancel(lane, notify=False)

        def run(job: Job):
            return export_session(inspection, plan, job)

        self._progress_start["export"] = time.monotonic()
        self.message.emit("info", "Exporting: measuring the exported mask on the full set…")
        context = self.curve_context(self.view_method)
        self.runner.start(
            "export",
            run,
            done=lambda result: self._exported(result, render, context),
            error=functools.partial(self._report_error, "Export failed"),
            progress=lambda done, total: self._report_progress("export", done, total),
            cancelled=lambda: self.message.emit("info", "Export cancelled."),
        )

    def _exported(self, result, render=None, context=None) -> None:
        if result.before is not None:
            self.baseline[None] = result.before  # measured on the full set
        for point in result.curve:  # unless the decisions changed during the export
            if context is not None and self.curve_context(point[0]) == context:
                self._curve_contexts[point[0]] = context
                self._curve_point(point)
        folder = str(result.model.parent)
        if render is not None:
            try:
                render(folder)
            except OSError as exc:
                self._report_error(f"Cannot write the figures into {folder}", exc)
        self.message.emit("info", f"Exported to {result.model}.")
        self.exported.emit(str(result.model))
        if self.preview_pending or self.preview is None or self.preview.stage != "full":
            self.request_preview(immediate=True)  # the export cancelled it
        else:
            self._start_curve()

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop every worker and wait for it (no thread outlives the window)."""
        self._preview_timer.stop()
        self.runner.shutdown()
