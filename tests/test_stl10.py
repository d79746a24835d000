"""STL-10 from its official binary files: orientation, labels, splits, folders, bad files."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.load import load_images
from core.data.stl10 import IMAGE_BYTES, STL10_CLASSES, load_stl10, stl10_dir
from core.errors import DataError


def _images(n: int, seed: int) -> np.ndarray:
    """N×3×96×96 uint8 (C, H, W): noise, a bright bar over rows 0-2 of the red channel, and one
    unique pixel per image at (green, row 10, column 70) — asymmetric in H and W."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 100, size=(n, 3, 96, 96), dtype=np.uint8)
    x[:, 0, 0:3, :] = 255
    x[:, 1, 10, 70] = 200 + np.arange(n, dtype=np.uint8) % 50
    return x


def _write(d: Path, split: str, x: np.ndarray, labels: np.ndarray) -> None:
    """The official layout: each image column-major (per channel, column by column)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
    (d / f"{split}_y.bin").write_bytes(labels.astype(np.uint8).tobytes())


@pytest.fixture
def stl(tmp_path):
    """A parent folder holding stl10_binary/ with 12 train, 7 test images and class names."""
    d = tmp_path / "data" / "stl10_binary"
    train_x, test_x = _images(12, 0), _images(7, 1)
    train_y, test_y = np.arange(12) % 10 + 1, np.array([10, 1, 2, 3, 4, 5, 6])
    _write(d, "train", train_x, train_y)
    _write(d, "test", test_x, test_y)
    (d / "class_names.txt").write_text("\n".join(f"name{k}" for k in range(10)) + "\n")
    (d / "unlabeled_X.bin").write_bytes(b"\0" * IMAGE_BYTES)  # optional, ignored
    parent = tmp_path / "data"
    return {"parent": parent, "dir": d, "train": (train_x, train_y), "test": (test_x, test_y)}


def test_orientation_labels_and_names(stl):
    s = load_stl10(stl["dir"])
    x, y = stl["train"]
    assert s.images.dtype == torch.uint8 and tuple(s.images.shape) == (12, 3, 96, 96)
    assert torch.equal(s.images, torch.from_numpy(x))  # rows stay rows
    assert (s.images[:, 0, 0:3, :] == 255).all() and not (s.images[:, 0, 3:, 0] == 255).all()
    assert s.images[3, 1, 10, 70] == 203
    assert torch.equal(s.labels, torch.from_numpy(y.astype(np.int64) - 1))
    assert s.class_names == [f"name{k}" for k in range(10)]
    assert s.size == (96, 96) and s.channels == 3


@pytest.mark.parametrize("which", ["parent", "dir"])
def test_load_images_finds_it_from_parent_or_itself(stl, which):
    train = load_images(stl[which])  # default split: train
    test = load_images(stl[which], split="test")
    assert len(train) == 12 and len(test) == 7
    assert torch.equal(test.images, torch.from_numpy(stl["test"][0]))
    assert test.labels.tolist() == [9, 0, 1, 2, 3, 4, 5]
    assert "(test)" in test.source and "(train)" in train.source
    assert torch.equal(load_images(stl[which], limit=5).images, train.images[:5])


def test_default_class_names_and_detection(tmp_path, stl):
    (stl["dir"] / "class_names.txt").unlink()
    assert load_stl10(stl["dir"]).class_names == STL10_CLASSES
    assert stl10_dir(stl["parent"]) == stl["dir"] and stl10_dir(stl["dir"]) == stl["dir"]
    assert stl10_dir(tmp_path) is None


def test_missing_file(stl):
    (stl["dir"] / "train_y.bin").unlink()
    with pytest.raises(DataError, match="no train_y.bin"):
        load_images(stl["parent"])
    assert len(load_images(stl["parent"], split="test")) == 7  # the other split still reads
    (stl["dir"] / "test_X.bin").unlink()
    with pytest.raises(DataError, match="no test_X.bin"):
        load_images(stl["dir"], split="test")


def test_truncated_and_mismatched_files(stl):
    f = stl["dir"] / "train_X.bin"
    whole = f.read_bytes()
    f.write_bytes(whole[:-1])  # one byte short: not a whole number of images
    with pytest.raises(DataError, match="truncated") as e:
        load_images(stl["parent"])
    assert "\n" not in str(e.value)
    f.write_bytes(whole[:-IMAGE_BYTES])  # whole images, one fewer than labels
    with pytest.raises(DataError, match="11 images of 3×96×96, the labels file has 12"):
        load_images(stl["parent"])


def test_bad_labels_and_split(stl):
    (stl["dir"] / "test_y.bin").write_bytes(bytes([0, 1, 2, 3, 4, 5, 11]))
    with pytest.raises(DataError, match="labels are 1..10"):
        load_images(stl["dir"], split="test")
    with pytest.raises(DataError, match="unlabeled images have no labels"):
        load_stl10(stl["dir"], split="unlabeled")
    (stl["dir"] / "class_names.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="names 2 classes"):
        load_stl10(stl["dir"])


def test_gui_data_roles_open_it(stl):
    from bnp_gui.data_roles import guess_roles, load_roles

    roles = guess_roles(stl["parent"])
    sets = load_roles(roles)
    assert len(sets["clean"]) == 12 and sets["clean"].size == (96, 96)


def test_bnp_train_on_stl10(tmp_path, stl):
    from core.attack.train import add_arguments, run
    from core.io.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "m.pth"
    args = parser.parse_args(
        ["--data", str(stl["parent"]), "--clean", "--epochs", "1", "--batch-size", "4"]
        + ["--holdout", "2", "--no-split", "--device", "cpu", "--quiet", "--out", str(out)]
    )
    assert run(args) == 0
    meta = load_checkpoint(out).metadata
    assert tuple(meta.input_size) == (96, 96) and meta.in_channels == 3
    assert meta.dataset == "stl10" and meta.class_names == [f"name{k}" for k in range(10)]
