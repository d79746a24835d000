"""IDX files (MNIST, Fashion-MNIST): images and labels, sizes checked before allocation."""

from __future__ import annotations

import gzip
import math
import re
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.errors import DataError

if TYPE_CHECKING:
    pass
from core.data.images import (
    ImageSet,
    _check_budget,
    _images_from_array,
    _labels_from_array,
    os_error_message,
)
from core.data.names import FASHION_MNIST_CLASSES

_TRAIN_NAMES = ("train", "training")
_TEST_NAMES = ("test", "t10k", "testing")


def _normalise_split(split: str | None) -> str:
    if split is None:
        return "train"
    s = split.lower()
    if s in _TRAIN_NAMES:
        return "train"
    if s in _TEST_NAMES:
        return "test"
    raise DataError(f"unknown split {split!r}: expected 'train' or 'test'")


# ---- idx (MNIST, Fashion-MNIST) --------------------------------------------------------------

_IDX_RE = re.compile(
    r"^(?P<prefix>.+?)[-_.](?P<kind>images|labels)[-_.]idx(?P<ndim>\d)[-_.]ubyte(?P<gz>\.gz)?$"
)
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _idx_pairs(d: Path) -> dict[str, tuple[Path, Path]]:
    """prefix ('train', 't10k', ...) -> (images file, labels file) of the idx pairs in ``d``."""
    found: dict[str, dict[str, Path]] = {}
    for f in d.iterdir():
        m = _IDX_RE.match(f.name)
        if m and f.is_file():
            slot = found.setdefault(m.group("prefix"), {})
            # prefer the uncompressed file when both exist
            if m.group("kind") not in slot or not m.group("gz"):
                slot[m.group("kind")] = f
    return {k: (v["images"], v["labels"]) for k, v in found.items() if len(v) == 2}


def _read_idx(path: Path, limit: int | None, kind: str) -> np.ndarray:
    """The first ``limit`` samples of an idx file, reading (or decompressing) only those bytes,
    after checking the sizes its header declares."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise DataError(f"{path} is not an idx file (bad magic number {head.hex()})")
            dtype, ndim = _IDX_DTYPES[head[2]], head[3]
            allowed = (1,) if kind == "labels" else (3, 4)
            if ndim not in allowed:
                expected = "1 (N labels)" if kind == "labels" else "3 (N×H×W) or 4 (N×H×W×C)"
                raise DataError(
                    f"{path}: an idx {kind} file with {ndim} dimensions; expected {expected}"
                )
            raw_dims = fh.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(f"{path} is truncated inside its header")
            dims = [int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim)]
            if any(d == 0 for d in dims[1:]):
                raise DataError(f"{path}: its header declares an empty image shape {dims}")
            n = dims[0] if limit is None else min(dims[0], limit)
            per = math.prod(dims[1:])
            _check_budget(n * per * dtype.itemsize, path, f"{n} × {dims[1:]} {kind}")
            want = n * per * dtype.itemsize
            data = fh.read(want)
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise DataError(os_error_message(e, path)) from None
        raise DataError(f"{path} is not a readable idx file: {e}") from None
    if len(data) < want:
        raise DataError(
            f"{path} is truncated: header says {dims}, file has {len(data)} of the "
            f"{want} data bytes needed"
        )
    arr = np.frombuffer(data, dtype=dtype, count=n * per)
    return arr.reshape(n, *dims[1:]).astype(dtype.newbyteorder("="), copy=True)


def _load_idx_dir(
    d: Path, pairs: dict[str, tuple[Path, Path]], split: str | None, limit: int | None
) -> ImageSet:
    if len(pairs) == 1:
        prefix = next(iter(pairs))
    else:
        which = _normalise_split(split)
        names = _TRAIN_NAMES if which == "train" else _TEST_NAMES
        matches = [k for k in pairs if k.lower() in names]
        if not matches:
            raise DataError(
                f"{d} holds idx pairs {sorted(pairs)} but none for split {which!r} "
                f"(expected one of {', '.join(names)})"
            )
        prefix = matches[0]
    images_file, labels_file = pairs[prefix]
    x = _read_idx(images_file, limit, "images")
    y = _read_idx(labels_file, limit, "labels")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:  # N×H×W×C
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{images_file}: expected N×H×W images, found shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{labels_file}: expected N labels, found shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{images_file.name} has {len(x)} images, {labels_file.name} {len(y)}")
    x = _images_from_array(x, images_file)
    class_names = FASHION_MNIST_CLASSES.copy() if "fashion" in str(d).lower() else None
    y = _labels_from_array(y, labels_file)
    return ImageSet(x, y, class_names, f"{d} ({prefix})")
