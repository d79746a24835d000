"""Start-up: the window is built and painted without torch, the engine loads on a worker thread,
and what was asked for meanwhile (the demo, a checkpoint, data) runs once it is ready.

The subprocess tests run in a fresh interpreter, where torch is not imported yet (this test
process imported it in conftest.py). No timing is asserted here: bench/bench_startup.py measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, *args: str, config: Path | None = None, timeout: float = 900) -> dict:
    """Run ``code`` in a fresh offscreen interpreter (settings under ``config``); it prints one
    JSON line last."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "OMP_NUM_THREADS": "1"}
    if config is not None:
        env["XDG_CONFIG_HOME"] = str(config)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


EMPTY_WINDOW = """
import json, sys, tempfile
import bnp_gui.app
import bnp_gui.mainwindow
after_import = "torch" in sys.modules
from PySide6.QtCore import QSettings
app = bnp_gui.app.make_application()
QSettings.setDefaultFormat(QSettings.IniFormat)
QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, tempfile.mkdtemp())
from bnp_gui.engine import ENGINE_MODULES, Engine
engine = Engine()  # never started: nothing may need it to build and use the empty window
window = bnp_gui.mainwindow.MainWindow(engine=engine)
window.show()
for _ in range(50):
    app.processEvents()
s = window.session
s.set_threshold("bnp", 4.5)          # what a user can touch before the engine is there
s.set_enabled("clp", True)
s.set_combine("intersection")
window.tools.history.stack.undo()   # the undo menu names the change
window.open_demo()                    # waits in the engine's queue
window.open_checkpoint("x.pth")
window.thresholds.sync()
for _ in range(50):
    app.processEvents()
print(json.dumps({
    "after_import": after_import,
    "after_use": "torch" in sys.modules,
    "engine_modules": sorted(set(ENGINE_MODULES) & set(sys.modules)),
    "checkpoint": s.checkpoint_path,
    "status": window.statusBar().currentMessage(),
    "open_as": window.open_as_action.isEnabled(),
}))
window.close()
"""


def test_window_imports_builds_and_paints_without_torch(tmp_path):
    out = run_python(EMPTY_WINDOW, config=tmp_path)  # never the user's settings
    assert out["after_import"] is False
    assert out["after_use"] is False
    assert out["engine_modules"] == []
    assert out["checkpoint"] == ""  # queued, not run, not lost: see the qtbot tests below
    assert out["status"] == "x.pth opens once the engine has loaded."
    assert out["open_as"] is False  # its dialog lists the engine's architectures


# The real `bnp-gui CHECKPOINT --data DIR` start, recording the thread of every module imported
# for the first time: torch and the engine's modules must load on the engine's thread only.
APP_START = """
import importlib.abc, json, sys, threading
on_gui_thread = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if threading.current_thread() is threading.main_thread():
            on_gui_thread.append(name)
        return None
sys.meta_path.insert(0, Watch())
import bnp_gui.app as appmod
import bnp_gui.mainwindow as mw
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
state = {}
shown = mw.MainWindow.show
def show(window):
    shown(window)
    state["window"] = window
    state["torch_at_show"] = "torch" in sys.modules
    def check():
        s = window.session
        if window.engine.error or (s.preview is not None and s.preview.stage == "full"):
            QApplication.instance().quit()
    timer = QTimer(window)
    timer.timeout.connect(check)
    timer.start(100)
mw.MainWindow.show = show
code = appmod.main(sys.argv[1:])
from bnp_gui.engine import ENGINE_MODULES
s = state["window"].session
print(json.dumps({
    "code": code,
    "engine_error": state["window"].engine.error,
    "torch_at_show": state["torch_at_show"],
    "torch_on_gui_thread": [m for m in on_gui_thread if m.split(".")[0] == "torch"],
    "engine_on_gui_thread": [m for m in on_gui_thread if m in ENGINE_MODULES],
    "scores": sorted(s.scores),
    "checkpoint": s.checkpoint_path,
}))
"""


def test_app_start_imports_torch_only_on_the_engine_thread(tiny_model, tmp_path):
    checkpoint, roles = tiny_model
    data = str(Path(roles.clean).parent)
    out = run_python(APP_START, checkpoint, "--data", data, config=tmp_path)
    assert out["engine_error"] == ""
    assert out["torch_at_show"] is False
    assert out["torch_on_gui_thread"] == []
    assert out["engine_on_gui_thread"] == []
    assert out["checkpoint"] == checkpoint  # the argument waited for the engine, then ran
    assert {"bnp", "ep", "clp"} <= set(out["scores"])  # --data: analysed


def blocked_engine():
    """An Engine whose import waits for ``release.set()`` (torch is loaded in this process)."""
    from bnp_gui.engine import Engine

    release = threading.Event()

    def load() -> None:
        release.wait(60)

    return Engine(load=load), release


def test_queued_demo_opens_once_the_engine_is_ready(qtbot, monkeypatch, tiny_model):
    from bnp_gui.engine import LOADING_TEXT
    from bnp_gui.mainwindow import MainWindow

    checkpoint, roles = tiny_model
    monkeypatch.setattr("bnp_gui.mainwindow.demo_files", lambda: (checkpoint, roles))
    engine, release = blocked_engine()
    window = MainWindow(persist=False, engine=engine)
    qtbot.addWidget(window)
    window.show()
    engine.start()
    window.open_demo(analyze=False)
    s = window.session
    assert window.statusBar().currentMessage() == "The demo opens once the engine has loaded."
    status = [w for w in window.statusBar().findChildren(type(window.device_label))]
    assert any(w.text() == LOADING_TEXT and w.isVisibleTo(window) for w in status)
    qtbot.wait(50)
    assert s.checkpoint_path == "" and not s.is_busy("load") and not s.data
    with qtbot.waitSignal(engine.ready, timeout=60_000):
        release.set()
    qtbot.waitUntil(lambda: s.inspection is not None and bool(s.data), timeout=120_000)
    assert s.checkpoint_path == checkpoint
    assert not any(w.text() == LOADING_TEXT and w.isVisibleTo(window) for w in status)
    assert window.open_as_action.isEnabled()
    window.close()


def test_queued_opens_run_in_order_and_a_failed_engine_says_why(qtbot, tiny_model):
    from bnp_gui.engine import Engine
    from bnp_gui.mainwindow import MainWindow

    checkpoint, roles = tiny_model
    engine, release = blocked_engine()
    window = MainWindow(persist=False, engine=engine)
    qtbot.addWidget(window)
    engine.start()
    ran = []
    engine.when_ready(lambda: ran.append("first"))
    window.open_checkpoint(checkpoint)
    window.open_data(roles)
    engine.when_ready(lambda: ran.append(window.session.is_busy("load")))
    with qtbot.waitSignal(engine.ready, timeout=60_000):
        release.set()
    assert ran == ["first", True]  # the checkpoint's load had started before the last call
    s = window.session
    qtbot.waitUntil(lambda: s.inspection is not None and bool(s.data), timeout=120_000)
    window.close()

    def broken() -> None:
        raise ImportError("libtorch_cpu.so: cannot open shared object file")

    failing = Engine(load=broken)
    other = MainWindow(persist=False, engine=failing)
    qtbot.addWidget(other)
    other.show()
    other.open_demo()
    with qtbot.waitSignal(failing.failed, timeout=60_000):
        failing.start()
    text = other.banner.text()
    assert text.startswith("The engine (PyTorch) could not be loaded: ImportError: libtorch")
    other.open_checkpoint(checkpoint)  # refused with the reason again, not queued forever
    assert other.session.checkpoint_path == "" and not other.session.is_busy("load")
    other.close()
