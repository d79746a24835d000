"""Start-up times: `bnp -h`, every `bnp <command> -h`, and the window's first paint, each beside
`python -c "import torch"` on the same machine in the same run.

Each figure is the median of --repeat runs of a fresh interpreter, from spawning it to (a) its
exit for the command line, (b) the first paint event of the main window (plain, `--demo`, and
with the demo's checkpoint as argument), (c) the engine (torch) loaded behind the painted window,
for the window (Qt's offscreen platform unless a display is set; the process exits right there).
While the engine loads, a 10 ms timer on the GUI thread measures its longest stall (the import
thread holds the interpreter during parts of torch's import).
The ratio column divides by the median of `import torch`.

    python bench/bench_startup.py [--repeat 5] [--grab FILE.png]

--grab saves the window as it is at its first paint (the "Loading the engine…" state).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG_HOME = tempfile.mkdtemp(prefix="bench-startup-")
DEMO_CHECKPOINT = ROOT / "resources" / "demo" / "fmnist_resnet20_badnets.pth"

IDLE_S = 10.0  # how long the control run ("idle": the engine never loads) watches the GUI thread

# Run in the child: the real `bnp-gui` entry point, with an application-wide event filter that
# reports the first paint of any widget of the main window, then (`until` = "ready") the engine
# being loaded, or ("opened", with --demo) the demo's checkpoint open, or ("idle") IDLE_S seconds
# without the engine, with the GUI thread's longest stall meanwhile, and exits at once.
FIRST_PAINT = """
import json, os, sys, time
t0, until, grab = float(sys.argv[1]), sys.argv[2], sys.argv[3]
import bnp_gui.app as appmod
import bnp_gui.engine
if until == "idle":
    bnp_gui.engine.Engine.start = lambda self: None

def report(**values):
    print(json.dumps(values), flush=True)
    os._exit(0)

def watch(app):
    from PySide6.QtCore import QEvent, QObject, QTimer
    class FirstPaint(QObject):
        painted = None
        def eventFilter(self, obj, event):
            if self.painted is not None or event.type() != QEvent.Type.Paint:
                return False
            window = obj.window() if hasattr(obj, "isWindow") else None
            if type(window).__name__ != "MainWindow":
                return False
            self.painted = time.time() - t0
            if grab:
                QTimer.singleShot(0, lambda: window.grab().save(grab))
            if until == "paint":
                QTimer.singleShot(0, lambda: report(paint=self.painted))
                return False
            self.gaps, self.last, self.window = [], time.perf_counter(), window
            self.timer = QTimer()
            self.timer.timeout.connect(self.tick)
            self.timer.start(10)
            if until == "ready":
                window.engine.ready.connect(self.ready)
            window.engine.failed.connect(lambda why: report(error=why))
            return False
        def tick(self):
            now = time.perf_counter()
            self.gaps.append(now - self.last)
            self.last = now
            if until == "opened" and self.window.session.inspection is not None:
                self.ready(ticked=True)
            if until == "idle" and time.time() - t0 > self.painted + IDLE_S:
                self.ready(ticked=True)
        def ready(self, ticked=False):
            if not ticked:
                self.gaps.append(time.perf_counter() - self.last)
            report(paint=self.painted, ready=time.time() - t0, stall=max(self.gaps) - 0.010)
    if not hasattr(app, "_first_paint"):
        app._first_paint = FirstPaint()
        app.installEventFilter(app._first_paint)
    return app

