"""Labelled image sets: read them from the formats users have, conform them to a model's input.

Readers (``load_images`` detects the format from what the folder holds):

- CIFAR-10 / CIFAR-100 as torchvision keeps them (``cifar-10-batches-py/``,
  ``cifar-100-python/``). The batches are pickles of plain dicts of numpy arrays; they are read
  by ``core.data.cifar``'s restricted unpickler, which only rebuilds plain numeric arrays.
- (Fashion-)MNIST raw idx files, gzipped or not (``train-*`` / ``t10k-*``).
- STL-10's binary files (``stl10_binary/``), read by ``core.data.stl10``.
- An ImageFolder tree: one sub-folder per class, class index = position of the sorted name.
- ``data.npy`` + ``labels.npy``: N×C×H×W float in [0, 1], or N×H×W×C / N×H×W uint8
  (an optional ``class_names.txt``, one name per line, names the classes).

Images are kept as uint8 when the source is uint8 (a quarter of the memory), float32 otherwise.
16-bit images become float32 in [0, 1] (value / 65535); float images (TIFF mode F) are read as
they are when they lie in [0, 1] and refused otherwise, never clipped or truncated.

Files are untrusted: sizes that headers declare are checked before anything is allocated or
decompressed (``MAX_DATA_BYTES`` per data set, ``MAX_IMAGE_PIXELS`` per image file), and every
read failure (permissions, symbolic-link loops, malformed headers) is a ``DataError`` that says
what is wrong with which file.

Conform rules (``InputSpec.prepare``), applied in this order:

1. to float32 in [0, 1] (uint8 is divided by 255);
2. channels: 1 → 3 repeats the grey channel; 3 → 1 takes the ITU-R BT.601 luma
   ``0.299·R + 0.587·G + 0.114·B`` (``InputSpec.luma``); any other mismatch is an error;
3. size: only when it differs from the model's, bilinear resize with antialiasing
   (``InputSpec.resize_mode`` / ``InputSpec.antialias``);
4. the trigger, if any, is applied to the conformed [0, 1] image (the attacker's view);
5. normalisation ``(x − mean) / std`` when the spec has a mean.

``InputSpec`` is a frozen dataclass: a caller who wants other rules constructs the spec with
other field values.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from core.data.checks import MAX_CHANNELS, MAX_INPUT_SIDE, check_normalisation
from core.errors import DataError
from core.safety.paths import check_input

if TYPE_CHECKING:
    from core.data.triggers import Trigger

__all__ = [
    "ImageSet",
    "InputSpec",
    "save_images",
    "conform_channels",
    "to_float",
]

LUMA_BT601 = (0.299, 0.587, 0.114)

# Bounds on what a data file may make us allocate (checked against the sizes headers declare,
# before reading): BNP/EP need a few hundred samples, evaluation a few thousand.
MAX_DATA_BYTES = int(os.environ.get("BNP_MAX_DATA_BYTES", 2 * 1024**3))
MAX_IMAGE_PIXELS = 1 << 25  # one image file: 33.5 M pixels (e.g. 8192×4096)


# --------------------------------------------------------------------------------------------
# ImageSet


@dataclass
class ImageSet:
    """Labelled images N×C×H×W (uint8 0..255 or float32 0..1) with int64 labels."""

    images: Tensor
    labels: Tensor
    class_names: list[str] | None = None
    source: str = ""
    files: list[str] | None = None  # per-sample file, relative to the source (ImageFolder)

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise DataError(f"images must be N×C×H×W, got shape {tuple(self.images.shape)}")
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise DataError(f"images must be uint8 or float32, got {self.images.dtype}")
        self.labels = check_label_values(self.labels, self.class_names, self.source)
        if len(self.labels) != len(self.images):
            raise DataError(
                f"{len(self.images)} images but {len(self.labels)} labels"
                + (f" in {self.source}" if self.source else "")
            )

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.labels)

    @property
    def channels(self) -> int:
        """Channels per image."""
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """Image height and width."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def num_classes(self) -> int:
        """Number of classes: from the class names, else 1 + the largest label."""
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def subset(self, index: Any) -> ImageSet:
        """The samples at ``index`` (indices, boolean mask or slice), as a new ImageSet."""
        if isinstance(index, slice):
            images, labels = self.images[index], self.labels[index]
            idx = index
        else:
            idx = torch.as_tensor(np.asarray(index) if not isinstance(index, Tensor) else index)
            if idx.dtype == torch.bool:
                idx = idx.nonzero().reshape(-1)
            idx = idx.to(torch.int64).reshape(-1)
            images, labels = self.images[idx], self.labels[idx]
        files = None
        if self.files is not None:
            files = [self.files[i] for i in torch.arange(len(self.files))[idx].tolist()]
        return ImageSet(images, labels, self.class_names, self.source, files)

    def float_images(self) -> Tensor:
        """The images as float32 in [0, 1] (a copy when stored as uint8)."""
        return to_float(self.images)


