"""Untrusted input, round 2, in the window: hostile data, triggers, metadata and session files end
in one banner line; the app lives on and nothing the file chose reaches the screen raw."""

from __future__ import annotations

import json
import os

from gui_helpers import LONG, open_data, open_model

from bnp_gui.data_roles import DataRoles
from bnp_gui.trigger_source import TriggerSource
from tests import corpus_data as corpus


def wait_banner(qtbot, window, level="error") -> str:
    qtbot.waitUntil(
        lambda: window.banner.level == level and window.banner.isVisible(), timeout=LONG
    )
    text = window.banner.text()
    assert "Traceback" not in text and "Internal error" not in text
    return text


def test_a_crashing_cifar_batch_is_a_banner(qtbot, window, tiny_model, tmp_path):
    open_model(qtbot, window, tiny_model[0])
    folder = corpus.cifar_object_dtype(tmp_path / "cifar-10-batches-py").parent
    window.open_data(DataRoles(clean=str(folder)))
    assert "refusing dtype V8" in wait_banner(qtbot, window)
    assert window.session.inspection is not None  # the app lives on
    open_data(qtbot, window, tiny_model[1])  # and still reads good data


def test_a_fifo_trigger_is_refused_at_once(qtbot, window, tiny_model, tmp_path):
    checkpoint, roles = tiny_model
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    fifo = tmp_path / "trigger.png"
    os.mkfifo(fifo)
    window.session.set_trigger_source(TriggerSource(kind="image", path=str(fifo)))
    assert "is a FIFO" in wait_banner(qtbot, window, "warning")


def test_metadata_escape_codes_stay_out_of_the_window(qtbot, window, tmp_path):
    path = corpus.metadata_checkpoint(
        tmp_path / "m.pth", dataset="\x1b]0;pwned\x07<img src=x>", target_label=0
    )
    open_model(qtbot, window, str(path))
    arch = window.tools.model_pane.fields["arch"].text()
    assert "\x1b" not in arch and "\\x1b]0;pwned" in arch


def test_a_hostile_session_is_one_banner(qtbot, window, tmp_path):
    path = tmp_path / "evil.bnpsession"
    path.write_text(
        json.dumps(
            {
                "format": "bnp-inspector-session",
                "version": 1,
                "checkpoint": {"path": str(tmp_path / "m.pth")},
                "input_overrides": {"size": [1e999, 8]},
                "decisions": {"thresholds": {"bnp": "x"}},
            }
        )
    )
    window.tools.open_session(str(path))
    text = wait_banner(qtbot, window)
    assert "input_overrides.size must" in text and "thresholds.bnp must" in text


def test_session_paths_outside_its_folder_are_asked_for(qtbot, window, tmp_path, monkeypatch):
    from bnp_gui.dialogs import session_paths

    asked = []
    monkeypatch.setattr(session_paths, "confirm_outside", lambda *a: asked.append(a[2]) or False)
    (tmp_path / "s").mkdir()
    path = tmp_path / "s" / "away.bnpsession"
    path.write_text(
        json.dumps(
            {
                "format": "bnp-inspector-session",
                "version": 1,
                "checkpoint": {"path": "/etc/shadow"},
            }
        )
    )
    window.tools.open_session(str(path))
    assert "points outside its folder" in wait_banner(qtbot, window, "warning")
    assert asked == [["/etc/shadow"]]
    assert window.session.inspection is None  # nothing was opened
