"""Benchmark: after a threshold change on the demo model, how long until the preview's first
numbers (fast subset) and the full-set numbers arrive in the window.

Run: python bench/bench_preview.py [CHECKPOINT --data DIR] [--repeats N]
Offscreen Qt; includes the debounce (what the user waits for after releasing the slider).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the app sets it (bnp_gui/__init__.py)


def main() -> int:
    from qt_wait import event_loop_waiter, model_and_roles, model_arguments  # bench/

    args = model_arguments(__doc__.splitlines()[0], repeats=6)

    from PySide6.QtCore import QTimer

    from bnp_gui.app import make_application
    from bnp_gui.session import PREVIEW_DEBOUNCE_MS, Session

    app = make_application(["bench"])
    session = Session()

    wait_until = event_loop_waiter(app, 300.0)

    checkpoint, roles = model_and_roles(args)
    t0 = time.monotonic()
    session.open_checkpoint(checkpoint)
    wait_until(lambda: session.inspection is not None)
    session.set_data(roles)
    wait_until(lambda: bool(session.data))
    print(
        f"open + read data: {time.monotonic() - t0:.2f} s "
        f"({', '.join(f'{k} {len(v)}' for k, v in session.data.items())})"
    )
    t0 = time.monotonic()
    session.analyze()
    wait_until(lambda: "bnp" in session.scores)
    print(
        f"analysis (statistics + scores): {time.monotonic() - t0:.2f} s "
        f"on {session.inspection.device_name}"
    )
    wait_until(
        lambda: (
            session.preview is not None
            and session.preview.stage == "full"
            and not session.runner.is_running("preview")
        )
    )
    # let the curve finish so it does not skew the first run (it is cancelled anyway)
    wait_until(lambda: not session.runner.is_running("curve"), 600)

    first, full = [], []
    ks = [2.0, 2.5, 1.5, 3.5, 2.2, 2.8, 1.8, 3.2][: args.repeats]
    for k in ks:
        subset = session.preview_subset_size()
        arrivals: list[float] = []
        record = arrivals.append
        session.preview_changed.connect(lambda record=record: record(time.monotonic()))
        t0 = time.monotonic()
        session.set_threshold("bnp", k)
        wait_until(
            lambda: (
                session.preview is not None
                and session.preview.stage == "full"
                and not session.runner.is_running("preview")
                and arrivals  # noqa: B023 - read right away, inside this iteration
            )
        )
        session.preview_changed.disconnect()
        stages = session.preview
        first.append(arrivals[0] - t0)
        full.append(arrivals[-1] - t0)
        print(
            f"k={k:.1f}: {stages.pruned:3d} pruned, first numbers ({subset} samples + triggered) "
            f"{first[-1] * 1000:5.0f} ms, full set {full[-1] * 1000:5.0f} ms "
            f"(ACC {stages.after.acc:.2f} %, ASR {stages.after.asr or 0:.2f} %)"
        )
        wait_until(lambda: not session.runner.is_running("curve"), 600)
    print(
        f"first numbers after a threshold change (incl. {PREVIEW_DEBOUNCE_MS} ms debounce): "
        f"median {statistics.median(first) * 1000:.0f} ms, max {max(first) * 1000:.0f} ms"
    )
    print(
        f"full-set numbers: median {statistics.median(full) * 1000:.0f} ms, "
        f"max {max(full) * 1000:.0f} ms"
    )
    session.shutdown()
    QTimer.singleShot(0, app.quit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
