"""The analyst's path end to end: open the demo, collect, move a threshold, get a new ASR,
export, reload the export, same numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gui_helpers import LONG, analyze, open_data, open_model, wait_full_preview

from bnp_gui.mainwindow import MainWindow
from bnp_gui.report import REPORT_HTML, REPORT_JSON

pytestmark = pytest.mark.slow


def test_open_collect_threshold_export_reload(qtbot, window, demo, tmp_path):
    checkpoint, roles = demo
    s = window.session
    open_model(qtbot, window, checkpoint)
    assert s.available("clp") and not s.available("bnp")  # CLP right after loading
    assert window.heatmap.grid is not None and window.heatmap.grid.shape[0] == len(s.layers)
    assert window.device_label.text().startswith("device: CPU")
    open_data(qtbot, window, roles)
    analyze(qtbot, window)
    assert s.available("bnp") and s.available("ep")
    wait_full_preview(qtbot, s)
    first = s.preview
    assert first.before.asr is not None, window.preview.status.text()
    assert window.banner.text() == ""

    # move BNP's threshold through its spin box: new mask, new preview, new numbers
    window.thresholds.spins["bnp"].setValue(1.0)
    assert s.thresholds["bnp"] == 1.0
    wait_full_preview(qtbot, s)
    second = s.preview
    assert second.pruned == s.total_pruned() > first.pruned
    assert second.after.asr is not None
    assert second is not first and second.elapsed > 0
    if first.before.asr > 50:  # a real backdoor (the demo): pruning at k=1 moves the numbers
        assert (second.after.acc, second.after.asr) != (first.after.acc, first.after.asr)
    assert window.preview.value("ASR", "after") == f"{second.after.asr:.2f} %"

    # export: model + report.json + heatmap.png + report.html
    out = tmp_path / "export"
    with qtbot.waitSignal(s.exported, timeout=LONG) as blocker:
        window.export_to(str(out), "seed")
    model = Path(blocker.args[0])
    assert model.is_file()
    for name in (REPORT_JSON, REPORT_HTML, "heatmap.png", "tradeoff.png", "neuron_scores.csv"):
        assert (out / name).is_file(), name
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["pruned"] == second.pruned
    assert report["asr_after"] == pytest.approx(second.after.asr)  # the same mask, full set

    # reload the export in a fresh window: its unpruned numbers are the previewed ones
    other = MainWindow()
    qtbot.addWidget(other)
    try:
        open_model(qtbot, other, str(model))
        open_data(qtbot, other, roles)
        other.session.set_enabled("ep", False)
        other.session.set_enabled("bnp", False)
        other.session.set_enabled("clp", False)
        other.session.request_preview(immediate=True)
        wait_full_preview(qtbot, other.session)
        again = other.session.preview
        assert again.pruned == 0
        assert again.before.acc == second.after.acc
        assert again.before.asr == second.after.asr
    finally:
        other.close()


@pytest.fixture
def real_demo_test_quarter(real_demo, tmp_path, monkeypatch):
    """The bundled demo as the demo button opens it, with every 4th image of its test set (500,
    every class): the preview's passes over the test set were most of this test's CPU."""
    import numpy as np

    checkpoint, roles = real_demo
    test = tmp_path / "test"
    test.mkdir()
    for name in ("data.npy", "labels.npy"):
        np.save(test / name, np.load(Path(roles.test) / name)[::4])
    shutil.copy(Path(roles.test) / "class_names.txt", test / "class_names.txt")
    quarter = roles.with_role("test", str(test))
    monkeypatch.setattr("bnp_gui.mainwindow.demo_files", lambda: (checkpoint, quarter))
    return checkpoint, quarter


def test_demo_mode_opens_and_analyses(qtbot, window, real_demo_test_quarter):
    """End to end on the bundled demo itself: its checkpoint, clean and suspect sets (the other
    window tests use the planted stand-in)."""
    checkpoint, roles = real_demo_test_quarter
    window.demo_action.trigger()  # the toolbar button / menu entry
    assert window.session.auto_analyze
    qtbot.waitUntil(lambda: window.session.available("bnp"), timeout=LONG)
    wait_full_preview(qtbot, window.session)
    assert window.windowTitle().endswith(Path(checkpoint).name)
    assert window.session.roles.test == roles.test  # the demo button's data, analysed


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict"])
def test_export_formats_reload(qtbot, window, tiny_model, tmp_path, fmt):
    from core.io.checkpoint import load_checkpoint

    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    s.set_enabled("clp", True)
    s.set_threshold("clp", 1.0)
    with qtbot.waitSignal(s.exported, timeout=LONG) as blocker:
        window.export_to(str(tmp_path), fmt)
    reloaded = load_checkpoint(blocker.args[0])
    pruned = s.display_mask
    for layer, mask in pruned.gamma.items():
        weight = reloaded.state_dict[f"{layer}.weight"]
        assert bool((weight[mask] == 0).all()), layer
        bias = reloaded.state_dict[f"{layer}.bias"]
        assert bool((bias[pruned.beta.get(layer, mask & False)] == 0).all())
    assert pruned.count() > 0