def check_label_values(labels: Any, class_names: Sequence[str] | None, where: str = "") -> Tensor:
    """Labels as int64, the same rule for every format: whole numbers, ≥ 0, and below the
    number of classes when the set names its classes; else a DataError (one line)."""
    y = torch.as_tensor(labels).reshape(-1)
    at = f"{where}: " if where else ""
    if y.is_floating_point():
        if len(y) and not bool((torch.isfinite(y) & (y == y.round())).all()):
            bad = y[~(torch.isfinite(y) & (y == y.round()))][0].item()
            raise DataError(f"{at}labels must be whole numbers, found {bad:g}")
    elif y.is_complex():
        raise DataError(f"{at}labels must be integers, found {str(y.dtype).removeprefix('torch.')}")
    y = y.to(torch.int64)
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{at}labels must be ≥ 0, found {int(y.min())}")
    if class_names and len(y) and int(y.max()) >= len(class_names):
        raise DataError(
            f"{at}label {int(y.max())} is not one of the {len(class_names)} classes the data "
            f"names (0–{len(class_names) - 1})"
        )
    return y


def to_float(images: Tensor) -> Tensor:
    """uint8 0..255 → float32 0..1; float tensors are returned as float32."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 255.0
    return images.to(torch.float32)


def conform_channels(images: Tensor, channels: int, luma: Sequence[float] = LUMA_BT601) -> Tensor:
    """Adapt float ...×C×H×W to ``channels``: 1→3 repeats, 3→1 takes the luma; else error."""
    have = images.shape[-3]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:]).clone()
    if have == 3 and channels == 1:
        w = torch.tensor(luma, dtype=images.dtype, device=images.device).reshape(3, 1, 1)
        return (images * w).sum(dim=-3, keepdim=True)
    raise DataError(
        f"cannot convert {have}-channel images to {channels} channels "
        "(only 1→3 and 3→1 are defined)"
    )


# --------------------------------------------------------------------------------------------
# InputSpec


def _whole_number(value: Any, what: str) -> int:
    """``value`` as an int, or a DataError naming ``what`` (floats must be whole)."""
    if isinstance(value, bool):
        raise DataError(f"{what} must be a whole number, not {value!r}")
    try:
        number = float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        raise DataError(f"{what} must be a whole number, not {value!r}") from None
    if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
        raise DataError(f"{what} must be a whole number, not {value!r}")
    return int(number)


def check_input_size(size: Any) -> tuple[int, int]:
    """(H, W) of a model input, each side 1..MAX_INPUT_SIDE pixels, else a DataError."""
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = size
    except (TypeError, ValueError):
        raise DataError(f"an input size needs two numbers (height, width), not {size!r}") from None
    h = _whole_number(h, "the input height")
    w = _whole_number(w, "the input width")
    if h < 1 or w < 1:
        raise DataError(f"input size {h}×{w} is empty: each side must be at least 1 pixel")
    if h > MAX_INPUT_SIDE or w > MAX_INPUT_SIDE:
        raise DataError(
            f"input size {h}×{w} is larger than the {MAX_INPUT_SIDE}×{MAX_INPUT_SIDE} pixels "
            "this tool feeds a model (image classifiers take 224–600); give the model's real "
            "input size (--input-size H W on the command line)"
        )
    return h, w


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: channels, H×W, optional normalisation; ``prepare`` conforms images."""

    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    luma: tuple[float, float, float] = LUMA_BT601
    resize_mode: str = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        channels = _whole_number(self.channels, "the number of input channels")
        if not 1 <= channels <= MAX_CHANNELS:
            raise DataError(
                f"a model input of {channels} channels is not an image (expected 1–{MAX_CHANNELS})"
            )
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "size", check_input_size(self.size))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_normalisation(value, name, channels))

    def conform(self, images: Tensor) -> Tensor:
        """Float [0, 1] images with this spec's channels and size (steps 1–3, no trigger)."""
        if images.dim() != 4:
            raise DataError(f"expected a batch N×C×H×W, got shape {tuple(images.shape)}")
        x = to_float(images)
        x = conform_channels(x, self.channels, self.luma)
        if tuple(x.shape[-2:]) != self.size:
            aa = self.antialias and self.resize_mode in ("bilinear", "bicubic")
            kwargs = (
                {}
                if self.resize_mode in ("nearest", "nearest-exact", "area")
                else {"align_corners": False}
            )
            x = F.interpolate(x, size=self.size, mode=self.resize_mode, antialias=aa, **kwargs)
            x = x.clamp_(0.0, 1.0)
        return x

    def normalise(self, x: Tensor) -> Tensor:
        """``(x − mean) / std`` when the spec has a mean (std defaults to 1), else x."""
        if self.mean is None and self.std is None:
            return x
        mean = torch.tensor(self.mean or (0.0,), dtype=x.dtype, device=x.device)
        std = torch.tensor(self.std or (1.0,), dtype=x.dtype, device=x.device)
        return (x - mean.reshape(-1, 1, 1)) / std.reshape(-1, 1, 1)

    def prepare(self, images: Tensor, trigger: Trigger | None = None) -> Tensor:
        """to float [0,1] -> conform channels/size -> trigger.apply (if any) -> normalise."""
        x = self.conform(images)
        if trigger is not None:
            x = trigger.apply(x)
        return self.normalise(x)


