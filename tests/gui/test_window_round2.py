"""The window never shows stale numbers after a failed open, and warns about a damaged model
when it opens (issue 20, item 1 and the NaN warning). Tiny models only."""

from __future__ import annotations

import torch
from gui_helpers import LONG, analysed, open_data, open_model, wait_full_preview


def _garbage(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)
    return str(bad)


def _wait_error(qtbot, window):
    qtbot.waitUntil(
        lambda: window.banner.level == "error" and window.banner.isVisible(), timeout=LONG
    )


def test_failed_open_keeps_the_preview_it_interrupted(qtbot, window, tiny_model, tmp_path):
    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    wait_full_preview(qtbot, s)
    model = s.inspection
    # hold the engine: the preview for the new threshold waits while a garbage file is opened
    s.runner.engine_lock.acquire()
    try:
        s.set_threshold("clp", 0.5)
        s.set_enabled("clp", True)
        s.request_preview(immediate=True)
        assert s.is_busy("preview")
        window.open_checkpoint(_garbage(tmp_path))
        _wait_error(qtbot, window)
        assert "garbage.pth" in window.banner.text()
        assert s.is_busy("preview")  # not cancelled by the failed open
    finally:
        s.runner.engine_lock.release()
    wait_full_preview(qtbot, s)
    assert s.inspection is model
    assert s.preview.pruned == s.total_pruned() > 0  # the numbers belong to the mask shown
    status = window.preview.status.text()
    assert f"{s.total_pruned()} neurons pruned" in status
    assert "full test set" in status


def test_failed_open_does_not_drop_a_running_analysis(qtbot, window, tiny_model, tmp_path):
    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    finished = []
    s.analysis_finished.connect(lambda: finished.append(True))
    s.runner.engine_lock.acquire()  # the analysis waits for the engine meanwhile
    try:
        s.analyze()
        assert s.is_busy("collect")
        window.open_checkpoint(_garbage(tmp_path))
        _wait_error(qtbot, window)
        assert s.is_busy("collect")
        assert window.progress_bar.isVisible()
    finally:
        s.runner.engine_lock.release()
    qtbot.waitUntil(lambda: bool(finished), timeout=LONG)
    assert s.available("bnp") and s.available("ep")


def test_a_new_model_stops_the_old_analysis_and_says_so(qtbot, window, tiny_model):
    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    messages = []
    s.message.connect(lambda level, text: messages.append(text))
    s.runner.engine_lock.acquire()
    try:
        s.analyze()
        window.open_checkpoint(checkpoint)  # read while the analysis waits
        qtbot.waitUntil(lambda: not s.is_busy("collect"), timeout=LONG)
    finally:
        s.runner.engine_lock.release()
    qtbot.waitUntil(lambda: any("analysis was stopped" in m for m in messages), timeout=LONG)
    assert not window.progress_bar.isVisible() or s.is_busy("load")


def test_a_model_with_nan_weights_warns_when_it_opens(qtbot, window, tiny_model, tmp_path):
    from core.attack.train import save_checkpoint
    from core.defense.inspection import checkpoint_trigger
    from core.io.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_model[0])
    with torch.no_grad():
        next(ckpt.model.parameters()).view(-1)[0] = float("nan")
    path = save_checkpoint(
        tmp_path / "nan.pth", ckpt.model, checkpoint_trigger(ckpt), ckpt.metadata
    )
    open_model(qtbot, window, str(path))
    assert "NaN" in window.session.model_warning
    qtbot.waitUntil(lambda: "NaN" in window.banner.text(), timeout=LONG)
    assert window.banner.level == "warning"


def test_analysis_ends_with_a_neuron_selected(qtbot, window, tiny_model):
    s = analysed(qtbot, window, tiny_model)
    qtbot.waitUntil(lambda: s.selected is not None, timeout=LONG)
    layer, channel = s.selected
    assert layer in dict(s.layers)


def test_every_plot_exports_as_svg(qtbot, window, tiny_model, tmp_path):
    from pyqtgraph.exporters import SVGExporter
    from PySide6.QtSvg import QSvgRenderer

    s = analysed(qtbot, window, tiny_model)
    wait_full_preview(qtbot, s)
    for name in ("heatmap", "distribution", "neuron", "preview"):
        path = tmp_path / f"{name}.svg"
        SVGExporter(getattr(window, name).plot.getPlotItem()).export(str(path))
        assert QSvgRenderer(str(path)).isValid(), name


def test_closing_a_path_becomes_a_line_to_its_start():
    from bnp_gui.svg_export import close_paths_explicitly

    d = "M0,0 L263.5,0 L263.5,178.5 Z M5,5 L6,6 z"
    assert close_paths_explicitly(d).split() == [
        "M0,0", "L263.5,0", "L263.5,178.5", "L0,0", "M5,5", "L6,6", "L5,5"
    ]  # fmt: skip


def test_a_file_read_but_not_opened_restarts_what_it_stopped(
    qtbot, window, tiny_model, monkeypatch
):
    import core.defense.inspection
    from core.errors import BnpError

    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    wait_full_preview(qtbot, s)
    model = s.inspection

    class Unusable:
        def __init__(self, ckpt):
            raise BnpError("no BatchNorm layer to inspect")

    monkeypatch.setattr(core.defense.inspection, "Inspection", Unusable)
    s.runner.engine_lock.acquire()  # the preview waits; the file is read meanwhile
    try:
        s.set_enabled("clp", True)
        s.request_preview(immediate=True)
        window.open_checkpoint(checkpoint)
        qtbot.waitUntil(lambda: not s.is_busy("preview"), timeout=LONG)  # stopped: file read
    finally:
        s.runner.engine_lock.release()
    qtbot.waitUntil(lambda: "no BatchNorm layer" in window.banner.text(), timeout=LONG)
    wait_full_preview(qtbot, s)  # started again for the model still open
    assert s.inspection is model
    assert s.preview.pruned == s.total_pruned()
