"""Issue 21's smaller items: MNASNet exports keep torch's layer versions, a trusted pickled
ImageNet model gets its native input size, `bnp info --input-size` is honoured, a BackdoorBench
file with PIL images names them, BNP without running statistics refuses before any statistics."""

import numpy as np
import pytest
import torch
import torchvision

from core.cli import main
from core.errors import UnsafeCheckpointError
from core.io.checkpoint import load_checkpoint
from core.io.export import export_model
from core.model.architectures import build_model


def test_mnasnet_state_dict_export_reloads_in_torchvision(tmp_path):
    model = build_model("mnasnet0_5", 4, 3).eval()
    out = tmp_path / "mnasnet.pth"
    export_model(model, out, fmt="state_dict")
    state = torch.load(out, weights_only=True)
    fresh = torchvision.models.mnasnet0_5(num_classes=4)
    fresh.load_state_dict(state, strict=True)  # refused without the `_metadata` versions
    assert torch.equal(fresh.classifier[1].weight, model.classifier[1].weight)


def test_trusted_pickled_imagenet_model_runs_at_its_native_size(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(torchvision.models.resnet18(num_classes=3), path)
    ckpt = load_checkpoint(path, trust_pickle=True)
    assert ckpt.metadata.arch == "resnet18"
    assert ckpt.metadata.input_size == (224, 224)
    assert not any("first size tried" in n for n in ckpt.notices)


def test_info_honours_input_size(tmp_path, capsys):
    path = tmp_path / "r20.pth"
    torch.save(build_model("cifar_resnet20", 10, 3).state_dict(), path)
    assert main(["info", str(path), "--input-size", "40", "48"]) == 0
    assert "input         3×40×48" in capsys.readouterr().out


def test_backdoorbench_file_with_pil_images_names_them(tmp_path):
    from PIL import Image

    path = tmp_path / "attack_result.pt"
    bd_test = {"index": np.arange(3), "images": [Image.new("RGB", (4, 4))]}
    state = build_model("cifar_resnet20", 10, 3).state_dict()
    torch.save({"model_name": "preactresnet18", "num_classes": 10, "model": state,
                "bd_test": bd_test}, path)  # fmt: skip
    with pytest.raises(UnsafeCheckpointError, match=r"PIL\.Image\.Image") as info:
        load_checkpoint(path)
    assert "numpy._core" not in str(info.value)


def test_bnp_without_running_statistics_refuses_before_statistics(tmp_path, capsys, monkeypatch):
    import core.defense.inspection

    state = build_model("cifar_resnet20", 10, 3).state_dict()
    state = {
        k: v
        for k, v in state.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    path = tmp_path / "no_stats.pth"
    torch.save(state, path)
    clean = tmp_path / "clean"
    clean.mkdir()
    np.save(clean / "data.npy", np.zeros((4, 32, 32, 3), dtype=np.uint8))
    np.save(clean / "labels.npy", np.zeros(4, dtype=np.int64))

    def never(*args, **kwargs):
        raise AssertionError("statistics were computed")

    monkeypatch.setattr(core.defense.inspection.Inspection, "collect", never)
    code = main(["defend", str(path), "--method", "bnp", "--clean", str(clean)])
    assert code == 2
    assert "BNP cannot run" in capsys.readouterr().err
