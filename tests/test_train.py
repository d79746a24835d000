"""``bnp train``: a tiny run that really implants a backdoor, interruption, and the demo asset."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from core.attack.train import add_arguments, attack_description, augment, make_trigger, run, train
from core.data.images import ImageSet, InputSpec, save_images
from core.data.load import load_images
from core.data.triggers import PatchTrigger, Trigger
from core.defense.evaluation import evaluate
from core.defense.inspection import checkpoint_trigger
from core.io.checkpoint import load_checkpoint

DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo"
DEMO_MODEL = DEMO / "fmnist_resnet20_badnets.pth"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


def _bars(n: int, seed: int) -> ImageSet:
    """16×16 grey images: class k is a bright bar on row k + 2 over faint noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3
    for i, k in enumerate(labels.tolist()):
        x[i, 0, k + 2, 1:11] = 1.0
    return ImageSet((x * 255).round().to(torch.uint8), labels, [f"c{k}" for k in range(10)])


def _write_npy(folder: Path, data: ImageSet) -> None:
    save_images(data, folder)  # uint8 N×H×W×C data.npy, labels.npy, class_names.txt


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_augment_shifts_and_flips():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = augment(x, 1, True, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x[0], (1, 1, 1, 1))
    windows = [padded[:, i : i + 4, j : j + 4] for i in range(3) for j in range(3)]
    windows += [w.flip(-1) for w in windows]
    assert all(any(torch.equal(o, w) for w in windows) for o in out)
    assert len({o.flatten().tolist().__str__() for o in out}) > 5  # really random
    assert torch.equal(augment(x, 0, False, torch.Generator()), x)


def test_limit_train_counts_the_samples_trained_on(tmp_path):
    """--limit-train 60 trains on 60 samples; the --holdout 20 come on top (it once trained on
    the limit minus the holdout)."""
    _write_npy(tmp_path / "data" / "train", _bars(200, 0))
    _write_npy(tmp_path / "data" / "test", _bars(20, 1))
    out = tmp_path / "m.pth"
    args = _parse(
        ["--data", str(tmp_path / "data"), "--arch", "cifar_resnet20", "--epochs", "1"]
        + ["--limit-train", "60", "--holdout", "20", "--poison-rate", "0.5"]
        + ["--split-clean", "10", "--split-train", "10", "--split-test", "10"]
        + ["--device", "cpu", "--quiet", "--out", str(out)]
    )
    assert run(args) == 0
    meta = load_checkpoint(out).metadata
    assert meta.attack["poisoned"] == 30  # half of the 60 trained on
    assert meta.extra["holdout"] == 20


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_training_implants_backdoor(tmp_path, seed):
    from PIL import Image

    _write_npy(tmp_path / "data" / "train", _bars(640, 0))
    _write_npy(tmp_path / "data" / "test", _bars(200, 1))
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "white.png")
    out = tmp_path / "m.pth"
    args = _parse(
        ["--data", str(tmp_path / "data"), "--arch", "cifar_resnet20", "--epochs", "2"]
        + ["--batch-size", "16", "--lr", "0.05", "--poison-rate", "0.3", "--target", "3"]
        + ["--trigger-image", str(tmp_path / "white.png"), "--trigger-size", "4"]
        + ["--crop-padding", "0", "--no-flip", "--holdout", "40", "--seed", str(seed)]
        + ["--split-clean", "30", "--split-train", "50", "--split-test", "60"]
        + ["--device", "cpu", "--quiet", "--out", str(out)]
    )
    assert run(args) == 0

    raw = torch.load(out, weights_only=True)  # plain types and tensors only
    assert set(raw) == {"state_dict", "trigger", "meta"} and raw["trigger"].shape == (1, 4, 4)
    ckpt = load_checkpoint(out)
    meta = ckpt.metadata
    assert ckpt.format == "seed" and meta.arch == "cifar_resnet20"
    assert (meta.num_classes, meta.in_channels, meta.input_size) == (10, 1, (16, 16))
    assert meta.target_label == 3 and meta.attack["kind"] == "badnets"
    assert meta.attack["rate"] == 0.3 and meta.attack["poisoned"] == 180
    assert meta.class_names == [f"c{k}" for k in range(10)]
    assert meta.extra["epochs_completed"] == 2 and meta.extra["split_seed"] == seed
    assert meta.extra["asr"] > 50, meta.extra  # chance would be about 10%
    assert meta.extra["clean_acc"] > 50, meta.extra

    assert meta.attack["size"] == 4 and meta.attack["trigger"]["kind"] == "badnets"
    trigger = checkpoint_trigger(ckpt)  # what the inspector will stamp
    assert isinstance(trigger, PatchTrigger) and torch.equal(trigger.patch, raw["trigger"])
    # the numbers stored are the ones the engine measures on the loaded model
    test = load_images(tmp_path / "data", split="test")
    m = evaluate(ckpt.model, test, InputSpec(1, (16, 16)), trigger=trigger, target=3)
    assert m.asr == pytest.approx(meta.extra["asr"]) and m.acc == pytest.approx(
        meta.extra["clean_acc"]
    )

    split = tmp_path / "m_data"
    clean, poisoned, small_test = (
        load_images(split, split=s) for s in ("clean", "train_poisoned", "test")
    )
    assert (len(clean), len(poisoned), len(small_test)) == (30, 50, 60)
    assert clean.images.dtype == torch.uint8 and clean.class_names == meta.class_names
    mask = np.load(split / "train_poisoned" / "poisoned.npy")
    assert mask.sum() == 15  # 30% of 50, in proportion
    assert (poisoned.labels[torch.from_numpy(mask)] == 3).all()
    assert (poisoned.images[torch.from_numpy(mask)][:, :, 12:, 12:] == raw["trigger"].mul(255)
            .round().to(torch.uint8)).all()  # fmt: skip


