"""Every panel: renders at its minimum size, exports an image; shortcuts, tooltips, drag and
drop, data-role guessing and the dark palette."""

from __future__ import annotations

import pyqtgraph.exporters
import pytest
from gui_helpers import LONG, open_model
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QColor, QDropEvent, QImage, QKeySequence, QPalette
from PySide6.QtWidgets import QApplication

from bnp_gui.data_roles import guess_roles

PANELS = ("heatmap", "distribution", "neuron", "preview", "thresholds")


@pytest.mark.parametrize("name", PANELS)
def test_panel_minimum_size_and_image(qtbot, window, tiny_model, tmp_path, name):
    open_model(qtbot, window, tiny_model[0])
    panel = getattr(window, name)
    panel.resize(panel.minimumSizeHint())
    assert not panel.grab().isNull()
    plot = getattr(panel, "plot", None)
    if plot is not None:
        out = tmp_path / f"{name}.png"
        pyqtgraph.exporters.ImageExporter(plot.getPlotItem().scene()).export(str(out))
        assert QImage(str(out)).width() > 10


def test_shortcuts_and_tooltips(window):
    assert window.open_action.shortcut() == QKeySequence(QKeySequence.Open)
    assert window.analyze_action.shortcut() == QKeySequence("Ctrl+R")
    assert window.export_action.shortcut() == QKeySequence("Ctrl+E")
    assert window.open_data_action.shortcut() == QKeySequence("Ctrl+D")
    for action in (window.open_action, window.analyze_action, window.export_action):
        assert action.toolTip()
    for m, slider in window.thresholds.sliders.items():
        assert slider.toolTip() and window.thresholds.spins[m].toolTip()


def test_drop_checkpoint_and_folder(qtbot, window, tiny_model):
    checkpoint, roles = tiny_model
    s = window.session

    def drop(path):
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(path)])
        event = QDropEvent(QPoint(10, 10), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
        window.dropEvent(event)

    with qtbot.waitSignal(s.checkpoint_changed, timeout=LONG):
        drop(checkpoint)
    parent = str(__import__("pathlib").Path(roles.clean).parent)
    with qtbot.waitSignal(s.data_changed, timeout=LONG):
        drop(parent)
    assert set(s.data) == {"clean", "train", "test"}


def test_guess_roles(tiny_model, tmp_path):
    _, roles = tiny_model
    parent = __import__("pathlib").Path(roles.clean).parent
    guessed = guess_roles(parent)
    assert guessed == roles
    assert guess_roles(roles.test).clean == roles.test  # a plain data folder: clean samples


def test_plots_follow_dark_palette(qtbot, window):
    app = QApplication.instance()
    old = app.palette()
    dark = QPalette()
    dark.setColor(QPalette.Base, QColor(30, 30, 30))
    dark.setColor(QPalette.Text, QColor(230, 230, 230))
    dark.setColor(QPalette.Window, QColor(45, 45, 45))
    dark.setColor(QPalette.WindowText, QColor(230, 230, 230))
    try:
        app.setPalette(dark)
        qtbot.waitUntil(lambda: window.heatmap.plot.backgroundBrush().color() == QColor(30, 30, 30))
        axis = window.preview.plot.getPlotItem().getAxis("left")
        assert axis.textPen().color() == QColor(230, 230, 230)
    finally:
        app.setPalette(old)
