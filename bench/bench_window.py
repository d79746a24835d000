"""Benchmark: the analyst's waits in the window on the demo model: a click on a neuron until
its plot is there (idle, and while the trade-off curve is being computed), and Export until
the report and figures are written.

Run: python bench/bench_window.py [--clicks N]
Offscreen Qt; prints seconds and the ratio to the 1 s target for the neuron plot.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402 - before the QApplication

TARGET_S = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=5)
    args = parser.parse_args()

    from qt_wait import event_loop_waiter  # bench/, beside this script

    from bnp_gui.app import make_application
    from bnp_gui.demo import demo_files
    from bnp_gui.mainwindow import MainWindow

    app = make_application(["bench"])
    window = MainWindow(persist=False, interactive=False)
    window.resize(1440, 900)
    window.show()
    s = window.session

    wait_until = event_loop_waiter(app, 600.0)

    checkpoint, roles = demo_files()
    print(f"model: {checkpoint}; torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}")
    print(f"load average: {os.getloadavg()[0]:.1f} (other work on this machine slows every number)")
    window.open_demo(analyze=True)
    wait_until(lambda: "bnp" in s.scores)

    def full_preview() -> bool:
        p = s.preview
        return p is not None and p.stage == "full" and not s.preview_pending

    def click(neuron) -> float:
        t0 = time.monotonic()
        s.select_neuron(neuron)
        wait_until(lambda: s.activations is not None and s.selected == neuron)
        app.processEvents()  # the plot redraw
        return time.monotonic() - t0

    layers = [name for name, _ in s.layers]
    neurons = [(layers[(3 + 5 * i) % len(layers)], i) for i in range(args.clicks)]
    # other layers for the second series: nothing of theirs is cached yet
    others = [(layers[(1 + 5 * i) % len(layers)], i) for i in range(args.clicks)]

    wait_until(full_preview)
    wait_until(lambda: not s.is_busy("curve") and not s.is_busy("examples"))
    idle, same_layer = [], []
    for n in neurons:
        idle.append(click(n))
        same_layer.append(click((n[0], n[1] + 1)))  # arrow key: the next channel

    busy = []
    for i, n in enumerate(others):
        s.set_threshold("bnp", 2.0 + 0.1 * i)  # preview, then curve, start
        wait_until(full_preview)
        s.curves.clear()  # the curve recomputes: the click lands while it runs
        s._start_curve()
        wait_until(lambda: s.is_busy("curve"))
        busy.append(click(n))

    # the engine side alone, side by side (robust to the machine's load): the old path ran two
    # full forward passes of 256 images per click; the new one a pass stopped at the layer,
    # 128 images each, for the whole layer
    from bnp_gui.neuron_values import compute_layer_values

    wait_until(full_preview)
    wait_until(lambda: not s.is_busy("curve") and not s.is_busy("examples"))
    insp, samples, trig = s.inspection, s.data["clean"], s.trigger
    old_t, new_t = [], []
    for layer in (layers[2], layers[len(layers) // 2], layers[-1]):
        victims = samples.subset(samples.labels != trig.target)
        with torch.no_grad():
            t0 = time.monotonic()
            insp.layer_activations(samples, layer, 0, limit=256)
            insp.layer_activations(victims, layer, 0, trigger=trig.trigger, limit=256)
            old_t.append(time.monotonic() - t0)
            t0 = time.monotonic()
            compute_layer_values(insp, samples, trig, layer)
            new_t.append(time.monotonic() - t0)
    ratios = [o / n for o, n in zip(old_t, new_t, strict=True)]
    print(
        "engine, one click (early, middle, last layer): before "
        + ", ".join(f"{t:.2f}" for t in old_t)
        + " s; now "
        + ", ".join(f"{t:.2f}" for t in new_t)
        + " s; speed-up "
        + ", ".join(f"{r:.1f}×" for r in ratios)
    )

    exports = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(2):
            s.set_threshold("bnp", 2.5 + 0.2 * i)  # and export at once: nothing measured yet
            done = []
            s.exported.connect(done.append)
            t0 = time.monotonic()
            window.export_to(os.path.join(folder, f"e{i}"))
            wait_until(lambda done=done: bool(done))
            exports.append(time.monotonic() - t0)
            s.exported.disconnect(done.append)

    def show(name, values, target=None):
        med = statistics.median(values)
        text = f"{name}: median {med:.2f} s, max {max(values):.2f} s over {len(values)}"
        if target:
            text += f"; median / target = {med / target:.2f}"
        print(text)

    show("neuron plot after a click, idle", idle, TARGET_S)
    show("neuron plot, next channel of the same layer", same_layer, TARGET_S)
    show("neuron plot after a click, curve computing", busy, TARGET_S)
    show("export (full-set measurement + files + figures)", exports)
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
