"""`.npy` arrays of images and labels, opened without pickles, sizes bounded."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.errors import DataError

if TYPE_CHECKING:
    pass
from core.data.images import (
    ImageSet,
    _check_budget,
    _check_path,
    _images_from_array,
    _labels_from_array,
    os_error_message,
)

# ---- data.npy + labels.npy -----------------------------------------------------------------


def _has_npy(d: Path) -> bool:
    return (d / "data.npy").is_file() and (d / "labels.npy").is_file()


NPY_MAGIC = b"\x93NUMPY"


def open_npy(path: Path) -> np.ndarray:
    """A .npy file memory-mapped (nothing read yet), or a DataError saying what is wrong.

    Never unpickles: a file holding Python objects is refused, and numpy's advice to load it
    unsafely is not passed on.
    """
    _check_path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(NPY_MAGIC))
    except OSError as e:
        raise DataError(os_error_message(e, path)) from None
    if magic != NPY_MAGIC:
        what = "an empty file" if not magic else f"it starts with {magic[:6]!r}"
        raise DataError(
            f"{path} is not a NumPy .npy array ({what}); save the array with numpy.save"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's note about Python 2 headers
            array = np.load(path, allow_pickle=False, mmap_mode="r")
    except OSError as e:
        raise DataError(os_error_message(e, path)) from None
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError, SyntaxError, TokenError…
        text = str(e)
        if "object" in text.lower() or "pickle" in text.lower():
            raise DataError(
                f"{path} holds Python objects (dtype object), which only unpickling could read, "
                "and unpickling can run code: refused; save the data as a numeric array "
                "(uint8 or float32)"
            ) from None
        if "mmap length" in text or "greater than file size" in text:
            raise DataError(
                f"{path} is truncated: its header declares more data than the file holds"
            ) from None
        raise DataError(
            f"{path} has a malformed .npy header ({type(e).__name__}); save the array again "
            "with numpy.save"
        ) from None
    if isinstance(array, np.ndarray) and array.dtype.hasobject:
        raise DataError(f"{path} holds Python objects (dtype object): refused")
    return array


def _load_npy(d: Path, limit: int | None) -> ImageSet:
    data = open_npy(d / "data.npy")
    labels = open_npy(d / "labels.npy")
    if data.ndim == 0 or labels.ndim == 0:
        raise DataError(f"{d}: data.npy and labels.npy must hold one entry per sample")
    if limit is not None:
        data, labels = data[:limit], labels[:limit]
    # uint8 images stay as they are; other dtypes become float32 (4 bytes per value)
    _check_budget(data.size * max(data.dtype.itemsize, 1 if data.dtype == np.uint8 else 4), d)
    _check_budget(labels.size * 8, d / "labels.npy", "the labels")
    data, labels = np.array(data), np.array(labels)
    if data.ndim == 3:
        data = data[:, None]
    elif data.ndim == 4:
        nchw = data.shape[1] in (1, 3)
        nhwc = data.shape[3] in (1, 3)
        if nhwc and (not nchw or data.dtype == np.uint8):
            data = data.transpose(0, 3, 1, 2)
        elif not nchw:
            raise DataError(
                f"{d / 'data.npy'}: cannot tell the channel axis of shape {data.shape}: "
                "expected N×C×H×W or N×H×W×C with C = 1 or 3"
            )
    else:
        raise DataError(
            f"{d / 'data.npy'}: expected N×C×H×W, N×H×W×C or N×H×W images, found shape {data.shape}"
        )
    labels = _labels_from_array(labels, d / "labels.npy")
    if len(labels) != len(data):
        raise DataError(f"{d}: data.npy has {len(data)} images, labels.npy {len(labels)} labels")
    names_file = d / "class_names.txt"
    class_names = None
    if names_file.is_file():
        try:
            text = names_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{names_file} is not UTF-8 text: one class name per line") from None
        class_names = [s for s in text.splitlines() if s]
    return ImageSet(_images_from_array(data, d / "data.npy"), labels, class_names, str(d))
