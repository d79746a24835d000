"""First smoke test: open, analyze, preview."""

from bnp_gui.mainwindow import MainWindow


def test_open_analyze_preview(qtbot, tiny_model):
    path, roles = tiny_model
    window = MainWindow()
    qtbot.addWidget(window)
    s = window.session
    with qtbot.waitSignal(s.checkpoint_changed, timeout=30000):
        window.open_checkpoint(path)
    assert "clp" in s.scores
    with qtbot.waitSignal(s.data_changed, timeout=30000):
        window.open_data(roles)
    with qtbot.waitSignal(s.analysis_finished, timeout=60000):
        s.analyze()
    assert {"bnp", "ep", "clp"} <= set(s.scores)
    qtbot.waitUntil(lambda: s.preview is not None and s.preview.stage == "full", timeout=60000)
    assert window.banner.text() == "", window.banner.text()
    window.close()
