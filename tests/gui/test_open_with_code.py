"""The window's "Open With Architecture…": any library model by name, or the analyst's own
model code (FILE.py:CALLABLE), and the weight set (model or EMA copy)."""

from __future__ import annotations

import textwrap

import torch
from gui_helpers import LONG

from bnp_gui.dialogs.architecture import ArchitectureDialog

CODE = textwrap.dedent(
    """
    from torch import nn

    def build():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    """
)


def test_dialog_offers_library_models_and_model_code(qtbot, tmp_path):
    dialog = ArchitectureDialog(str(tmp_path / "x.pth"), "", None, forced=True)
    qtbot.addWidget(dialog)
    names = {dialog.combo.itemData(i) for i in range(dialog.combo.count())}
    assert {"resnet18", "maxvit_t"} <= names  # registered by hand, from torchvision's registry
    assert dialog.choice() == {"arch": dialog.combo.itemData(0), "model_code": None,
                               "weights": None}  # fmt: skip
    dialog.use_code.setChecked(True)
    dialog.code.setText("nets.py:build")
    dialog.weight_set.setCurrentIndex(1)
    assert dialog.choice() == {"arch": None, "model_code": "nets.py:build", "weights": "ema"}


def test_window_opens_with_model_code(qtbot, window, tmp_path):
    code = tmp_path / "nets.py"
    code.write_text(CODE)
    namespace: dict = {}
    exec(CODE, namespace)
    path = tmp_path / "odd.pth"
    torch.save(namespace["build"]().state_dict(), path)
    s = window.session
    with qtbot.waitSignal(s.checkpoint_changed, timeout=LONG):
        s.open_checkpoint(str(path), model_code=f"{code}:build")
    assert s.inspection.ckpt.metadata.arch == "build from nets.py (your model code)"
