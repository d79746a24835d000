"""`bnp info` lists skipped layers with their reason and which methods apply."""

import torch
from torch import nn

from core.cli import main
from core.model.architectures import build_model
from tests.test_backdoorbench import write_attack_result


def test_info_on_a_model_without_batchnorm(tmp_path, capsys):
    path = tmp_path / "convnext.pth"
    torch.save(build_model("convnext_tiny", 10, 3).state_dict(), path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "architecture  convnext_tiny" in out
    assert "LayerNorm" in out and "not a BatchNorm" in out
    for method in ("EP", "BNP", "CLP"):
        assert f"{method:<4} cannot apply: no BatchNorm layer" in out


def test_info_without_running_statistics(tmp_path, capsys):
    model = build_model("cifar_resnet20", 10, 3)
    state = {k: v for k, v in model.state_dict().items() if "running" not in k}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "nostats.pth"
    torch.save(state, path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "notice" in out and "no running statistics" in out
    assert "BNP  cannot apply" in out and "CLP  applies" in out and "EP   applies" in out


def test_info_on_a_backdoorbench_file(tmp_path, capsys):
    path, _ = write_attack_result(tmp_path / "record" / "badnet_demo")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "backdoorbench:attack_result" in out and "preactresnet18" in out
    assert "poisoned test 5 backdoored samples" in out and "target label  0" in out


def test_a_batchnorm_called_twice_is_skipped_with_its_reason():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.bn(self.conv(x)))

    from core.model.graph import discover_layers

    found = discover_layers(Twice().eval(), torch.zeros(1, 3, 8, 8))
    assert found.layers == [] and "called 2 times" in found.skipped[0].reason


def test_defend_measures_the_asr_on_the_files_own_backdoored_samples(tmp_path, capsys):
    import numpy as np

    path, _ = write_attack_result(tmp_path / "record" / "badnet_demo")
    test = tmp_path / "test"
    test.mkdir()
    rng = np.random.default_rng(1)
    np.save(test / "data.npy", rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8))
    np.save(test / "labels.npy", np.arange(6) % 3)
    code = main(["defend", str(path), "--method", "clp", "--test", str(test), "--device", "cpu"])
    assert code == 0
    captured = capsys.readouterr()
    assert "ASR not computed" not in captured.err
    rows = [line.split() for line in captured.out.splitlines() if line.startswith(("none", "clp"))]
    assert len(rows) == 2 and all(row[-1] != "-" for row in rows)  # an ASR in both rows
