"""STL-10 from its official binary files, read directly (never downloaded).

Layout (``stl10_binary/``): ``train_X.bin`` / ``test_X.bin`` are uint8 images, each 3×96×96
stored column-major (per channel, the pixels column by column); ``train_y.bin`` /
``test_y.bin`` are one uint8 label per image, 1..10; ``class_names.txt`` one name per line;
``unlabeled_X.bin`` (optional, 2.6 GB) has no labels and is never read. torchvision's ``STL10``
cannot serve here: it refuses a folder whose files do not all match its md5 sums, the
unlabeled file included.

Only the bytes of the samples asked for are read (``limit``); file sizes are checked against
the label count before anything is read, so a truncated download is a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.data.images import ImageSet
from core.errors import DataError

__all__ = ["STL10_CLASSES", "IMAGE_BYTES", "stl10_dir", "load_stl10"]

STL10_CLASSES = [
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
]
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


def stl10_dir(path: Path) -> Path | None:
    """The folder holding STL-10's binary files: ``path`` itself or its ``stl10_binary/``."""
    for d in (path, path / "stl10_binary"):
        if d.is_dir() and (
            d.name == "stl10_binary"
            or any((d / name).is_file() for name in (*_FILES, "unlabeled_X.bin"))
        ):
            return d
    return None


def _split_name(split: str | None) -> str:
    s = "train" if split is None else split.lower()
    if s in ("train", "training"):
        return "train"
    if s in ("test", "testing"):
        return "test"
    if s == "unlabeled":
        raise DataError("STL-10's unlabeled images have no labels: choose split 'train' or 'test'")
    raise DataError(f"unknown split {split!r}: expected 'train' or 'test'")


def load_stl10(d: Path, split: str | None = None, limit: int | None = None) -> ImageSet:
    """The train or test split (default train) of an STL-10 binary folder, uint8 N×3×96×96."""
    which = _split_name(split)
    x_file, y_file = d / f"{which}_X.bin", d / f"{which}_y.bin"
    for f in (x_file, y_file):
        if not f.is_file():
            raise DataError(f"STL-10 folder {d} has no {f.name} (needed for the {which} split)")
    n = y_file.stat().st_size
    size = x_file.stat().st_size
    if size % IMAGE_BYTES or size // IMAGE_BYTES != n:
        raise DataError(
            f"{x_file} is truncated or does not match {y_file.name}: {size} bytes is "
            f"{size / IMAGE_BYTES:g} images of 3×96×96, the labels file has {n} labels"
        )
    count = n if limit is None else min(n, int(limit))
    try:
        labels = np.fromfile(y_file, dtype=np.uint8, count=count)
        raw = np.fromfile(x_file, dtype=np.uint8, count=count * IMAGE_BYTES)
    except OSError as e:
        raise DataError(f"cannot read {d}: {e}") from e
    if len(labels) != count or len(raw) != count * IMAGE_BYTES:  # file changed while reading
        raise DataError(f"{d}: {which} files shorter than their sizes said")
    if count and (labels.min() < 1 or labels.max() > 10):
        raise DataError(
            f"{y_file}: STL-10 labels are 1..10, found {int(labels.min())}..{int(labels.max())}"
        )
    # Column-major 3×96×96: read in C order that is (C, W, H); swap to (C, H, W).
    images = raw.reshape(count, 3, SIDE, SIDE).transpose(0, 1, 3, 2)
    return ImageSet(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels.astype(np.int64) - 1),
        _class_names(d),
        f"{d} ({which})",
    )


def _class_names(d: Path) -> list[str]:
    """class_names.txt when present and naming ten classes, else the official ten names."""
    f = d / "class_names.txt"
    if f.is_file():
        try:
            names = [s.strip() for s in f.read_text(encoding="utf-8").splitlines() if s.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {f}: {e}") from e
        if len(names) != 10:
            raise DataError(f"{f} names {len(names)} classes; STL-10 has 10")
        return names
    return list(STL10_CLASSES)
