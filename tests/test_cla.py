"""The clean-label attack: PGD bounds, four-corner trigger, poisoning rules, metadata, CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.attack.cla import PgdSettings, pgd_linf, poison_clean_label
from core.attack.train import add_arguments, attack_description, make_trigger, run
from core.data.images import ImageSet, InputSpec, save_images
from core.data.triggers import FourCornerTrigger, PatchTrigger, Trigger, trigger_from_image
from core.defense.evaluation import evaluate
from core.defense.inspection import Inspection, checkpoint_trigger
from core.errors import DataError
from core.io.checkpoint import load_checkpoint


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


def _tiny_model(channels: int = 1, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, classes),
    ).eval()


def _bars(n: int, seed: int, classes: int = 10) -> ImageSet:
    """16×16 grey images: class k is a bright bar on row k + 2 over faint noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3
    for i, k in enumerate(labels.tolist()):
        x[i, 0, k + 2, 3:13] = 1.0
    return ImageSet((x * 255).round().to(torch.uint8), labels, [f"c{k}" for k in range(classes)])


# ---- the trigger ---------------------------------------------------------------------------


def test_four_corner_placement_exact():
    patch = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    x = torch.full((2, 3, 7, 9), 0.5)
    out = FourCornerTrigger(patch).apply(x)
    rgb = patch.expand(3, 2, 2)
    for y, xx in ((0, 0), (0, 7), (5, 0), (5, 7)):
        assert torch.equal(out[:, :, y : y + 2, xx : xx + 2], rgb.expand(2, 3, 2, 2))
    stamped = torch.zeros(7, 9, dtype=torch.bool)
    for y, xx in ((0, 0), (0, 7), (5, 0), (5, 7)):
        stamped[y : y + 2, xx : xx + 2] = True
    assert (out[:, :, ~stamped] == 0.5).all()  # nothing else touched
    assert (x == 0.5).all()  # input not modified
    with pytest.raises(DataError, match="does not fit"):
        FourCornerTrigger(torch.rand(1, 8, 8)).apply(torch.rand(1, 1, 7, 7))


def test_four_corner_round_trip_and_from_image(tmp_path):
    t = FourCornerTrigger(torch.rand(3, 3, 3))
    d = t.to_dict()
    assert d["kind"] == "four-corner" and "position" not in d
    back = Trigger.from_dict(d)
    assert isinstance(back, FourCornerTrigger)
    x = torch.rand(4, 3, 12, 12)
    assert torch.equal(back.apply(x), t.apply(x))
    import numpy as np

    np.save(tmp_path / "p.npy", np.full((3, 3), 1.0, np.float32))
    img = trigger_from_image(tmp_path / "p.npy", kind="four-corner")
    assert isinstance(img, FourCornerTrigger)
    assert isinstance(make_trigger("cla", channels=1, image_size=(16, 16)), FourCornerTrigger)


# ---- PGD -----------------------------------------------------------------------------------


def test_pgd_stays_in_the_ball_and_raises_the_loss():
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(10, 1, 8, 8)
    y = torch.arange(10) % 4
    spec = InputSpec(1, (8, 8))
    s = PgdSettings(eps=12 / 255, step=2 / 255, steps=7)
    adv = pgd_linf(model, x, y, spec, s, batch_size=4)
    assert (adv - x).abs().max() <= s.eps + 1e-6
    assert (adv - x).abs().max() > 0.5 * s.eps  # it really moved
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training
    # eps 0 (or 0 steps) leaves the images as they are; pixels at 0/1 stay in range
    assert torch.equal(pgd_linf(model, x, y, spec, PgdSettings(0.0, 2 / 255, 3)), x)
    edge = torch.zeros(3, 1, 8, 8)
    out = pgd_linf(model, edge, y[:3], spec, s)
    assert out.min() >= 0 and out.max() <= s.eps + 1e-6


def test_pgd_inside_no_grad_and_through_resize():
    model = _tiny_model(channels=3)
    x = torch.rand(3, 1, 5, 5)  # grey 5×5 images fed to an RGB 8×8 model
    with torch.no_grad():
        adv = pgd_linf(model, x, torch.tensor([0, 1, 2]), InputSpec(3, (8, 8)))
    assert adv.shape == x.shape and (adv - x).abs().max() <= 12 / 255 + 1e-6
    assert not torch.equal(adv, x)


# ---- poisoning -----------------------------------------------------------------------------


def test_only_target_class_poisoned_labels_unchanged():
    data = _bars(200, 0, classes=4)  # 50 per class
    patch = torch.ones(1, 2, 2)
    trigger = FourCornerTrigger(patch)
    model = _tiny_model()
    spec = InputSpec(1, (16, 16))
    said: list[str] = []
    poisoned, index = poison_clean_label(
        data, trigger, 2, 0.1, 0, clean_model=model, spec=spec, log=said.append
    )
    assert len(said) == 1 and "of the 20 perturbed samples correctly" in said[0]
    assert len(index) == 20  # round(0.1 · 200), below the class size
    assert (data.labels[index] == 2).all()
    assert torch.equal(poisoned.labels, data.labels)  # clean label
    original = data.float_images()
    others = torch.ones(len(data), dtype=torch.bool)
    others[index] = False
    assert torch.equal(poisoned.images[others], original[others])
    p = poisoned.images[index]
    for y, x in ((0, 0), (0, 14), (14, 0), (14, 14)):
        assert (p[:, :, y : y + 2, x : x + 2] == 1).all()
    inner = (p - original[index])[:, :, 2:14, 2:14]
    assert inner.abs().max() <= 12 / 255 + 1e-6 and inner.abs().max() > 0

    _, capped = poison_clean_label(data, trigger, 1, 0.5, 0, clean_model=model, spec=spec)
    assert len(capped) == 50 and (data.labels[capped] == 1).all()  # at most the class size

    no_class = data.subset(data.labels != 3)
    with pytest.raises(DataError, match="class 3 has no samples"):
        poison_clean_label(no_class, trigger, 3, 0.1, 0, clean_model=model, spec=spec)


