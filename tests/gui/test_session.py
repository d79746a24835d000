"""Session logic: masks equal the engine's, stale previews never win, settings persist."""

from __future__ import annotations

import torch
from gui_helpers import LONG, analyze, open_data, open_model, wait_full_preview
from PySide6.QtCore import Qt

from core.defense.inspection import build_mask


def test_cached_mask_equals_engine_mask(qtbot, window, tiny_model):
    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    analyze(qtbot, window)
    insp = s.inspection
    layer, channels = s.layers[3]
    cases = [
        ({"bnp": 2.0}, "union", [], []),
        ({"ep": 1.5, "bnp": 2.0}, "union", [(layer, 0)], [(layer, 1)]),
        ({"ep": 1.0, "bnp": 1.0, "clp": 1.5}, "intersection", [(layer, channels - 1)], []),
        ({"clp": 1.0}, "union", [], [(s.layers[0][0], 2)]),
    ]
    for methods, combine, force, keep in cases:
        ours = build_mask(s.scores, methods, combine, force, keep, dict(s.layers))
        theirs = insp.mask(methods, combine, force, keep)
        assert ours.count() == theirs.count()
        for name in set(ours.gamma) | set(theirs.gamma):
            a = ours.gamma.get(name, torch.zeros(dict(s.layers)[name], dtype=torch.bool))
            b = theirs.gamma.get(name, torch.zeros_like(a))
            assert torch.equal(a, b), name
        assert {k: v for k, v in ours.beta.items() if v.any()}.keys() == {
            k for k, v in theirs.beta.items() if v.any()
        }


def test_stale_preview_never_overwrites_newer(qtbot, window, tiny_model):
    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    analyze(qtbot, window)
    wait_full_preview(qtbot, s)
    seen = []
    s.preview_changed.connect(lambda: seen.append(s.preview and s.preview.pruned))
    for k in (1.0, 1.2, 1.4, 1.6, 4.0):  # faster than any preview can finish
        s.set_threshold("bnp", k)
        s.request_preview(immediate=True)
    wait_full_preview(qtbot, s)
    assert s.preview.pruned == s.total_pruned()  # the numbers are those of k = 4
    assert [p for p in seen if p is not None][-1] == s.total_pruned()


def test_overrides_change_the_mask(qtbot, window, tiny_model):
    s = window.session
    open_model(qtbot, window, tiny_model[0])
    neuron = (s.layers[2][0], 5)
    before = s.total_pruned()
    s.select_neuron(neuron)
    window.prune_action.trigger()
    assert s.override(neuron) == "prune" and s.total_pruned() == before + 1
    assert window.neuron.override_group.checkedButton().property("override") == "prune"
    window.keep_action.trigger()
    assert s.override(neuron) == "keep"
    window.auto_action.trigger()
    assert s.override(neuron) is None and s.total_pruned() == before


def test_settings_persist(qtbot, tiny_model):
    from bnp_gui.mainwindow import MainWindow

    first = MainWindow()
    qtbot.addWidget(first)
    with qtbot.waitSignal(first.session.checkpoint_changed, timeout=LONG):
        first.open_checkpoint(tiny_model[0])
    first.thresholds.spins["clp"].setValue(2.25)
    first.thresholds.intersection.setChecked(True)
    first.resize(640, 480)
    first.close()
    second = MainWindow()
    qtbot.addWidget(second)
    try:
        assert second.session.thresholds["clp"] == 2.25
        assert second.session.combine == "intersection"
        assert second.thresholds.spins["clp"].value() == 2.25
        assert tiny_model[0] in second.recent_files()
        assert second.recent_menu.actions()[0].data() == tiny_model[0]
        assert (second.width(), second.height()) == (640, 480)
    finally:
        second.thresholds.union.setChecked(True)
        second.thresholds.spins["clp"].setValue(3.0)
        second.close()


def test_neuron_plot_and_hover(qtbot, window, tiny_model):
    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    analyze(qtbot, window)
    layer = s.layers[1][0]
    s.select_neuron((layer, 3))
    qtbot.waitUntil(lambda: s.activations is not None, timeout=LONG)
    act = s.activations
    assert act.clean.numel() > 0 and act.triggered is not None
    assert len(window.neuron.gauss_curve.getData()[0]) > 0
    assert window.distribution.current_layer() == layer
    text = window.heatmap.describe((layer, 3))
    assert layer in text and "channel 3" in text and "z " in text


def test_hover_and_click_map_to_the_right_neuron(qtbot, window, tiny_model):
    from PySide6.QtCore import QPointF

    s = window.session
    open_model(qtbot, window, tiny_model[0])  # CLP scores only: enough for the heatmap
    window.resize(1400, 900)
    qtbot.wait(50)
    heatmap = window.heatmap
    vb = heatmap.plot.getPlotItem().getViewBox()
    row, channel = 4, 7
    layer = s.layers[row][0]
    scene_pos = vb.mapViewToScene(QPointF(channel + 0.5, row + 0.5))
    heatmap._mouse_moved(scene_pos)
    text = heatmap.hover_label.text()
    assert text.startswith(f"{layer} · channel {channel}"), text
    assert "CLP score" in text
    widget_pos = heatmap.plot.mapFromScene(scene_pos)
    qtbot.mouseClick(heatmap.plot.viewport(), Qt.LeftButton, pos=widget_pos)
    qtbot.waitUntil(lambda: s.selected == (layer, channel))
    outside = vb.mapViewToScene(QPointF(s.layers[0][1] + 3.5, 0.5))  # right of a narrow row
    heatmap._mouse_moved(outside)
    assert heatmap.hover_label.text().strip() == ""


def test_input_settings_override(qtbot, window, tiny_model):
    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    analyze(qtbot, window)
    s.set_input_spec(mean=(0.5,), std=(0.25,))
    assert s.inspection.spec.mean == (0.5,) and s.inspection.spec.std == (0.25,)
    assert not s.available("bnp")  # statistics under the old normalisation are gone
    s.set_input_spec(std=(0.0,))
    assert "Invalid input settings" in window.banner.text()


def test_dragging_the_threshold_line_sets_k(qtbot, window, tiny_model):
    from bnp_gui.neuron_grid import threshold_value

    s = window.session
    open_model(qtbot, window, tiny_model[0])  # CLP view
    panel = window.distribution
    layer = panel.current_layer()
    value = threshold_value(s.scores["clp"][layer], 1.5, "high")
    panel.line.setValue(value)  # what a drag does, through sigPositionChanged
    assert abs(s.thresholds["clp"] - 1.5) < 1e-3
    assert window.thresholds.spins["clp"].value() == 1.5
    assert "1.50" in panel.line.label.format
