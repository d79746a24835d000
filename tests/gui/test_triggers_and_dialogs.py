"""Trigger sources for ASR (checkpoint, image, poisoned folder) and the architecture chooser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gui_helpers import LONG, open_data, open_model, wait_full_preview
from PySide6.QtGui import QColor, QImage

from bnp_gui.dialogs.open_data import OpenDataDialog
from bnp_gui.trigger_source import TriggerSource


def _preview_with(qtbot, window, source):
    s = window.session
    with qtbot.waitSignal(s.trigger_changed, timeout=LONG):
        s.set_trigger_source(source)
    s.request_preview(immediate=True)
    wait_full_preview(qtbot, s)
    assert window.banner.text() == "", window.banner.text()
    return s.preview


def test_trigger_image_and_poisoned_folder(qtbot, window, tiny_model, tmp_path):
    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    wait_full_preview(qtbot, s)
    own = s.preview
    assert own.before.asr is not None  # the checkpoint's own trigger

    image = QImage(3, 3, QImage.Format_RGB32)
    image.fill(QColor("white"))
    png = tmp_path / "patch.png"
    image.save(str(png))
    patched = _preview_with(qtbot, window, TriggerSource(kind="image", path=str(png), target=0))
    assert patched.before.asr is not None and patched.before.n_poison > 0

    # a folder of already-poisoned samples: the test images with the checkpoint's trigger
    from core.data.load import load_images

    test = load_images(roles.test)
    x = s.inspection.trigger.apply(test.images.float() / 255)
    folder = tmp_path / "poisoned"
    folder.mkdir()
    np.save(folder / "data.npy", (x * 255).round().to(torch.uint8).numpy())
    np.save(folder / "labels.npy", test.labels.numpy())
    poisoned = _preview_with(
        qtbot, window, TriggerSource(kind="folder", path=str(folder), target=0)
    )
    assert poisoned.before.asr == pytest.approx(own.before.asr, abs=2.0)

    none = _preview_with(qtbot, window, TriggerSource(kind="none"))
    assert none.before.asr is None


def test_architecture_chooser_on_mismatch(qtbot, window, tiny_model, tmp_path, monkeypatch):
    from core.io.checkpoint import load_checkpoint

    state = dict(load_checkpoint(tiny_model[0]).state_dict)
    state.pop("linear.bias")
    bad = tmp_path / "odd.pth"
    torch.save({"state_dict": state}, bad)
    shown = []

    class Refuse:
        def __init__(self, path, why, parent):
            shown.append(why)

        def exec(self):
            return 0

    monkeypatch.setattr("bnp_gui.mainwindow.ArchitectureDialog", Refuse)
    window.open_checkpoint(str(bad))
    qtbot.waitUntil(lambda: bool(shown) and window.banner.isVisible(), timeout=LONG)
    assert "odd.pth" in window.banner.text()
    assert window.session.inspection is None


def test_open_data_dialog_fills_roles(qtbot, tiny_model):
    _, roles = tiny_model
    dialog = OpenDataDialog(type(roles)(), TriggerSource(), None)
    qtbot.addWidget(dialog)
    dialog.set_parent_folder(str(__import__("pathlib").Path(roles.clean).parent))
    assert dialog.roles() == roles
    assert dialog.trigger_source().kind == "checkpoint"


def test_four_corner_placement_builds_the_clean_label_trigger(qtbot, tmp_path):
    from bnp_gui.dialogs.trigger import TriggerWidget
    from bnp_gui.trigger_source import resolve_trigger
    from core.data.triggers import FourCornerTrigger

    image = QImage(3, 3, QImage.Format_RGB32)
    image.fill(QColor("white"))
    png = tmp_path / "patch.png"
    image.save(str(png))
    widget = TriggerWidget(TriggerSource(kind="image", path=str(png), target=0))
    qtbot.addWidget(widget)
    assert widget.source().placement == "patch"
    index = widget.placement.findData("four-corner")
    assert index >= 0 and "four corners" in widget.placement.itemText(index)
    widget.placement.setCurrentIndex(index)
    source = widget.source()
    assert source.placement == "four-corner" and "four corners" in source.describe()
    assert not widget.alpha.isEnabled()  # α is for blends only
    # a dialog opened on a four-corner source shows it again
    again = TriggerWidget(source)
    qtbot.addWidget(again)
    assert again.placement.currentData() == "four-corner"

    resolved = resolve_trigger(source, None)
    assert isinstance(resolved.trigger, FourCornerTrigger) and resolved.target == 0
    stamped = resolved.trigger.apply(torch.zeros(1, 3, 12, 12))[0]
    near, far = slice(0, 3), slice(-3, None)
    for rows, cols in ((near, near), (near, far), (far, near), (far, far)):  # all four corners
        assert torch.all(stamped[:, rows, cols] == 1.0)
    assert stamped[:, 3:-3, 3:-3].abs().sum() == 0