make = appmod.make_application
appmod.make_application = lambda *a, **k: watch(make(*a, **k))
args, sys.argv = sys.argv[4:], ["bnp-gui"]
appmod.main(args)
""".replace("IDLE_S", repr(IDLE_S))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
    return env


def children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_command(args: list[str]) -> tuple[float, float]:
    """Seconds from spawning `python args…` to its exit (it must succeed), and the CPU
    seconds it used."""
    cpu = children_cpu()
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *args], env=_env(), cwd=ROOT, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {result.stderr[-500:]}")
    return elapsed, children_cpu() - cpu


def run_window(until: str = "paint", args: tuple[str, ...] = (), grab: str = "") -> dict:
    """Seconds from spawning `bnp-gui args…` to its main window's first paint (and, with
    ``until="ready"``, to the engine loaded, with the GUI thread's longest stall meanwhile)."""
    cpu = children_cpu()
    start = time.time()
    env = _env()
    env["XDG_CONFIG_HOME"] = CONFIG_HOME  # the window's settings: not the user's
    result = subprocess.run(
        [sys.executable, "-c", FIRST_PAINT, repr(start), until, grab, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"the window never painted: {result.stderr[-800:]}")
    values = json.loads(lines[-1])
    if "error" in values:
        raise SystemExit(f"the engine failed to load: {values['error']}")
    values["cpu"] = children_cpu() - cpu  # the child exits right after what it measured
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--no-window", action="store_true", help="skip the window's first paint")
    parser.add_argument("--grab", metavar="FILE.png", help="save the window at its first paint")
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

        def painted(*argv: str) -> tuple[float, float]:
            values = run_window(args=argv)
            return values["paint"], values["cpu"]

        cases.append(("bnp-gui: window painted", painted))
        cases.append(("bnp-gui --demo: window painted", lambda: painted("--demo")))
        cases.append(("bnp-gui CKPT: window painted", lambda: painted(str(DEMO_CHECKPOINT))))
        stalls: dict[str, list[float]] = {"ready": [], "idle": [], "opened": []}

        def until(what: str, *argv: str) -> tuple[float, float]:
            values = run_window(what, argv)
            stalls[what].append(values["stall"])
            return values["ready"], values["cpu"]

        def engine_ready() -> tuple[float, float]:
            return until("ready")

        cases.append(("bnp-gui: engine loaded behind", engine_ready))
        cases.append(("bnp-gui --demo: checkpoint open", lambda: until("opened", "--demo")))
        cases.append((f"bnp-gui, no engine, {IDLE_S:g} s", lambda: until("idle")))

    print(f"load average at the start {os.getloadavg()[0]:.2f}")
    # interleaved rounds, so that a change in machine load hits every case alike
    runs: dict[str, list[float]] = {name: [] for name, _ in cases}
    cpus: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.repeat):
        for name, run in cases:
            wall, cpu = run()
            runs[name].append(wall)
            cpus[name].append(cpu)
    if args.grab and not args.no_window:
        run_window(grab=str(Path(args.grab).resolve()))
    torch_median = statistics.median(runs[cases[0][0]])
    torch_cpu = statistics.median(cpus[cases[0][0]])
    print(f"{os.cpu_count()} CPUs, {args.repeat} runs each")
    print("wall: seconds until it is done; CPU: seconds of CPU it used (less load-dependent)")
    print(
        f"{'what':<32} {'median s':>9} {'min s':>7} {'max s':>7} {'÷ import torch':>15} "
        f"{'CPU s':>7} {'CPU ÷ torch':>12}"
    )
    for name, _ in cases:
        values = runs[name]
        median, cpu = statistics.median(values), statistics.median(cpus[name])
        print(
            f"{name:<32} {median:>9.3f} {min(values):>7.3f} {max(values):>7.3f} "
            f"{median / torch_median:>15.2f} {cpu:>7.3f} {cpu / torch_cpu:>12.2f}"
        )
    if not args.no_window:
        for what, during in (
            ("ready", "while the engine loads"),
            ("opened", "until the demo is open"),
            ("idle", f"in {IDLE_S:g} s without the engine (control)"),
        ):
            print(
                f"GUI thread's longest stall {during}: median "
                f"{statistics.median(stalls[what]):.3f} s, max {max(stalls[what]):.3f} s"
            )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
