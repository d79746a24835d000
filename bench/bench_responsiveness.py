"""Benchmark: how long the window's event loop stalls while a model is opened and analysed.

Run: python bench/bench_responsiveness.py [CHECKPOINT --data DIR] [--repeats N]

A 10 ms timer ticks on the GUI thread while the demo model (or the given one) is opened, its data
read and analysed, and the panels redraw with the new scores. Printed per run:
  - the longest wall-clock gap between two ticks (what a user feels; it grows with the machine's
    load, which is why the test suite does not assert it — tests/gui/test_responsiveness.py
    checks that no engine work runs on the GUI thread instead);
  - the most CPU time the GUI thread itself spent between two ticks (``time.thread_time``: work
    of the worker threads and time spent waiting for a CPU excluded).
Both against the 100 ms the window aims for, as ratios. Offscreen Qt.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the app sets it (bnp_gui/__init__.py)

import torch  # noqa: E402, F401 - before the QApplication

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_MS = 100.0


class Heartbeat:
    """A 10 ms GUI-thread timer: longest wall-clock gap and most GUI-thread CPU between ticks."""

    def __init__(self) -> None:
        from PySide6.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self.tick)
        self.max_gap_ms = 0.0
        self.max_cpu_ms = 0.0
        self.ticks = 0
        self.phase = ""
        self.by_phase: dict[str, tuple[float, float]] = {}  # phase → (max gap, max CPU)

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.thread_time()
        self.timer.start()

    def tick(self) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        gap, used = (wall - self._wall) * 1000, (cpu - self._cpu) * 1000
        self.max_gap_ms = max(self.max_gap_ms, gap)
        self.max_cpu_ms = max(self.max_cpu_ms, used)
        old = self.by_phase.get(self.phase, (0.0, 0.0))
        self.by_phase[self.phase] = (max(old[0], gap), max(old[1], used))
        self._wall, self._cpu = wall, cpu
        self.ticks += 1

    def stop(self) -> None:
        self.timer.stop()


def main() -> int:
    from qt_wait import event_loop_waiter, model_and_roles, model_arguments  # bench/

    args = model_arguments(__doc__.splitlines()[0], repeats=3)

    from PySide6.QtCore import QEventLoop

    from bnp_gui.app import make_application
    from bnp_gui.mainwindow import MainWindow

    app = make_application(["bench"])
    checkpoint, roles = model_and_roles(args)

    wait_until = event_loop_waiter(app, 600.0)

    def settle(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents(QEventLoop.AllEvents, 20)
            time.sleep(0.002)

    gaps, cpus = [], []
    for run in range(args.repeats):
        window = MainWindow(persist=False)
        window.show()
        session = window.session
        beat = Heartbeat()
        beat.start()
        start = time.monotonic()
        beat.phase = "open"
        window.open_checkpoint(checkpoint)
        wait_until(lambda: session.inspection is not None)  # noqa: B023
        beat.phase = "data"
        window.open_data(roles)
        wait_until(lambda: bool(session.data))  # noqa: B023
        settle(0.3)
        beat.phase = "analyse"
        session.analyze()
        wait_until(lambda: session.available("bnp") and not session.is_busy("collect"))  # noqa: B023
        settle(0.3)  # the panels redraw with the new scores
        beat.stop()
        window.close()
        gaps.append(beat.max_gap_ms)
        cpus.append(beat.max_cpu_ms)
        print(
            f"run {run + 1}: {time.monotonic() - start:5.1f} s, {beat.ticks} ticks; longest gap "
            f"{beat.max_gap_ms:6.1f} ms ({beat.max_gap_ms / TARGET_MS:.2f}× target), most "
            f"GUI-thread CPU between ticks {beat.max_cpu_ms:6.1f} ms "
            f"({beat.max_cpu_ms / TARGET_MS:.2f}× target)"
        )
        print(
            "    by phase (gap / GUI CPU, ms): "
            + ", ".join(f"{k} {g:.0f} / {c:.0f}" for k, (g, c) in beat.by_phase.items())
        )
    print(
        f"open + read data + analyse, {args.repeats} runs: longest event-loop gap median "
        f"{statistics.median(gaps):.0f} ms (max {max(gaps):.0f} ms, "
        f"{max(gaps) / TARGET_MS:.2f}× the {TARGET_MS:.0f} ms target); GUI-thread CPU in one "
        f"slice median {statistics.median(cpus):.0f} ms (max {max(cpus):.0f} ms, "
        f"{max(cpus) / TARGET_MS:.2f}×)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
