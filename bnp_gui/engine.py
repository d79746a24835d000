"""The engine (torch and the core modules the window drives) imported on a worker thread.

`bnp-gui` paints its window before torch has loaded (seconds on a busy machine): an `Engine`
imports the engine's modules on a QThread, and what needs them (opening a checkpoint, data, the
demo, a session) waits in its queue and runs, in order, once they are imported. Windows built
without one (tests, scripts) get `Engine.loaded()`, which runs everything at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, QThread, QTimer, Signal
from PySide6.QtWidgets import QApplication, QHBoxLayout, QLabel, QProgressBar, QWidget

# Every engine module the window imports later in a slot: imported here, off the GUI thread, so
# that those later imports find them loaded (the GUI thread never executes torch's import).
ENGINE_MODULES = (
    "torch",
    "core.io.checkpoint",
    "core.defense.inspection",
    "core.defense.scores",
    "core.defense.evaluation",
    "core.data.load",
    "core.data.triggers",
    "core.defense.activations",
    "core.model.detect",
    "core.model.graph",
    "core.io.export",
    "core.evidence.suspects",
    "core.evidence.suggest",
    "core.evidence.held_out_suggest",
    "core.evidence.repair",
)
LOADING_TEXT = "Loading the engine (PyTorch)…"


def import_engine() -> None:
    """Import every module of ENGINE_MODULES (run on the engine's thread), after starting the
    checkpoint parser's own process (it imports torch too, meanwhile: the first open is fast)."""
    from core.safety.isolation import prestart

    prestart()
    for name in ENGINE_MODULES:
        importlib.import_module(name)


class _ImportThread(QThread):
    """Runs ``load`` once; ``error`` holds why it failed ("" when it did not)."""

    def __init__(self, load: Callable[[], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._load = load
        self.error = ""

    def run(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # noqa: BLE001 - any failure is reported, never raised here
            self.error = f"{type(exc).__name__}: {exc}"


class Engine(QObject):
    """Whether torch and the core modules are imported, and what waits for them."""

    ready = Signal()
    failed = Signal(str)  # why the engine could not be imported
    waiting = Signal(str)  # a message: something was queued until the engine is ready

    def __init__(
        self, parent: QObject | None = None, *, load: Callable[[], None] = import_engine
    ) -> None:
        super().__init__(parent)
        self._load = load
        self.is_ready = False
        self.error = ""
        self._queue: list[Callable[[], None]] = []
        self._thread: _ImportThread | None = None

    @classmethod
    def loaded(cls, parent: QObject | None = None) -> Engine:
        """An engine counted as ready: everything runs at once, imports happen where used."""
        engine = cls(parent)
        engine.is_ready = True
        return engine

    @property
    def loading(self) -> bool:
        return not self.is_ready and not self.error

    def start(self) -> None:
        """Start importing on a worker thread (once); `ready` or `failed` follows."""
        if self.is_ready or self._thread is not None:
            return
        self._thread = _ImportThread(self._load)
        self._thread.finished.connect(self._finished)
        self._thread.start()

    def when_ready(self, call: Callable[[], None], what: str = "") -> None:
        """Run ``call`` now if the engine is ready, else once it is (``what`` is said meanwhile,
        e.g. "The demo opens"). Nothing queued is lost; after a failure the call is refused."""
        if self.is_ready:
            call()
        elif self.error:
            self.failed.emit(self.error)
        else:
            self._queue.append(call)
            if what:
                self.waiting.emit(f"{what} once the engine has loaded.")

    def wait(self) -> None:
        """Block until the import thread has finished (at exit: no thread outlives the app)."""
        if self._thread is not None:
            self._thread.wait()

    def _finished(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.deleteLater()
        if thread.error:
            self.error = thread.error
            self._queue.clear()
            self.failed.emit(self.error)
            return
        self.is_ready = True
        self.ready.emit()
        queue, self._queue = self._queue, []
        for call in queue:
            call()


class EngineStatus(QWidget):
    """The status bar's "Loading the engine…" with a busy bar; hidden once the engine is ready."""

    def __init__(self, engine: Engine, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel(LOADING_TEXT)
        self.label.setToolTip(
            "The window works already; opening a checkpoint, data or the demo waits for it."
        )
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(90)
        self.busy.setMaximumHeight(14)
        self.busy.setTextVisible(False)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addStretch(1)  # text and bar side by side, whatever width the status bar gives
        layout.addWidget(self.label)
        layout.addWidget(self.busy)
        engine.ready.connect(self.hide)
        engine.failed.connect(self.hide)
        if not engine.loading:
            self.hide()


class _FirstPaint(QObject):
    """Calls ``then`` once, at the first paint of a widget of ``window`` (or after a delay)."""

    def __init__(self, window: QWidget, then: Callable[[], None], fallback_ms: int) -> None:
        super().__init__(window)
        self._window, self._then = window, then
        QApplication.instance().installEventFilter(self)
        QTimer.singleShot(fallback_ms, self._fire)  # hidden or minimised: no paint comes

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if (
            event.type() == QEvent.Type.Paint
            and isinstance(obj, QWidget)
            and obj.window() is self._window
        ):
            QTimer.singleShot(0, self._fire)  # after this paint has been drawn
        return False

    def _fire(self) -> None:
        if self._then is None:
            return
        then, self._then = self._then, None
        QApplication.instance().removeEventFilter(self)
        then()


def start_after_first_paint(window: QWidget, start: Callable[[], None], fallback_ms=1500) -> None:
    """Run ``start`` (the engine's import) once ``window`` has painted: the import thread holds
    the interpreter for long stretches, which would delay that first paint."""
    _FirstPaint(window, start, fallback_ms)
