"""Readers of every data format users have, and the InputSpec conform rules."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.images import ImageSet, InputSpec, save_images
from core.data.load import load_images
from core.errors import DataError

FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ---- CIFAR batches ------------------------------------------------------------------------


def _write_cifar(root: Path, protocol: int = 2) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in (1, 2):
        batch = {
            b"batch_label": b"training batch",
            b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            b"labels": [i, 1, 2, 3],
            b"filenames": [b"a.png"] * 4,
        }
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=protocol))
    test = {b"data": np.full((3, 3072), 7, np.uint8), b"labels": [9, 8, 7]}
    (d / "test_batch").write_bytes(pickle.dumps(test, protocol=protocol))
    meta = {b"label_names": [f"c{k}".encode() for k in range(10)], b"num_vis": 3072}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return d


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches(tmp_path, protocol):
    d = _write_cifar(tmp_path, protocol)
    train = load_images(tmp_path)  # the parent folder is found too
    assert train.images.shape == (8, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [1, 1, 2, 3, 2, 1, 2, 3]
    assert train.class_names == [f"c{k}" for k in range(10)]
    first = pickle.loads((d / "data_batch_1").read_bytes())[b"data"][0]
    assert torch.equal(train.images[0], torch.from_numpy(first.reshape(3, 32, 32)))
    test = load_images(d, split="test")
    assert test.labels.tolist() == [9, 8, 7] and int(test.images.max()) == 7
    assert len(load_images(d, limit=5)) == 5


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_refuses_arbitrary_classes(tmp_path, capsys):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    bad = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil()}
    (d / "data_batch_1").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match="refusing to load .*print"):
        load_images(d)
    assert "pwned" not in capsys.readouterr().out


# ---- idx ----------------------------------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def test_idx_gz_and_plain(tmp_path):
    x = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    y = np.array([3, 1, 4, 1, 5], np.uint8)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(_idx(x))
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(_idx(y))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(x[:2] + 1))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(y[:2]))
    train = load_images(tmp_path, split="train")
    assert train.images.shape == (5, 1, 4, 3) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], torch.from_numpy(x))
    assert train.labels.tolist() == [3, 1, 4, 1, 5]
    test = load_images(tmp_path, split="test")
    assert len(test) == 2 and int(test.images[0, 0, 0, 0]) == 1
    assert len(load_images(tmp_path, split="train", limit=3)) == 3
    with pytest.raises(DataError, match="split"):
        load_images(tmp_path, split="validation")


def test_idx_single_pair_is_used(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(np.zeros((2, 3, 3), np.uint8)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([0, 1], np.uint8)))
    assert len(load_images(tmp_path, split="train")) == 2


def test_idx_truncated_file(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(np.zeros((4, 3, 3), np.uint8))[:-5])
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match="truncated"):
        load_images(tmp_path)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="real Fashion-MNIST not installed")
def test_real_fashion_mnist():
    train = load_images(FMNIST, split="train")
    test = load_images(FMNIST, split="test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[:5].tolist() == [9, 0, 0, 3, 0]  # ankle boot, T-shirt, T-shirt, dress
    assert train.class_names[9] == "Ankle boot"


# ---- ImageFolder ---------------------------------------------------------------------------


def test_image_folder(tmp_path):
    from PIL import Image

    for name, value in (("zebra", 200), ("ant", 10)):
        (tmp_path / name).mkdir()
        for i in range(3):
            img = np.full((6, 5, 3), value + i, np.uint8)
            Image.fromarray(img).save(tmp_path / name / f"{i}.png")
    s = load_images(tmp_path)
    assert s.class_names == ["ant", "zebra"]  # sorted
    assert s.images.shape == (6, 3, 6, 5) and s.images.dtype == torch.uint8
    assert s.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert int(s.images[0, 0, 0, 0]) == 10 and int(s.images[3, 2, 5, 4]) == 200
    limited = load_images(tmp_path, limit=2)
    assert limited.labels.tolist() == [0, 1]  # a limit keeps every class


def test_image_folder_sizes_differ(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a" / "0.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "a" / "1.png")
    with pytest.raises(DataError, match="differ in size"):
        load_images(tmp_path)
    s = load_images(tmp_path, size=(4, 4))
    assert s.images.shape == (2, 1, 4, 4)


# ---- npy -----------------------------------------------------------------------------------


def test_npy_float_nchw(tmp_path):
    x = np.random.default_rng(0).random((4, 3, 5, 6)).astype(np.float64)
    np.save(tmp_path / "data.npy", x)
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 1]))
    s = load_images(tmp_path)
    assert s.images.dtype == torch.float32 and s.images.shape == (4, 3, 5, 6)
    assert torch.allclose(s.images, torch.from_numpy(x).float())


def test_npy_uint8_nhwc_and_nhw(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "data.npy", x)
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 1], np.int32))
    s = load_images(tmp_path, limit=3)
    assert s.images.dtype == torch.uint8 and s.images.shape == (3, 3, 5, 6)
    assert torch.equal(s.images, torch.from_numpy(x[:3]).permute(0, 3, 1, 2))
    np.save(tmp_path / "data.npy", x[..., 0])
    assert load_images(tmp_path).images.shape == (4, 1, 5, 6)


def test_npy_errors(tmp_path):
    np.save(tmp_path / "data.npy", np.full((2, 3, 4, 4), 255.0))
    np.save(tmp_path / "labels.npy", np.array([0, 1]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_images(tmp_path)
    np.save(tmp_path / "data.npy", np.zeros((3, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match="3 images.*2 labels|data.npy has 3"):
        load_images(tmp_path)
    np.save(tmp_path / "labels.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="Python objects.*refused"):
        load_images(tmp_path)


def test_save_images_round_trip_and_split_folders(tmp_path):
    s = ImageSet(torch.rand(3, 1, 4, 4), torch.tensor([2, 0, 1]), ["a", "b", "c"], "mem")
    save_images(s, tmp_path / "clean")
    save_images(s.subset([0]), tmp_path / "test")
    with pytest.raises(DataError, match="several data sets.*clean.*test"):
        load_images(tmp_path)
    back = load_images(tmp_path, split="clean")
    assert back.images.dtype == torch.uint8 and back.class_names == ["a", "b", "c"]
    assert torch.equal(back.images, (s.images * 255).round().to(torch.uint8))
    assert back.labels.tolist() == [2, 0, 1]
    assert len(load_images(tmp_path, split="test")) == 1


def test_missing_and_unknown(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_images(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="expected cifar-10-batches-py.*found readme.txt"):
        load_images(tmp_path)


# ---- InputSpec -----------------------------------------------------------------------------


def test_prepare_uint8_grey_to_rgb_and_normalise():
    x = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)
    out = InputSpec(3, (2, 2), mean=(0.5,), std=(0.5,)).prepare(x)
    assert out.shape == (1, 3, 2, 2)
    expected = torch.tensor([[-1.0, 1.0], [-0.6, -0.2]])
    for c in range(3):
        assert torch.allclose(out[0, c], expected, atol=1e-6)


def test_prepare_rgb_to_grey_luma_and_resize():
    x = torch.zeros(1, 3, 4, 4)
    x[:, 0] = 1.0  # pure red
    out = InputSpec(1, (4, 4)).prepare(x)
    assert torch.allclose(out, torch.full((1, 1, 4, 4), 0.299))
    resized = InputSpec(1, (2, 2)).prepare(x)
    assert resized.shape == (1, 1, 2, 2) and torch.allclose(
        resized, torch.full_like(resized, 0.299)
    )
    same = torch.rand(2, 1, 4, 4)
    assert torch.equal(InputSpec(1, (4, 4)).prepare(same), same)  # no resize when equal


def test_prepare_applies_trigger_before_normalising():
    from core.data.triggers import PatchTrigger

    trig = PatchTrigger(torch.ones(1, 1, 1))
    out = InputSpec(1, (2, 2), mean=(0.5,), std=(0.25,)).prepare(torch.zeros(1, 1, 2, 2), trig)
    assert out[0, 0].tolist() == [[-2.0, -2.0], [-2.0, 2.0]]


def test_prepare_bad_channels():
    with pytest.raises(DataError, match="2-channel"):
        InputSpec(3, (2, 2)).prepare(torch.zeros(1, 2, 2, 2))
    with pytest.raises(DataError, match="mean"):
        InputSpec(3, (2, 2), mean=(0.1, 0.2))


def test_cli_test_role_reads_the_test_split(tmp_path):
    """`bnp defend --test FOLDER` on a folder holding both splits measures on the test split,
    not on the training images."""
    from core.cli import _load_data

    x = np.zeros((5, 4, 4), np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(x))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.arange(5, dtype=np.uint8)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(x[:2] + 7))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([1, 2], np.uint8)))
    assert _load_data(tmp_path, "test").labels.tolist() == [1, 2]
    assert len(_load_data(tmp_path, "clean")) == 5