# ---- metadata, evaluation, command line ------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cla")
    save_images(_bars(320, 0), d / "data" / "train")
    save_images(_bars(100, 1), d / "data" / "test")
    return d


def _cla_args(d: Path, out: Path, *extra: str) -> argparse.Namespace:
    return _parse(
        ["--data", str(d / "data"), "--attack", "cla", "--epochs", "1", "--batch-size", "32"]
        + ["--poison-rate", "0.05", "--target", "3", "--trigger-size", "3", "--holdout", "20"]
        + ["--crop-padding", "0", "--no-flip", "--no-split", "--device", "cpu", "--quiet"]
        + ["--out", str(out), *extra]
    )


def test_cli_trains_a_clean_model_first_and_records_the_attack(data_dir, capsys):
    out = data_dir / "cla.pth"
    assert run(_cla_args(data_dir, out)) == 0
    err = capsys.readouterr().err
    clean_out = data_dir / "cla_clean_model.pth"
    assert "no --clean-model given: training a clean" in err and clean_out.is_file()
    assert load_checkpoint(clean_out).metadata.attack is None

    ckpt = load_checkpoint(out)
    attack = ckpt.metadata.attack
    assert attack["kind"] == "cla" and attack["clean_label"] is True
    assert attack["pgd"]["eps"] == pytest.approx(12 / 255) and attack["pgd"]["steps"] == 7
    assert attack["clean_model"] == str(clean_out)
    assert attack["poisoned"] == 15  # round(0.05 · 300), drawn from class 3 only
    assert attack["rate"] == 0.05 and attack["trigger"]["kind"] == "four-corner"
    assert ckpt.metadata.target_label == 3

    # the checkpoint's trigger is the four-corner one, and it is what ASR applies
    trigger = checkpoint_trigger(ckpt)
    assert isinstance(trigger, FourCornerTrigger)
    assert torch.equal(trigger.patch, torch.as_tensor(attack["trigger"]["patch"]))
    inspection = Inspection(ckpt, device="cpu")
    test = _bars(100, 1)
    spec = InputSpec(1, (16, 16))
    got = inspection.evaluate(test)
    want = evaluate(ckpt.model, test, spec, trigger=trigger, target=3)
    assert got.asr == want.asr and got.n_poison == 90
    assert got.asr == pytest.approx(ckpt.metadata.extra["asr"])

    # the window resolves "the checkpoint's trigger" by the same rule
    from bnp_gui.trigger_source import TriggerSource, resolve_trigger

    resolved = resolve_trigger(TriggerSource(kind="checkpoint"), ckpt)
    assert isinstance(resolved.trigger, FourCornerTrigger) and resolved.target == 3


def test_cli_reuses_a_given_clean_model(data_dir, capsys):
    clean = data_dir / "cla_clean_model.pth"
    if not clean.is_file():
        assert run(_cla_args(data_dir, data_dir / "cla.pth")) == 0
    out = data_dir / "cla2.pth"
    assert run(_cla_args(data_dir, out, "--clean-model", str(clean), "--pgd-eps", "8")) == 0
    err = capsys.readouterr().err
    assert "training a clean" not in err and f"clean model {clean}: ACC" in err
    attack = load_checkpoint(out).metadata.attack
    assert attack["clean_model"] == str(clean) and attack["pgd"]["eps"] == pytest.approx(8 / 255)
    assert not (data_dir / "cla2_clean_model.pth").exists()


def test_cli_bad_input_one_line(data_dir, tmp_path, capsys):
    out = tmp_path / "x.pth"
    cases = [
        (["--clean-epochs", "0"], "runs PGD against a clean model: pass --clean-model"),
        (["--clean-model", str(tmp_path / "nope.pth")], "--clean-model"),
        (["--target", "12"], "is not a class"),
    ]
    wrong = tmp_path / "four_classes.pth"
    torch.save(
        {"state_dict": _tiny_resnet_state(classes=4)}, wrong
    )  # a model of another task: 4 classes
    cases.append((["--clean-model", str(wrong)], "has 4 classes, the training data 10"))
    for extra, message in cases:
        assert run(_cla_args(data_dir, out, *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err
        assert len(err.splitlines()) == 1, err
    assert not out.exists()


def test_target_class_without_samples(tmp_path, capsys):
    data = _bars(200, 0)
    keep = data.labels != 5
    save_images(data.subset(keep), tmp_path / "data" / "train")
    save_images(_bars(50, 1), tmp_path / "data" / "test")
    clean = tmp_path / "clean.pth"
    model = _tiny_resnet_state(classes=10)
    torch.save({"state_dict": model}, clean)
    args = _cla_args(tmp_path, tmp_path / "x.pth", "--target", "5", "--clean-model", str(clean))
    assert run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bnp train: ") and "class 5 has no samples" in err[-1]


def test_attack_description_of_a_plain_patch_is_unchanged():
    d = attack_description(PatchTrigger(torch.rand(1, 3, 3)), 0.1, 5)
    assert d["kind"] == "badnets" and "pgd" not in d and "clean_label" not in d


def _tiny_resnet_state(classes: int) -> dict:
    from core.model.architectures import build_model

    torch.manual_seed(0)
    return build_model("cifar_resnet20", classes, 1).state_dict()
