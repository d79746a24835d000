"""EMA weight sets: the EMA-only layouts open; where the model's weights and an EMA copy are both
there, a notice names both, the default (the model's) is said, and --weights chooses."""

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from core.cli import main
from core.errors import CheckpointError
from core.io.checkpoint import load_checkpoint
from core.model.architectures import build_model


@pytest.fixture(scope="module")
def model_and_ema():
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", 10, 3)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    ema.update_parameters(model)  # the first update copies the model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ema.update_parameters(model)  # the EMA copy now differs from the model
    return model.state_dict(), ema.state_dict()


def test_averaged_model_state_has_the_torchvision_references_layout(model_and_ema):
    _, ema = model_and_ema
    assert "n_averaged" in ema and all(k.startswith("module.") for k in ema if k != "n_averaged")


def test_ema_only_file_opens_and_says_so(tmp_path, model_and_ema):
    _, ema = model_and_ema
    path = tmp_path / "ema_only.pth"
    torch.save({"model_ema": ema, "epoch": 3}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.metadata.arch == "cifar_resnet20"
    assert torch.equal(ckpt.state_dict["conv1.weight"], ema["module.conv1.weight"])
    assert any("only an EMA copy" in n for n in ckpt.notices)


@pytest.mark.parametrize("keys", [("model", "model_ema"), ("state_dict", "state_dict_ema")])
def test_two_weight_sets_are_named_and_chosen(tmp_path, model_and_ema, keys):
    weights, ema = model_and_ema
    plain_key, ema_key = keys
    ema_weights = (
        ema
        if ema_key == "model_ema"
        else {k.removeprefix("module."): v for k, v in ema.items() if k != "n_averaged"}
    )  # timm saves its EMA unwrapped
    path = tmp_path / "both.pth"
    torch.save({plain_key: weights, ema_key: ema_weights, "epoch": 9}, path)
    default = load_checkpoint(path)
    assert torch.equal(default.state_dict["conv1.weight"], weights["conv1.weight"])
    (notice,) = [n for n in default.notices if "two weight sets" in n]
    assert plain_key in notice and ema_key in notice and "default" in notice
    chosen = load_checkpoint(path, weights="ema")
    assert torch.equal(chosen.state_dict["conv1.weight"], ema["module.conv1.weight"])
    assert not torch.equal(chosen.state_dict["conv1.weight"], weights["conv1.weight"])
    assert any("EMA copy is used" in n for n in chosen.notices)


def test_asking_for_a_missing_ema_copy_is_refused(tmp_path, model_and_ema):
    weights, _ = model_and_ema
    path = tmp_path / "plain.pth"
    torch.save(weights, path)
    with pytest.raises(CheckpointError, match="no EMA copy"):
        load_checkpoint(path, weights="ema")


def test_cli_weights_flag(tmp_path, model_and_ema, capsys):
    weights, ema = model_and_ema
    path = tmp_path / "both.pth"
    torch.save({"model": weights, "model_ema": ema}, path)
    assert main(["info", str(path), "--weights", "ema"]) == 0
    out = capsys.readouterr().out
    assert "EMA copy is used" in out
