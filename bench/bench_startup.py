"""Start-up times: `bnp -h`, every `bnp <command> -h`, and the window's first paint, each beside
`python -c "import torch"` on the same machine in the same run.

Each figure is the median of --repeat runs of a fresh interpreter, from spawning it to (a) its
exit for the command line, (b) the first paint event of the splash screen and of the main window
for the window (Qt's offscreen platform unless a display is set; the process exits right after
that paint).
The ratio column divides by the median of `import torch`.

    python bench/bench_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in the child: the real `bnp-gui` entry point, with an application-wide event filter that
# reports the first paint of any widget of the main window and exits at once.
FIRST_PAINT = """
import os, sys, time
t0, target = float(sys.argv[1]), sys.argv[2]
import bnp_gui.app as appmod

def watch(app):
    from PySide6.QtCore import QEvent, QObject
    class FirstPaint(QObject):
        def eventFilter(self, obj, event):
            window = obj.window() if hasattr(obj, "isWindow") else None
            if event.type() == QEvent.Type.Paint and type(window).__name__ == target:
                print(f"{time.time() - t0:.4f}", flush=True)
                os._exit(0)
            return False
    if not hasattr(app, "_first_paint"):
        app._first_paint = FirstPaint()
        app.installEventFilter(app._first_paint)
    return app

splash, make = appmod.show_splash, appmod.make_application
appmod.show_splash = lambda app: splash(watch(app))
appmod.make_application = lambda *a, **k: watch(make(*a, **k))
sys.argv = ["bnp-gui"]
appmod.main([])
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
    return env


def time_command(args: list[str]) -> float:
    """Seconds from spawning `python args…` to its exit (it must succeed)."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *args], env=_env(), cwd=ROOT, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {result.stderr[-500:]}")
    return elapsed


def time_first_paint(window: str = "MainWindow") -> float:
    """Seconds from spawning `bnp-gui` to the first paint of a window of class `window`."""
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-c", FIRST_PAINT, repr(start), window],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"the window never painted: {result.stderr[-800:]}")
    return float(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--no-window", action="store_true", help="skip the window's first paint")
    args = parser.parse_args()

    cases: list[tuple[str, object]] = [
        ('python -c "import torch"', lambda: time_command(["-c", "import torch"])),
        ("python -c pass (interpreter)", lambda: time_command(["-c", "pass"])),
        ("bnp -h", lambda: time_command(["-m", "core.cli", "-h"])),
    ]
    for command in ("info", "defend", "train", "demo"):
        cases.append(
            (f"bnp {command} -h", lambda c=command: time_command(["-m", "core.cli", c, "-h"]))
        )
    if not args.no_window:
        cases.append(("bnp-gui: splash painted", lambda: time_first_paint("QSplashScreen")))
        cases.append(("bnp-gui: main window painted", time_first_paint))

    # interleaved rounds, so that a change in machine load hits every case alike
    runs: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.repeat):
        for name, run in cases:
            runs[name].append(run())
    torch_median = statistics.median(runs[cases[0][0]])
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {args.repeat} runs each")
    print(f"{'what':<32} {'median s':>9} {'min s':>7} {'max s':>7} {'÷ import torch':>15}")
    for name, _ in cases:
        values = runs[name]
        median = statistics.median(values)
        print(
            f"{name:<32} {median:>9.3f} {min(values):>7.3f} {max(values):>7.3f} "
            f"{median / torch_median:>15.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