def os_error_message(e: OSError, path: Path | None = None) -> str:
    """One line for an OSError: which file, and the failure in words (permissions, loops…)."""
    where = e.filename if e.filename is not None else path
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied reading {where}: check that you may read it"
    if e.errno == errno.ELOOP:
        return f"{where} is a loop of symbolic links: point the link at a real file or folder"
    if e.errno == errno.ENOENT:
        return f"{where} does not exist"
    if e.errno == errno.EISDIR:
        return f"{where} is a folder where a file was expected"
    return f"cannot read {where}: {e.strerror or e}"


def _check_path(p: Path) -> None:
    """A DataError saying why ``p`` cannot be opened: missing, a broken link, a link loop."""
    try:
        os.stat(p)
    except OSError as e:
        if e.errno == errno.ENOENT and p.is_symlink():
            raise DataError(
                f"{p} is a symbolic link to {os.readlink(p)}, which does not exist"
            ) from None
        if e.errno == errno.ENOENT:
            raise DataError(f"data path does not exist: {p}") from None
        raise DataError(os_error_message(e, p)) from None
    check_input(p, error=DataError)


def _check_budget(nbytes: int, where: Path | str, what: str = "the images") -> None:
    """Refuse to allocate more than MAX_DATA_BYTES for one data set."""
    if nbytes > MAX_DATA_BYTES:
        raise DataError(
            f"{where}: {what} would take {_gigabytes(nbytes)} in memory, more than the "
            f"{_gigabytes(MAX_DATA_BYTES)} limit; use a smaller subset (the defenses need a few "
            "hundred to a few thousand samples) or raise BNP_MAX_DATA_BYTES"
        )


def _gigabytes(nbytes: int) -> str:
    return f"{nbytes / 1e9:.3g} GB" if nbytes < 1e15 else f"{nbytes:.3g} bytes"


def _images_from_array(x: np.ndarray, where: Path) -> Tensor:
    """uint8 stays uint8; integers in 0..255 become uint8; floats must lie in [0, 1]."""
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    if x.dtype.kind in "iu":
        lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if lo < 0 or hi > 255:
            raise DataError(f"{where}: integer images must be 0..255, found {lo}..{hi}")
        return torch.from_numpy(np.ascontiguousarray(x.astype(np.uint8)))
    if x.dtype.kind == "f":
        x = x.astype(np.float32)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not np.isfinite([lo, hi]).all() or lo < -1e-6 or hi > 1 + 1e-6:
            raise DataError(
                f"{where}: float images must lie in [0, 1], found values in [{lo:g}, {hi:g}] "
                "(divide by 255, or store uint8)"
            )
        return torch.from_numpy(np.ascontiguousarray(np.clip(x, 0.0, 1.0)))
    raise DataError(f"{where}: expected uint8 or float images, found dtype {x.dtype}")


def _labels_from_array(y: np.ndarray, where: Path) -> Tensor:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: expected one integer label per image, found shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{where}: labels must be integers, found non-integer floats")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{where}: labels must be integers, found dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{where}: labels must be ≥ 0, found {int(y.min())}")
    return torch.from_numpy(y)


def save_images(images: ImageSet, folder: str | Path) -> Path:
    """Write ``data.npy`` (uint8 N×H×W×C) + ``labels.npy`` (+ ``class_names.txt``) to folder."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    x = images.images
    if x.dtype != torch.uint8:
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    np.save(d / "data.npy", x.permute(0, 2, 3, 1).contiguous().numpy())
    np.save(d / "labels.npy", images.labels.numpy().astype(np.int64))
    if images.class_names:
        (d / "class_names.txt").write_text("\n".join(images.class_names) + "\n", encoding="utf-8")
    return d
