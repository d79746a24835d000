"""While a checkpoint loads the window can always be closed, and Cancel / Esc stop the loading:
the session hands the loader its job's cancel check (the child-process loader kills its reader
when asked)."""

from __future__ import annotations

import threading
import time

import pytest
from gui_helpers import LONG, open_model

from core.errors import Cancelled

BACKSTOP_S = 60  # a loader nobody stops gives up after this, so a failing test still ends


class EndlessLoader:
    """A stand-in for a file whose parsing never ends (a hash bomb, an endless __setstate__),
    with the loader's keyword-only ``cancel``: it runs until that says stop."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.saw_cancel = threading.Event()

    def __call__(self, path, *, arch=None, trust_pickle=False, cancel=None, **_):
        self.started.set()
        deadline = time.monotonic() + BACKSTOP_S
        while time.monotonic() < deadline:
            if cancel is not None and cancel():
                self.saw_cancel.set()
                raise Cancelled("cancelled")
            time.sleep(0.01)
        raise AssertionError("nobody stopped the loader")


@pytest.fixture
def endless(monkeypatch):
    loader = EndlessLoader()
    from core.io import checkpoint

    loader.real = checkpoint.load_checkpoint
    monkeypatch.setattr("core.io.checkpoint.load_checkpoint", loader)
    return loader


def test_closing_during_a_load_stops_the_loader(qtbot, endless, tmp_path, capfd, qtlog):
    from bnp_gui.mainwindow import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    window.open_checkpoint(str(tmp_path / "never_ends.pth"))
    qtbot.waitUntil(endless.started.is_set, timeout=LONG)
    assert window.cancel_button.isVisible()  # the user sees something is going on
    window.close()
    assert endless.saw_cancel.is_set()
    assert not window.session.runner._alive  # every thread joined
    qtbot.wait(50)
    _, err = capfd.readouterr()
    assert "Destroyed while thread" not in err
    assert not any("Destroyed while thread" in r.message for r in qtlog.records)


def test_cancel_stops_a_load_and_the_window_keeps_working(
    qtbot, window, endless, tiny_model, monkeypatch
):
    s = window.session
    window.open_checkpoint("never_ends.pth")
    qtbot.waitUntil(endless.started.is_set, timeout=LONG)
    assert window.cancel_action.isEnabled()
    window.analyze_action.trigger()  # queued for the model being opened ...
    with qtbot.waitSignal(s.busy_changed, timeout=LONG, check_params_cb=lambda t, b: not b):
        window.cancel_button.click()
    qtbot.waitUntil(endless.saw_cancel.is_set, timeout=LONG)
    assert not s.is_busy("load") and s.inspection is None
    assert not window.progress_bar.isVisible() and not window.cancel_button.isVisible()
    assert "cancelled" in window.statusBar().currentMessage().lower()
    assert window.banner.text() == ""  # cancelling is not an error
    # ... and forgotten with it; the window opens the next checkpoint as usual
    monkeypatch.setattr("core.io.checkpoint.load_checkpoint", endless.real)
    open_model(qtbot, window, tiny_model[0])
    qtbot.wait(200)
    assert s.inspection is not None and not s.is_busy("collect")


def _corpus():
    try:
        from tests import corpus_checkpoints
    except ImportError:
        pytest.skip("the hostile-checkpoint corpus (tests/corpus_checkpoints.py) is not here")
    return corpus_checkpoints


@pytest.mark.parametrize("name", ["torchscript_endless_trusted"])  # hash bombs: refused at once
def test_window_lives_and_closes_while_a_hostile_file_parses(qtbot, tmp_path, name):
    """Real files whose parsing never ends (the corpus's HANGS): the event loop keeps running and
    closing the window stops the reader (no wait for the loader's wall-clock limit)."""
    from PySide6.QtCore import QTimer

    from bnp_gui.mainwindow import MainWindow

    writer, trust = {n: (w, t) for n, w, t in _corpus().HANGS}[name]
    path = writer(tmp_path)
    window = MainWindow(persist=False, interactive=False)  # never a modal question here
    qtbot.addWidget(window)
    window.show()
    s = window.session
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(1))
    window.open_checkpoint(str(path), trust_pickle=trust)
    timer.start()
    # the event loop runs while the file is parsed (a frozen one never ticks; the first ticks
    # can wait for a garbage collection on a loaded machine, hence no time limit on them) ...
    qtbot.waitUntil(lambda: len(ticks) >= 20, timeout=LONG)
    timer.stop()
    assert s.is_busy("load"), window.banner.text()  # ... and the parse goes on: a real hang
    window.close()
    assert not s.runner._alive
