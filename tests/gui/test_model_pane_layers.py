"""The model pane lists what `bnp info` lists: skipped layers grouped by reason, which methods
apply and why not, and the file's notices (here a trusted module of an unregistered class with a
BatchNorm1d the engine skips and a BatchNorm2d without running statistics)."""

from __future__ import annotations

import torch
from gui_helpers import LONG
from torch import nn


class OddNet(nn.Module):
    """Unregistered: conv→BN(no running stats)→conv→BN→pool→BatchNorm1d (skipped)→linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4, track_running_stats=False)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.feat_bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.feat_bn(x.mean((2, 3))))


def test_pane_lists_skipped_layers_methods_and_notices(qtbot, window, tmp_path):
    path = tmp_path / "oddnet.pth"
    torch.save(OddNet().eval(), path)
    s = window.session
    with qtbot.waitSignal(s.checkpoint_changed, timeout=LONG):
        s.open_checkpoint(str(path), trust_pickle=True)
    pane = window.tools.model_pane
    assert "OddNet" in pane.text("arch")
    assert [name for name, _ in s.layers] == ["bn1", "bn2"]

    skipped = pane.text("skipped")
    assert "1 BatchNorm1d (feat_bn)" in skipped
    assert "normalises 1-D features" in skipped

    methods = pane.text("methods").split("<br>")
    assert methods[0].startswith("EP applies")
    assert methods[1].startswith("BNP applies") and "1 of 2 layers" in methods[1]
    assert methods[2].startswith("CLP applies") and "v_c = 1" in methods[2]

    notices = pane.text("notices")
    assert "own module (OddNet)" in notices
    assert "1 BatchNorm layer(s) carry no running statistics" in notices
    assert "BNP is unavailable there" in notices

    window.tools.presentation_action.trigger()  # an audience does not need the details
    assert not pane.fields["skipped"].isVisible()
    window.tools.presentation_action.trigger()
    assert pane.fields["skipped"].isVisible()
