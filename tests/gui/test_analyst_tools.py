"""The analyst's window: what is pruned is visible, the neuron table, keyboard, undo, session
files, paper defaults, data-fit warnings, figure/CSV export, model pane, presentation mode,
example strip, and the small wording and contrast fixes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from gui_helpers import LONG, analysed, analyze, open_model, wait_full_preview
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from bnp_gui.data_roles import DataRoles
from bnp_gui.decisions import PAPER_DEFAULTS, capture
from bnp_gui.panels.neuron_table import COLUMNS


def flagged_count(flags) -> int:
    return int(sum(int(f.sum()) for f in flags.values()))


# ---------------------------------------------------------------- 2. what is pruned, visible
def test_marks_separate_flagged_by_view_from_pruned_by_mask(qtbot, window, tiny_model):
    s = analysed(qtbot, window, tiny_model, defaults=True)
    heatmap = window.heatmap
    s.set_threshold("bnp", 1.5)
    s.set_threshold("ep", 1.5)
    assert s.total_pruned() > 0
    # union: every pruned neuron has a ● (those BNP also flags included)
    assert len(heatmap.mask_marks.data) == s.total_pruned()
    assert len(heatmap.flag_marks.data) == flagged_count(s.flags["bnp"])
    # intersection: far fewer pruned than BNP flags, and the marks say so
    s.set_combine("intersection")
    assert len(heatmap.mask_marks.data) == s.total_pruned() < flagged_count(s.flags["bnp"])
    assert len(heatmap.flag_marks.data) == flagged_count(s.flags["bnp"])
    assert "∩" in heatmap.legend.text() and "grey" in heatmap.legend.text()
    # CLP viewed while off: its flags are drawn, but none of them counts as pruned by CLP
    s.set_view_method("clp")
    assert len(heatmap.flag_marks.data) == flagged_count(s.flags["clp"])
    assert len(heatmap.mask_marks.data) == s.total_pruned()
    assert "flagged by CLP" in heatmap.legend.text()


def test_marks_are_readable_on_every_colour(window):
    """Black strokes over a white halo: at least 4.5:1 against one of them on any colour."""
    heatmap = window.heatmap
    pens = {
        heatmap.flag_marks.opts["pen"].color().name(),
        heatmap.flag_halo.opts["pen"].color().name(),
    }
    assert pens == {"#000000", "#ffffff"}

    def luminance(c):
        def lin(v):
            v /= 255
            return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

        return 0.2126 * lin(c.red()) + 0.7152 * lin(c.green()) + 0.0722 * lin(c.blue())

    cmap = heatmap.image.getColorMap()
    for x in np.linspace(0, 1, 21):
        c = cmap.mapToQColor(float(x))
        contrast = max(
            (1.05) / (luminance(c) + 0.05),
            (luminance(c) + 0.05) / 0.05,
        )
        assert contrast >= 4.5, c.name()


def test_trade_off_curve_says_what_it_measures(qtbot, window, tiny_model):
    open_model(qtbot, window, tiny_model[0])
    title = window.preview.plot.getPlotItem().titleLabel.text
    assert "CLP alone" in title and "samples" in title


def test_neuron_table_sorts_filters_and_follows_the_selection(qtbot, window, tiny_model):
    s = analysed(qtbot, window, tiny_model, defaults=True)
    tools = window.tools
    tools.docks["table"].show()
    table = tools.table
    qtbot.waitUntil(lambda: table.model.rowCount() == sum(c for _, c in s.layers))
    # sort by BNP z, highest first: the first row is the most suspicious neuron
    column = COLUMNS.index("BNP z")
    table.view.sortByColumn(column, Qt.DescendingOrder)
    top = table.proxy.index(0, column).data(Qt.UserRole + 1)
    best = max(float(z.max()) for z in s.zscores["bnp"].values())
    assert top == pytest.approx(best, rel=1e-6)
    # table → session
    table.view.setCurrentIndex(table.proxy.index(0, 0))
    layer = table.proxy.index(0, 0).data()
    channel = int(table.proxy.index(0, 1).data())
    assert s.selected == (layer, channel)
    # session (heatmap click) → table
    other = (s.layers[1][0], 4)
    s.select_neuron(other)
    current = table.view.currentIndex()
    assert (current.siblingAtColumn(0).data(), int(current.siblingAtColumn(1).data())) == other
    # decisions show up in the table
    s.set_override(other, "keep")
    current = table.view.currentIndex()  # an index kept across a model change may dangle
    assert current.siblingAtColumn(len(COLUMNS) - 1).data() == "kept"
    # find layer by name
    tools.find_action.trigger()
    assert table.find.hasFocus() or tools.docks["table"].isVisible()
    name = s.layers[5][0]
    table.find.setText(name)
    assert table.proxy.rowCount() == s.layers[5][1]
    assert all(name in table.proxy.index(r, 0).data() for r in range(table.proxy.rowCount()))
    # copy rows to the clipboard
    table.view.selectAll()
    table.copy_rows()
    text = QApplication.clipboard().text()
    assert text.splitlines()[0].split("\t") == list(COLUMNS)
    assert len(text.splitlines()) == 1 + s.layers[5][1]


def test_arrow_keys_move_the_selection(qtbot, window, tiny_model):
    s = window.session
    open_model(qtbot, window, tiny_model[0])
    first, second = s.layers[0][0], s.layers[1][0]
    s.select_neuron((first, 0))
    plot = window.heatmap.plot
    qtbot.keyClick(plot, Qt.Key_Right)
    assert s.selected == (first, 1)
    qtbot.keyClick(plot, Qt.Key_Down)
    assert s.selected == (second, 1)
    qtbot.keyClick(plot, Qt.Key_Left)
    qtbot.keyClick(plot, Qt.Key_Left)  # clamps at channel 0
    assert s.selected == (second, 0)
    qtbot.keyClick(plot, Qt.Key_Up)
    assert s.selected == (first, 0)


# ---------------------------------------------------------------- 3. undo and keep
def test_undo_redo_of_thresholds_combination_and_overrides(qtbot, window, tiny_model):
    s = analysed(qtbot, window, tiny_model, defaults=True)
    undo, redo = window.tools.undo_action, window.tools.redo_action
    start = capture(s)
    window.thresholds.spins["bnp"].setValue(2.0)
    window.thresholds.spins["bnp"].setValue(1.8)  # one drag: merged into one step
    window.thresholds.intersection.setChecked(True)
    neuron = (s.layers[2][0], 3)
    s.select_neuron(neuron)
    window.prune_action.trigger()
    assert s.override(neuron) == "prune" and s.combine == "intersection"
    assert window.tools.history.stack.count() == 3
    undo.trigger()
    assert s.override(neuron) is None
    undo.trigger()
    assert s.combine == "union" and window.thresholds.union.isChecked()
    undo.trigger()
    assert capture(s) == start and window.thresholds.spins["bnp"].value() == 3.0
    assert s.display_mask.count() == s.current_mask().count()
    redo.trigger()
    redo.trigger()
    redo.trigger()
    assert s.thresholds["bnp"] == 1.8 and s.combine == "intersection"
    assert s.override(neuron) == "prune"
    assert s.total_pruned() == s.current_mask().count()


def test_session_file_reopens_to_the_same_numbers(qtbot, window, tiny_model, tmp_path, monkeypatch):
    from bnp_gui.dialogs import session_paths
    from bnp_gui.mainwindow import MainWindow

    asked = []  # the model lies outside the session's folder: the user is asked first
    monkeypatch.setattr(session_paths, "confirm_outside", lambda *a: asked.append(a[2]) or True)

    s = analysed(qtbot, window, tiny_model, defaults=True)
    s.set_input_spec(mean=(0.5,), std=(0.25,))
    analyze(qtbot, window)
    s.set_threshold("bnp", 1.7)
    s.set_combine("intersection")
    s.set_override((s.layers[3][0], 2), "prune")
    s.set_override((s.layers[4][0], 0), "keep")
    s.request_preview(immediate=True)
    wait_full_preview(qtbot, s)
    saved = window.tools.save_session(str(tmp_path / "case"))
    assert saved.name == "case.bnpsession"
    content = json.loads(saved.read_text())
    assert content["input_overrides"] == {"mean": [0.5], "std": [0.25]}

    other = MainWindow()
    qtbot.addWidget(other)
    try:
        o = other.session
        other.tools.open_session(str(saved))
        qtbot.waitUntil(lambda: o.available("bnp") and o.available("ep"), timeout=LONG)
        wait_full_preview(qtbot, o)
        assert capture(o) == capture(s)
        assert o.inspection.spec == s.inspection.spec
        assert o.display_mask.neurons() == s.display_mask.neurons()
        assert (o.preview.after.acc, o.preview.after.asr) == (
            s.preview.after.acc,
            s.preview.after.asr,
        )
        assert o.roles == s.roles
        assert asked and tiny_model[0] in asked[0]
    finally:
        other.close()


def test_broken_session_file_is_a_message(window, tmp_path):
    bad = tmp_path / "bad.bnpsession"
    bad.write_text("{not json")
    window.tools.open_session(str(bad))
    assert "not a session file" in window.banner.text()


def test_demo_and_reset_start_from_the_paper_defaults(qtbot, tiny_model, monkeypatch):
    from bnp_gui.mainwindow import MainWindow

    first = MainWindow()
    qtbot.addWidget(first)
    first.session.set_threshold("bnp", 2.2)
    first.session.set_combine("intersection")
    first.session.set_enabled("clp", True)
    first.close()  # saved into the settings
    monkeypatch.setattr("bnp_gui.mainwindow.demo_files", lambda: tiny_model)
    second = MainWindow()
    qtbot.addWidget(second)
    try:
        assert second.session.thresholds["bnp"] == 2.2  # settings restored for own models
        second.open_demo(analyze=False)
        assert capture(second.session) == PAPER_DEFAULTS
        assert second.thresholds.spins["bnp"].value() == 3.0
        second.session.set_threshold("ep", 1.0)
        second.tools.reset_action.trigger()
        assert capture(second.session) == PAPER_DEFAULTS
        second.tools.undo_action.trigger()  # the reset is one undoable step
        assert second.session.thresholds["ep"] == 1.0
    finally:
        second.tools.reset_action.trigger()
        second.close()


# ---------------------------------------------------------------- 4. data that does not fit
def test_unsuitable_data_is_a_warning(qtbot, window, tiny_model, tmp_path):
    open_model(qtbot, window, tiny_model[0])
    folder = tmp_path / "rgb"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "data.npy", rng.integers(0, 256, (20, 48, 64, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", rng.integers(0, 100, 20).astype(np.int64))
    window.open_data(DataRoles(clean=str(folder)))
    qtbot.waitUntil(lambda: window.banner.level == "warning" and window.banner.isVisible())
    text = window.banner.text()
    assert "3-channel images converted to the model's 1" in text
    assert "48×64 images resized to the model's 16×16" in text
    assert "but the model has 10 classes (0–9)" in text
    assert "only 20 samples" in text


# ---------------------------------------------------------------- 5. figures and data out
def test_plot_menus_export_and_scores_csv(qtbot, window, tiny_model, tmp_path):
    s = window.session
    open_model(qtbot, window, tiny_model[0])
    for panel in (window.distribution, window.neuron, window.preview):
        assert panel.plot.getPlotItem().getViewBox().menuEnabled()
        assert panel.plot.scene().contextMenu  # pyqtgraph's "Export..." entry
    menu = window.heatmap._override_menu((s.layers[0][0], 0))
    assert any("Export figure" in a.text() for a in menu.actions())
    out = tmp_path / "scores.csv"
    window.tools.export_csv(str(out))
    rows = list(csv.reader(out.open()))
    assert rows[0][:4] == ["layer", "channel", "ep_score", "ep_z"]
    assert len(rows) == 1 + sum(c for _, c in s.layers)
    layer, channel = rows[1][0], int(rows[1][1])
    clp = float(rows[1][COLUMNS.index("CLP score")])
    assert clp == pytest.approx(float(s.scores["clp"][layer][channel]), rel=1e-4)


# ---------------------------------------------------------------- 6. story for an audience
def test_model_pane_presentation_mode_and_examples(qtbot, window, tiny_model):
    tools = window.tools
    assert "Open or drop a checkpoint" in tools.model_pane.hint.text()
    s = analysed(qtbot, window, tiny_model, defaults=True)
    pane = tools.model_pane
    assert pane.text("arch").startswith("cifar_resnet20")
    assert pane.text("input") == "1×16×16"
    assert pane.text("target").startswith("0")
    qtbot.waitUntil(lambda: not pane.trigger_image.pixmap().isNull(), timeout=LONG)
    wait_full_preview(qtbot, s)
    qtbot.waitUntil(lambda: len(tools.examples.examples) > 0, timeout=LONG)
    example = tools.examples.examples[0]
    assert example.label != s.trigger.target
    assert "before:" in tools.examples.status.text() or tools.examples.grid.count() > 0

    number = window.preview.labels[("ASR", "after")]
    normal = number.font().pointSizeF()
    window.tools.presentation_action.trigger()
    assert number.font().pointSizeF() > 2 * normal
    assert not window.thresholds.table.isVisible()
    assert tools.docks["examples"].isVisible() and tools.docks["model"].isVisible()
    assert pane.trigger_image.width() > 100
    window.tools.presentation_action.trigger()
    assert number.font().pointSizeF() == normal and window.thresholds.table.isVisible()


def test_before_numbers_stay_fixed_once_measured_on_the_full_set(qtbot, window, tiny_model):
    s = analysed(qtbot, window, tiny_model, defaults=True)
    wait_full_preview(qtbot, s)
    full = window.preview.value("ACC", "before")
    shown = []
    s.preview_changed.connect(lambda: shown.append(window.preview.value("ACC", "before")))
    s.set_threshold("bnp", 1.2)
    wait_full_preview(qtbot, s)
    assert any(p for p in shown)
    assert set(v for v in shown if v != "–") == {full}


# ---------------------------------------------------------------- 7. smaller items
def test_mnemonics_are_unique_in_the_main_window(window):
    from PySide6.QtWidgets import QAbstractButton

    letters = [a.text().split("&")[1][0].lower() for a in window.menuBar().actions()]
    for button in window.findChildren(QAbstractButton):
        if "&" in button.text() and button.isVisibleTo(window):
            letters.append(button.text().split("&")[1][0].lower())
    assert len(letters) == len(set(letters)), letters


def test_wording(qtbot, window, tiny_model):
    from bnp_gui.report import plural
    from bnp_gui.trigger_source import TriggerSource, resolve_trigger
    from core.io.checkpoint import load_checkpoint

    assert plural(1, "neuron") == "1 neuron" and plural(2, "neuron") == "2 neurons"
    ckpt = load_checkpoint(tiny_model[0])
    ckpt.trigger = None
    ckpt.metadata.attack = None
    with pytest.raises(Exception, match="Analysis › Trigger Source"):
        resolve_trigger(TriggerSource(), ckpt)
    open_model(qtbot, window, tiny_model[0])
    for panel in (window.distribution, window.neuron, window.preview, window.heatmap):
        for name in ("left", "bottom"):
            assert not panel.plot.getPlotItem().getAxis(name).autoSIPrefix, (panel, name)


def test_banner_follows_a_dark_palette(qtbot, window):
    from bnp_gui.palette import dark_palette

    app = QApplication.instance()
    old = app.palette()
    try:
        app.setPalette(dark_palette())
        qtbot.wait(10)
        window.show_message("warning", "dark")
        background = window.banner.palette().color(QPalette.Window)
        style = window.banner.styleSheet()
        assert "#332701" in style  # the dark warning colours
        assert "#ffda6a" in window.banner.close_button.styleSheet()  # dismiss button visible
        assert background is not None
    finally:
        app.setPalette(old)
    window.show_message("warning", "light")
    assert "#fff3cd" in window.banner.styleSheet()
    assert QColor("#664d03").name() in window.banner.close_button.styleSheet()


def test_a_click_does_not_wait_behind_the_curve_and_a_layer_is_computed_once(
    qtbot, window, tiny_model
):
    s = analysed(qtbot, window, tiny_model, defaults=True)
    wait_full_preview(qtbot, s)
    qtbot.waitUntil(lambda: not s.is_busy("curve"), timeout=LONG)
    s.curves.clear()
    s._start_curve()
    assert s.is_busy("curve")
    s._layer_values.clear()  # the neuron selected after the analysis computed its layer
    layer = s.layers[4][0]
    s.select_neuron((layer, 2))
    assert not s.is_busy("curve")  # it steps aside for the click ...
    qtbot.waitUntil(lambda: s.activations is not None, timeout=LONG)
    qtbot.waitUntil(lambda: s.is_busy("curve") or len(s.curves.get(s.view_method, [])) > 0)
    # ... and resumes. The next channel of the same layer needs no model run at all:
    s.select_neuron((layer, 3))
    assert s.activations is not None and s.activations.channel == 3
    assert not s.is_busy("neuron")
    lanes = ("curve", "preview", "examples", "neuron")
    qtbot.waitUntil(lambda: not any(s.is_busy(lane) for lane in lanes), timeout=LONG)
    expected = s.inspection.layer_activations(s.data["clean"], layer, 3, limit=128)
    assert torch.allclose(s.activations.clean, expected, atol=1e-5)