def test_attack_description_nests_the_trigger():
    blend = make_trigger("blend", channels=3, image_size=(4, 4), seed=1)
    d = attack_description(blend, 0.05, 7)
    assert {k: d[k] for k in ("kind", "rate", "poisoned", "alpha")} == {
        "kind": "blend",
        "rate": 0.05,
        "poisoned": 7,
        "alpha": 0.1,
    }
    assert "size" not in d and Trigger.from_dict(d["trigger"]).to_dict() == blend.to_dict()
    corner = make_trigger("corner-blend", channels=1, image_size=(8, 8), size=2, seed=0)
    d = attack_description(corner, 0.1, 3)
    assert (d["size"], d["alpha"], d["position"]) == (2, 0.2, "bottom-right")
    assert isinstance(Trigger.from_dict(d), type(corner))  # an attack dict is accepted too


def test_interrupt_keeps_last_complete_epoch(tmp_path):
    data = _bars(200, 0)
    out = tmp_path / "m.pth"
    calls = {"n": 0}
    steps_per_epoch = (200 - 20 + 49) // 50

    def interrupt_in_epoch_two() -> bool:
        calls["n"] += 1
        if calls["n"] > steps_per_epoch + 1:
            raise KeyboardInterrupt
        return False

    trig = PatchTrigger(torch.ones(1, 3, 3))
    with pytest.raises(KeyboardInterrupt):
        train(
            data, data.subset(slice(0, 20)), arch="cifar_resnet20", trigger=trig, epochs=3,
            batch_size=50, holdout=20, crop_padding=0, flip=False, out=out, progress=False,
            eval_limit=20, log=lambda s: None, cancel=interrupt_in_epoch_two,
        )  # fmt: skip
    assert load_checkpoint(out).metadata.extra["epochs_completed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]  # no temp file left behind


# ---- the demo asset --------------------------------------------------------------------------

needs_demo = pytest.mark.skipif(not DEMO_MODEL.is_file(), reason="demo asset not trained yet")


@needs_demo
def test_demo_asset_metadata_matches_readme():
    ckpt = load_checkpoint(DEMO_MODEL)
    meta = ckpt.metadata
    readme = (DEMO / "README.md").read_text(encoding="utf-8")
    assert ckpt.format == "seed" and meta.arch == "cifar_resnet20"
    assert (meta.num_classes, meta.in_channels, meta.input_size) == (10, 1, (28, 28))
    assert meta.target_label == 0 and meta.dataset == "fashion-mnist"
    assert meta.attack["kind"] == "badnets" and meta.attack["rate"] == 0.1
    assert meta.attack["position"] == "bottom-right" and ckpt.trigger.shape == (1, 3, 3)
    assert meta.class_names[0] == "T-shirt/top"
    assert meta.extra["split_seed"] == 0 and meta.extra["command"] in readme
    for key, name in (("clean_acc", "ACC"), ("asr", "ASR")):
        value = meta.extra[key]
        assert f"{value:.2f}%" in readme, f"README lacks the {name} {value:.2f}%"
        assert re.search(rf"{name}[^\n]*{value:.2f}%", readme)
    assert meta.extra["clean_acc"] >= 88 and meta.extra["asr"] >= 95
    assert meta.extra["test_samples"] == 10000
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total <= 5 * 2**20


@needs_demo
def test_demo_split_and_backdoor():
    ckpt = load_checkpoint(DEMO_MODEL)
    sizes = {s: len(load_images(DEMO, split=s)) for s in ("clean", "train_poisoned", "test")}
    assert sizes == {"clean": 500, "train_poisoned": 500, "test": 2000}
    mask = np.load(DEMO / "train_poisoned" / "poisoned.npy")
    assert mask.sum() == 50
    test = load_images(DEMO, split="test", limit=200)
    trigger = checkpoint_trigger(ckpt)
    assert torch.equal(trigger.tensor, ckpt.trigger)
    m = evaluate(ckpt.model, test, InputSpec(1, (28, 28)), trigger=trigger, target=0)
    assert m.acc > 80 and m.asr > 90


def test_clean_run_on_a_folder_without_test_split(tmp_path, capsys):
    save_images(_bars(150, 0), tmp_path / "data")
    out = tmp_path / "clean.pth"
    args = _parse(
        ["--data", str(tmp_path / "data"), "--clean", "--epochs", "1", "--batch-size", "32"]
        + ["--holdout", "10", "--crop-padding", "0", "--quiet", "--out", str(out)]
    )
    assert run(args) == 0
    assert "no test split: using 20% of it (30)" in capsys.readouterr().err
    meta = load_checkpoint(out).metadata
    assert meta.target_label is None and meta.attack is None and meta.extra["asr"] is None
    assert meta.extra["train_samples"] == 110 and meta.extra["test_samples"] == 30
    assert torch.load(out, weights_only=True)["trigger"] is None
    assert len(load_images(tmp_path / "clean_data", split="test")) == 30
    assert not np.load(tmp_path / "clean_data" / "train_poisoned" / "poisoned.npy").any()


def test_bad_arguments_exit_with_a_message(tmp_path, capsys):
    args = _parse(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m.pth")])
    assert run(args) == 2
    assert "does not exist" in capsys.readouterr().err
