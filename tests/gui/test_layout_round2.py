"""The window on a projector and on a small screen (issue 20, items 5–6): it fits 1280×720 in
normal and presentation mode, presentation shows only full-set numbers in large type, and the
smaller things (scrolling model pane, readable captions in a dark palette, the gallery's rows,
the next step, wording). Tiny models only."""

from __future__ import annotations

import pytest
from gui_helpers import LONG, analyze, open_data, open_model, wait_full_preview
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QScrollArea

from bnp_gui.session import PreviewResult


@pytest.fixture(scope="module")
def _shared_window():
    """One analysed window for this module's tests: they look at it (and put back what they
    toggle), and analysing it again per test was most of their time."""
    held = {}
    yield held
    if "window" in held:
        held["window"].close()  # stops every worker and waits
        held["window"].deleteLater()


@pytest.fixture
def analysed(qtbot, tiny_model, _shared_window):
    """The shared window, analysed, at 1280×720, not presenting, nothing highlighted."""
    from bnp_gui.mainwindow import MainWindow

    window = _shared_window.get("window")
    if window is None:
        window = _shared_window["window"] = MainWindow()
        window.show()
        checkpoint, roles = tiny_model
        window.resize(1280, 720)
        open_model(qtbot, window, checkpoint)
        open_data(qtbot, window, roles)
        analyze(qtbot, window)
    s = window.session
    qtbot.waitUntil(lambda: s.suspects.analysis is not None, timeout=LONG)
    if s.preview is not None and s.preview.stage != "full" and not s.is_busy("preview"):
        s.request_preview(immediate=True)  # a test showed a subset result: measure again
    wait_full_preview(qtbot, s)
    if window.tools.presentation_action.isChecked():
        window.tools.presentation_action.trigger()
    if s.suspects.highlight is not None:
        s.suspects.highlight = None
        window.suspects.refresh()
    window.resize(1280, 720)
    _settle(qtbot)
    return window


def _settle(qtbot):
    for _ in range(5):
        QApplication.processEvents()
        qtbot.wait(20)


def test_the_window_fits_1280x720_normal_and_presenting(qtbot, analysed):
    w = analysed
    _settle(qtbot)
    hint = w.minimumSizeHint()
    assert hint.width() <= 1280 and hint.height() <= 720, hint
    assert w.width() <= 1280 and w.height() <= 720, w.size()
    w.tools.presentation_action.trigger()
    qtbot.waitUntil(lambda: len(w.tools.examples.examples) > 0, timeout=LONG)
    _settle(qtbot)
    hint = w.minimumSizeHint()
    assert hint.width() <= 1280 and hint.height() <= 720, hint
    assert w.width() <= 1280 and w.height() <= 720, w.size()
    w.tools.presentation_action.trigger()
    _settle(qtbot)
    assert w.toolbar.isVisible() and w.thresholds.clear_button.isVisible()


def test_presentation_shows_subset_numbers_small_and_marked(qtbot, analysed):
    w = analysed
    s = w.session
    w.tools.presentation_action.trigger()
    full = s.preview
    label = w.preview.labels[("ACC", "after")]
    assert label.text() == f"{full.after.acc:.2f} %"  # full set: plain, in the large font
    assert label.font().pointSizeF() >= 30
    s.preview_pending = True
    subset = PreviewResult("subset", full.before, full.after, full.pruned, 0.1, limit=64)
    s._preview_ready(subset)
    text = label.text()
    assert f"({full.after.n_clean} samples)" in text and "font-size" in text
    small = float(text.split("font-size:")[1].split("pt")[0])
    assert small < label.font().pointSizeF() / 2
    assert w.preview.labels[("ACC", "before")].text() == f"{s.baseline[None].acc:.2f} %"
    w.tools.presentation_action.trigger()


def test_model_pane_scrolls_instead_of_cutting(analysed):
    dock = analysed.tools.docks["model"]
    area = dock.widget()
    assert isinstance(area, QScrollArea) and area.widget() is analysed.tools.model_pane
    assert area.widgetResizable()


def test_layer_names_fit_their_rows_and_grow_in_presentation(qtbot, analysed):
    from PySide6.QtGui import QFontInfo

    w = analysed
    axis = w.heatmap.plot.getPlotItem().getAxis("left")
    view = w.heatmap.plot.getPlotItem().getViewBox()
    rows = len(w.heatmap.grid.layers)

    def px():
        return QFontInfo(axis.style.get("tickFont")).pixelSize()

    _settle(qtbot)  # 1280×720: short rows, names no taller than a row (they never overlap)
    assert px() <= max(view.height() / rows, 7)
    w.resize(1920, 1080)
    _settle(qtbot)
    normal = px()
    w.tools.presentation_action.trigger()
    _settle(qtbot)
    assert normal < px() <= view.height() / rows  # readable from a distance, still apart
    w.tools.presentation_action.trigger()
    _settle(qtbot)
    assert px() == normal


def test_highlighted_cards_keep_dark_captions_in_a_dark_palette(qtbot, analysed):
    from bnp_gui.palette import dark_palette

    w = analysed
    s = w.session
    app = QApplication.instance()
    old = app.palette()
    app.setPalette(dark_palette())
    try:
        a = s.suspects.analysis
        s.suspects.highlight = a.scores > a.scores.median()  # some cards highlighted
        w.suspects.refresh()
        gallery = w.suspects.gallery
        coloured = [
            gallery.item(i)
            for i in range(gallery.count())
            if gallery.item(i).data(Qt.BackgroundRole) is not None
        ]
        assert coloured
        for item in coloured:
            text, back = item.foreground().color(), item.background().color()
            assert abs(text.lightness() - back.lightness()) > 120
    finally:
        app.setPalette(old)


def test_gallery_shows_more_than_two_thumbnails_a_row(qtbot, analysed):
    gallery = analysed.suspects.gallery
    _settle(qtbot)
    per_row = gallery.viewport().width() // gallery.gridSize().width()
    assert per_row >= 3, (gallery.viewport().width(), gallery.gridSize())


def test_the_next_step_is_said(qtbot, analysed):
    w = analysed
    hint = w.next_step
    assert hint.isVisible()
    assert "Suggest (Ctrl+G)" in hint.text() and "Export (Ctrl+E)" in hint.text()
    assert "Analysis › Repair…" in hint.text()  # the held-out repair is found from here too
    w.tools.presentation_action.trigger()
    assert not hint.isVisible()
    w.tools.presentation_action.trigger()
    assert hint.isVisible()


def test_wording(analysed):
    w = analysed
    title = w.heatmap.plot.getPlotItem().titleLabel.text
    assert "colour = suspicion (z-score)" in title and "suspicion: z-score" not in title
    neurons = w.tools.model_pane.text("neurons")
    assert "computed on CPU" in neurons and "(on CPU (" not in neurons


def test_layer_table_scrolls_to_every_row(qtbot, analysed):
    table = analysed.thresholds.table
    assert table.rowCount() == len(analysed.session.layers)
    table.scrollToBottom()
    _settle(qtbot)
    last = table.rowCount() - 1
    rect = table.visualRect(table.model().index(last, 0))
    assert table.viewport().rect().contains(rect.center())


def test_dark_palette_is_dark(qtbot):
    from bnp_gui.palette import dark_palette

    assert dark_palette().color(QPalette.Window).lightness() < QColor("#808080").lightness()
