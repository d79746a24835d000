"""Benchmark: the GUI thread's longest stall while a checkpoint opens, with the neuron table
dock hidden (the window's default: the table is rebuilt when it is shown) and shown (what every
open paid before the table deferred its rows), side by side in one process.

Run: python bench/bench_open_stall.py [CHECKPOINT --data DIR] [--repeats N]

A 10 ms timer ticks on the GUI thread (bench_responsiveness.Heartbeat) from Open until the
panels have redrawn for the new model. Printed per run and as medians: the longest wall-clock
gap between ticks and the most GUI-thread CPU in one gap (``time.thread_time``: waiting for a
CPU on a loaded machine excluded), and the ratio hidden / shown. Offscreen Qt.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402, F401 - before the QApplication

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    from bench_responsiveness import Heartbeat
    from PySide6.QtCore import QEventLoop
    from qt_wait import event_loop_waiter, model_and_roles, model_arguments

    from bnp_gui.app import make_application
    from bnp_gui.mainwindow import MainWindow

    args = model_arguments(__doc__.splitlines()[0], repeats=3)
    app = make_application(["bench"])
    checkpoint, _roles = model_and_roles(args)
    wait_until = event_loop_waiter(app, 600.0)

    def settle(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents(QEventLoop.AllEvents, 20)
            time.sleep(0.002)

    results: dict[str, list[tuple[float, float]]] = {"hidden": [], "shown": []}
    for run in range(args.repeats):
        for table in ("hidden", "shown"):  # alternated: machine load affects both alike
            window = MainWindow(persist=False)
            window.show()
            window.tools.docks["table"].setVisible(table == "shown")
            settle(0.3)
            beat = Heartbeat()
            beat.start()
            window.open_checkpoint(checkpoint)
            wait_until(lambda w=window: w.session.inspection is not None)
            settle(0.5)  # the panels redraw for the new model
            beat.stop()
            window.close()
            results[table].append((beat.max_gap_ms, beat.max_cpu_ms))
            print(
                f"run {run + 1}, table {table:6s}: longest gap {beat.max_gap_ms:6.0f} ms, most "
                f"GUI-thread CPU in one gap {beat.max_cpu_ms:6.0f} ms"
            )
    med = {
        k: [statistics.median(v[i] for v in rows) for i in (0, 1)] for k, rows in results.items()
    }
    hidden, shown = med["hidden"], med["shown"]
    print(
        f"open {Path(checkpoint).name}, medians of {args.repeats}: table hidden "
        f"{hidden[0]:.0f} ms gap / {hidden[1]:.0f} ms CPU; shown {shown[0]:.0f} ms / "
        f"{shown[1]:.0f} ms CPU; hidden/shown {hidden[0] / shown[0]:.2f}× (gap), "
        f"{hidden[1] / max(shown[1], 1e-9):.2f}× (CPU)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
