"""Run plain engine functions off the UI thread: progress, partial results, cancel, clean shutdown.

A job is a plain function ``fn(job)`` that reports through ``job.progress(done, total)`` and
``job.partial(value)``, and checks ``job.cancelled()`` (engine functions take both as callbacks).
Jobs run on their own ``QThread``; the ``Runner`` (a main-thread ``QObject``) keeps one
*lane* per kind of work ("collect", "preview", ...). Starting a job on a lane cancels the one
before it and bumps that lane's generation, so a result that arrives late is dropped and never
overwrites a newer one. Jobs that touch the model take the runner's engine lock, so forward hooks
of one job never see another job's forward passes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from core.errors import BnpError, Cancelled

log = logging.getLogger(__name__)


class Job(QThread):
    """One call of a plain function on a worker thread; signals carry (lane, generation)."""

    progressed = Signal(str, int, int, int)  # lane, generation, done, total
    partial_result = Signal(str, int, object)
    succeeded = Signal(str, int, object)
    failed = Signal(str, int, object)  # lane, generation, exception (a BnpError for users)
    was_cancelled = Signal(str, int)

    def __init__(
        self,
        lane: str,
        generation: int,
        fn: Callable[[Job], Any],
        lock: threading.Lock | None,
    ) -> None:
        super().__init__()
        self.lane = lane
        self.generation = generation
        self._fn = fn
        self._lock = lock
        self._cancel = threading.Event()
        self._last_progress = 0.0

    # --- API for the job function (called on the worker thread) ---
    def cancelled(self) -> bool:
        """True once the job should stop; engine functions poll this between batches."""
        return self._cancel.is_set() or self.isInterruptionRequested()

    def progress(self, done: int, total: int) -> None:
        """Report progress; rate-limited to 20 signals a second so the UI never floods."""
        now = time.monotonic()
        if done >= total or now - self._last_progress > 0.05:
            self._last_progress = now
            self.progressed.emit(self.lane, self.generation, int(done), int(total))
        if self.cancelled():
            raise Cancelled("cancelled")

    @contextlib.contextmanager
    def holding(self, lock: threading.Lock) -> Iterator[None]:
        """Hold ``lock`` for part of a job; waiting for it ends when the job is cancelled."""
        while not lock.acquire(timeout=0.05):
            if self.cancelled():
                raise Cancelled("cancelled")
        try:
            yield
        finally:
            lock.release()

    def partial(self, value: Any) -> None:
        """Hand an intermediate result (e.g. the fast-subset preview) to the main thread."""
        if not self.cancelled():
            self.partial_result.emit(self.lane, self.generation, value)

    # --- main thread ---
    def cancel(self) -> None:
        self._cancel.set()
        self.requestInterruption()

    def run(self) -> None:  # worker thread
        import torch  # loaded by now (bnp_gui/engine.py); no_grad is per thread: enter it here

        try:
            with self.holding(self._lock) if self._lock is not None else contextlib.nullcontext():
                if self.cancelled():
                    raise Cancelled("cancelled")
                with torch.no_grad():
                    result = self._fn(self)
        except Cancelled:
            self.was_cancelled.emit(self.lane, self.generation)
        except BnpError as exc:
            self.failed.emit(self.lane, self.generation, exc)
        except MemoryError:
            self.failed.emit(self.lane, self.generation, BnpError("Out of memory."))
        except Exception as exc:  # noqa: BLE001 - any bug must reach the user as a message
            log.error("job %s failed:\n%s", self.lane, traceback.format_exc())
            wrapped = BnpError(f"unexpected error ({type(exc).__name__}: {exc})")
            self.failed.emit(self.lane, self.generation, wrapped)
        else:
            if self.cancelled():
                self.was_cancelled.emit(self.lane, self.generation)
            else:
                self.succeeded.emit(self.lane, self.generation, result)


@dataclass
class _Callbacks:
    done: Callable[[Any], None] | None = None
    error: Callable[[BaseException], None] | None = None
    progress: Callable[[int, int], None] | None = None
    partial: Callable[[Any], None] | None = None
    cancelled: Callable[[], None] | None = None


class Runner(QObject):
    """Owns the worker threads; delivers only the newest generation's results of each lane."""

    busy_changed = Signal(str, bool)  # lane, running

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine_lock = threading.Lock()
        self._generation: dict[str, int] = {}
        self._current: dict[str, Job] = {}
        self._callbacks: dict[tuple[str, int], _Callbacks] = {}
        self._alive: set[Job] = set()
        self._closed = False

    def start(
        self,
        lane: str,
        fn: Callable[[Job], Any],
        *,
        done: Callable[[Any], None] | None = None,
        error: Callable[[BaseException], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        partial: Callable[[Any], None] | None = None,
        cancelled: Callable[[], None] | None = None,
        uses_engine: bool = True,
    ) -> int:
        """Start ``fn(job)`` on ``lane`` after cancelling its previous job; returns the generation.

        Callbacks run on the main thread and only for the lane's newest generation.
        """
        if self._closed:
            return -1
        self.cancel(lane, notify=False)
        generation = self._generation.get(lane, 0) + 1
        self._generation[lane] = generation
        job = Job(lane, generation, fn, self.engine_lock if uses_engine else None)
        self._callbacks[(lane, generation)] = _Callbacks(done, error, progress, partial, cancelled)
        job.progressed.connect(self._on_progress)
        job.partial_result.connect(self._on_partial)
        job.succeeded.connect(self._on_succeeded)
        job.failed.connect(self._on_failed)
        job.was_cancelled.connect(self._on_cancelled)
        job.finished.connect(self._on_thread_finished)
        self._current[lane] = job
        self._alive.add(job)
        job.start()
        self.busy_changed.emit(lane, True)
        return generation

    def is_running(self, lane: str) -> bool:
        return lane in self._current

    def generation(self, lane: str) -> int:
        return self._generation.get(lane, 0)

    def cancel(self, lane: str, *, notify: bool = True) -> None:
        """Ask the lane's job to stop; its results (if any still arrive) are ignored."""
        job = self._current.pop(lane, None)
        if job is None:
            return
        job.cancel()
        callbacks = self._callbacks.pop((lane, job.generation), None)
        self._generation[lane] = self._generation.get(lane, 0) + 1
        if notify:
            self.busy_changed.emit(lane, False)
            if callbacks is not None and callbacks.cancelled is not None:
                callbacks.cancelled()

    def shutdown(self) -> None:
        """Cancel every job and wait for its thread to end (called from closeEvent).

        The wait has no time limit: a job stops at its next cancellation check (one batch), and
        a QThread destroyed while running would abort the process.
        """
        self._closed = True
        for lane in list(self._current):
            self.cancel(lane, notify=False)
        for job in list(self._alive):
            job.cancel()
            for sig in (
                job.progressed,
                job.partial_result,
                job.succeeded,
                job.failed,
                job.was_cancelled,
            ):
                try:
                    sig.disconnect()
                except (RuntimeError, TypeError):
                    pass
            job.wait()
        self._alive.clear()
        self._callbacks.clear()

    # --- slots (main thread) ---
    def _take(self, lane: str, generation: int, final: bool) -> _Callbacks | None:
        if self._generation.get(lane) != generation:
            return None  # stale: the user moved on
        if final:
            self._current.pop(lane, None)
            self.busy_changed.emit(lane, False)
            return self._callbacks.pop((lane, generation), None)
        return self._callbacks.get((lane, generation))

    @Slot(str, int, int, int)
    def _on_progress(self, lane: str, generation: int, done: int, total: int) -> None:
        cb = self._take(lane, generation, final=False)
        if cb is not None and cb.progress is not None:
            cb.progress(done, total)

    @Slot(str, int, object)
    def _on_partial(self, lane: str, generation: int, value: object) -> None:
        cb = self._take(lane, generation, final=False)
        if cb is not None and cb.partial is not None:
            cb.partial(value)

    @Slot(str, int, object)
    def _on_succeeded(self, lane: str, generation: int, value: object) -> None:
        cb = self._take(lane, generation, final=True)
        if cb is not None and cb.done is not None:
            cb.done(value)

    @Slot(str, int, object)
    def _on_failed(self, lane: str, generation: int, exc: object) -> None:
        cb = self._take(lane, generation, final=True)
        if cb is not None and cb.error is not None:
            cb.error(exc)

    @Slot(str, int)
    def _on_cancelled(self, lane: str, generation: int) -> None:
        cb = self._take(lane, generation, final=True)
        if cb is not None and cb.cancelled is not None:
            cb.cancelled()

    @Slot()
    def _on_thread_finished(self) -> None:
        job = self.sender()
        if isinstance(job, Job):
            self._alive.discard(job)
            job.deleteLater()
