"""What the window is given — a dragged line, a typed or saved threshold, a damaged model — is
either applied as shown or refused with a message; never an "Internal error"."""

from __future__ import annotations

import math

import pytest
import torch
from gui_helpers import open_model
from PySide6.QtCore import QSettings

from bnp_gui.neuron_grid import threshold_value
from bnp_gui.session import K_MAX, K_MIN
from core.defense.inspection import method_flags


def test_dragging_the_line_past_the_range_applies_the_k_shown(qtbot, window, tiny_model):
    s = window.session
    open_model(qtbot, window, tiny_model[0])  # CLP view
    panel = window.distribution
    scores = s.scores["clp"][panel.current_layer()]
    panel.line.setValue(threshold_value(scores, 15.0, "high"))  # what a drag does
    assert s.thresholds["clp"] == K_MAX
    assert window.thresholds.spins["clp"].value() == K_MAX
    assert window.thresholds.sliders["clp"].value() == window.thresholds.sliders["clp"].maximum()
    assert panel.line.label.format == f"k = {K_MAX:.2f}"
    assert panel.line.value() == pytest.approx(threshold_value(scores, K_MAX, "high"))
    expected = method_flags(s.scores, "clp", K_MAX)
    assert all(torch.equal(s.flags["clp"][name], f) for name, f in expected.items())
    panel.line.setValue(threshold_value(scores, -2.0, "high"))  # below the range
    assert s.thresholds["clp"] == K_MIN == window.thresholds.spins["clp"].value()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "2", None])
def test_a_threshold_that_is_not_a_number_is_refused(qtbot, window, tiny_model, bad):
    s = window.session
    open_model(qtbot, window, tiny_model[0])
    before = dict(s.thresholds)
    s.set_threshold("clp", bad)
    if bad == "2":  # text that is a number is a number
        assert s.thresholds["clp"] == 2.0
        return
    assert s.thresholds == before
    assert window.banner.level == "error" and "Threshold k" in window.banner.text()
    assert window.thresholds.spins["clp"].value() == before["clp"]


SAVED = [
    ("nan", 3.0),
    ("inf", 3.0),
    ("-inf", 3.0),
    ("1e999", 3.0),
    ("not a number", 3.0),
    (float("nan"), 3.0),
    (float("inf"), 3.0),
    ("15", K_MAX),
    (-4.0, K_MIN),
    ("2.5", 2.5),
]


@pytest.mark.parametrize(("saved", "applied"), SAVED)
def test_junk_in_the_settings_file_never_stops_the_window(qtbot, saved, applied):
    from bnp_gui.mainwindow import MainWindow

    settings = QSettings()
    for m in ("ep", "bnp", "clp"):
        settings.setValue(f"thresholds/{m}", saved)
    settings.setValue("recent", 42)  # not a list of paths
    settings.sync()
    try:
        window = MainWindow()
        qtbot.addWidget(window)
        window.show()
        for m in ("ep", "bnp", "clp"):
            assert window.session.thresholds[m] == applied
            assert window.thresholds.spins[m].value() == applied
        assert window.recent_files() == []
        window.close()
    finally:
        settings.remove("thresholds")
        settings.remove("recent")
        settings.sync()


@pytest.fixture(scope="module")
def zero_variance_model(tmp_path_factory):
    """A ResNet-20 whose first block's BatchNorm has running variance 0 in every channel but
    one (CLP divides by it) and a negative one in that channel."""
    from core.attack.train import save_checkpoint
    from core.io.metadata import ModelMetadata
    from core.model.architectures import build_model

    torch.manual_seed(0)
    model = build_model("cifar_resnet20", 10, 1).eval()
    with torch.no_grad():
        model.layer1[0].bn1.running_var.zero_()
        model.layer1[0].bn1.running_var[5] = -1.0
    meta = ModelMetadata(arch="cifar_resnet20", num_classes=10, in_channels=1, input_size=(28, 28))
    path = tmp_path_factory.mktemp("zero_var") / "zero_var.pth"
    return str(save_checkpoint(path, model, None, meta))


def test_clp_view_of_a_layer_with_zero_variance_says_why(qtbot, window, zero_variance_model):
    s = window.session
    open_model(qtbot, window, zero_variance_model)
    assert s.view_method == "clp"
    assert "running variance ≤ 0" in s.model_warning and "layer1.0.bn1 ×16" in s.model_warning
    qtbot.waitUntil(lambda: "running variance" in window.banner.text())
    panel = window.distribution
    panel.layer_box.setCurrentIndex(panel.layer_box.findData("layer1.0.bn1"))
    assert "infinite" in panel.info.text() and "variance of 0" in panel.info.text()
    assert not panel.line.isVisible()
    s.select_neuron(("layer1.0.bn1", 3))
    assert "inf" in window.heatmap.describe(("layer1.0.bn1", 3))
    s.set_threshold("clp", 1.0)  # the other layers keep working
    other = s.layers[0][0]
    panel.layer_box.setCurrentIndex(panel.layer_box.findData(other))
    assert panel.line.isVisible() and "flagged" in panel.info.text()
