"""Every failure is a clear message in the window, never a traceback or a crash, and the app
keeps working afterwards."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import torch
from gui_helpers import LONG, open_data, open_model
from PySide6.QtGui import QImage

from bnp_gui.data_roles import DataRoles
from bnp_gui.trigger_source import TriggerSource


def wait_banner(qtbot, window, level="error"):
    qtbot.waitUntil(
        lambda: window.banner.level == level and window.banner.isVisible(), timeout=LONG
    )
    text = window.banner.text()
    assert "Traceback" not in text
    return text


def test_bad_checkpoint_is_a_message(qtbot, window, tmp_path, tiny_model):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)
    window.open_checkpoint(str(bad))
    text = wait_banner(qtbot, window)
    assert "garbage.pth" in text
    assert window.session.inspection is None
    open_model(qtbot, window, tiny_model[0])  # still works
    assert window.session.inspection is not None


def test_missing_file_is_a_message(qtbot, window, tmp_path):
    window.open_path(str(tmp_path / "nope.pth"))
    assert "does not exist" in wait_banner(qtbot, window)


def test_wrong_data_is_a_message(qtbot, window, tiny_model, tmp_path):
    open_model(qtbot, window, tiny_model[0])
    empty = tmp_path / "empty"
    empty.mkdir()
    window.open_data(DataRoles(clean=str(empty)))
    text = wait_banner(qtbot, window)
    assert "Clean samples" in text
    # images of the wrong shape for the model: the engine conforms or explains
    odd = tmp_path / "odd"
    odd.mkdir()
    np.save(odd / "data.npy", np.zeros((4, 5), dtype=np.float32))
    np.save(odd / "labels.npy", np.zeros(4, dtype=np.int64))
    window.open_data(DataRoles(clean=str(odd)))
    qtbot.waitUntil(lambda: "odd" in window.banner.text() or "data" in window.banner.text())
    assert "Traceback" not in window.banner.text()


def test_analyze_without_data_is_a_message(qtbot, window, tiny_model):
    window.session.analyze()
    assert "Open a checkpoint" in wait_banner(qtbot, window)
    open_model(qtbot, window, tiny_model[0])
    window.session.analyze()
    qtbot.waitUntil(lambda: "clean samples" in window.banner.text())


def test_missing_trigger_is_a_warning(qtbot, window, tiny_model, tmp_path):
    checkpoint, roles = tiny_model
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    window.session.set_trigger_source(TriggerSource(kind="image", path=str(tmp_path / "x.png")))
    text = wait_banner(qtbot, window, "warning")
    assert "x.png" in text
    qtbot.waitUntil(lambda: "No ASR" in window.preview.status.text(), timeout=LONG)
    qtbot.waitUntil(lambda: window.session.preview is not None, timeout=LONG)
    assert window.session.preview.after.asr is None  # ACC only, still measured


def test_worker_bug_is_a_message(qtbot, window, tiny_model, monkeypatch):
    checkpoint, roles = tiny_model
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(window.session.inspection, "collect", broken)
    window.session.analyze()
    text = wait_banner(qtbot, window)
    assert "Analysis failed" in text and "boom" in text
    assert not window.session.is_busy("collect")


def test_unsafe_checkpoint_asks_then_loads(qtbot, window, tiny_model, tmp_path, monkeypatch):
    path = unsafe_checkpoint(tiny_model, tmp_path)
    asked = []
    monkeypatch.setattr(
        "bnp_gui.mainwindow.confirm_trust", lambda parent, p, why: asked.append(p) or False
    )
    window.open_checkpoint(path)
    qtbot.waitUntil(lambda: bool(asked), timeout=LONG)
    text = wait_banner(qtbot, window, "warning")
    assert "not loaded" in text and window.session.inspection is None

    monkeypatch.setattr("bnp_gui.mainwindow.confirm_trust", lambda parent, p, why: True)
    with qtbot.waitSignal(window.session.checkpoint_changed, timeout=LONG):
        window.open_checkpoint(path)
    assert window.session.inspection is not None


def unsafe_checkpoint(tiny_model, folder) -> str:
    from core.io.checkpoint import load_checkpoint

    path = folder / "unsafe.pth"
    # an argparse.Namespace is not on torch's weights_only allow-list: loading needs trust
    state = load_checkpoint(tiny_model[0]).state_dict
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, path)
    return str(path)


def test_screenshot_mode_never_asks_and_never_trusts(qtbot, tiny_model, tmp_path, monkeypatch):
    from bnp_gui.mainwindow import MainWindow

    asked = []
    monkeypatch.setattr(
        "bnp_gui.mainwindow.confirm_trust", lambda parent, p, why: asked.append(p) or True
    )
    window = MainWindow(persist=False, interactive=False)
    qtbot.addWidget(window)
    window.show()
    window.open_checkpoint(unsafe_checkpoint(tiny_model, tmp_path))
    text = wait_banner(qtbot, window, "error")
    assert "unsafe.pth was not loaded (nobody to ask)" in text
    assert asked == [] and window.session.inspection is None
    window.close()


def test_screenshot_of_a_checkpoint_needing_trust_exits_1_with_the_message(tiny_model, tmp_path):
    out = tmp_path / "shot.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "bnp_gui.app", unsafe_checkpoint(tiny_model, tmp_path)]
    result = subprocess.run(
        [*cmd, "--screenshot", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a failed load is grabbed at once; a loaded machine may still take long
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert QImage(str(out)).size().toTuple() == (1440, 900)  # the window with its error banner


def test_slot_bug_reaches_the_banner(window, monkeypatch):
    import sys

    from bnp_gui.app import install_excepthook

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    install_excepthook(window)
    try:
        raise ValueError("bad slot")
    except ValueError:
        sys.excepthook(*sys.exc_info())
    assert "bad slot" in window.banner.text() and "ValueError" in window.banner.text()


def test_command_line_arguments():
    from bnp_gui.app import parse_args

    args = parse_args(["model.pth", "--data", "dir", "--screenshot", "out.png"])
    assert (args.checkpoint, args.data, args.screenshot, args.demo) == (
        "model.pth",
        "dir",
        "out.png",
        False,
    )
    assert parse_args(["--demo"]).demo
