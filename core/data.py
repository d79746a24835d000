"""Labelled image sets: read them from the formats users have, conform them to a model's input.

Readers (``load_images`` detects the format from what the folder holds):

- CIFAR-10 / CIFAR-100 as torchvision keeps them (``cifar-10-batches-py/``,
  ``cifar-100-python/``). The batches are pickles of plain dicts of numpy arrays; they are read
  by ``core.cifar``'s restricted unpickler, which only rebuilds plain numeric arrays.
- (Fashion-)MNIST raw idx files, gzipped or not (``train-*`` / ``t10k-*``).
- STL-10's binary files (``stl10_binary/``), read by ``core.stl10``.
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
import gzip
import io
import math
import os
import re
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from core.checks import MAX_CHANNELS, MAX_INPUT_SIDE, check_normalisation
from core.errors import DataError
from core.safety import check_input, note_read

if TYPE_CHECKING:
    from core.triggers import Trigger

__all__ = [
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "InputSpec",
    "load_images",
    "save_images",
    "conform_channels",
    "to_float",
    "image_to_tensor",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
LUMA_BT601 = (0.299, 0.587, 0.114)

# Bounds on what a data file may make us allocate (checked against the sizes headers declare,
# before reading): BNP/EP need a few hundred samples, evaluation a few thousand.
MAX_DATA_BYTES = int(os.environ.get("BNP_MAX_DATA_BYTES", 2 * 1024**3))
MAX_IMAGE_PIXELS = 1 << 25  # one image file: 33.5 M pixels (e.g. 8192×4096)

_TRAIN_NAMES = ("train", "training")
_TEST_NAMES = ("test", "t10k", "testing")


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


# --------------------------------------------------------------------------------------------
# load_images


def load_images(
    path: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    size: tuple[int, int] | None = None,
) -> ImageSet:
    """Read a labelled image set, detecting the format (see the module docstring).

    ``split``: "train" or "test" for sources holding both (CIFAR, idx files; default "train"),
    or a sub-folder name (e.g. "test" of a folder holding ``test/data.npy`` or ``test/<class>/``).
    ``limit``: read at most this many samples (the first ones; ImageFolder takes them
    round-robin over the classes so every class is represented).
    ``size``: (H, W) to resize ImageFolder images to when they differ in size.
    Raises DataError (one line: which file, what is wrong) for anything that cannot be read.
    """
    p = Path(path).expanduser()
    _check_path(p)
    note_read(p)  # never written over by this run's outputs
    if limit is not None and limit < 0:
        raise DataError(f"limit must be ≥ 0, got {limit}")
    try:
        images = _load_any(p, split, limit, size)
    except OSError as e:
        raise DataError(os_error_message(e, p)) from None
    except MemoryError:
        raise DataError(
            f"not enough memory to read {p}: read fewer samples (a smaller folder)"
        ) from None
    if len(images) == 0 and limit != 0:
        raise DataError(f"{images.source or p} holds no samples: give a folder with images")
    return images


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


def _load_any(p: Path, split: str | None, limit: int | None, size) -> ImageSet:
    if p.is_file():
        return _load_file(p, split=split, limit=limit)

    # A split given as a sub-folder (train/, test/, clean/ ...) that holds a data set.
    if split is not None and (p / split).is_dir() and not _is_cifar_dir(p):
        sub = p / split
        if _has_npy(sub) or _idx_pairs(sub) or _is_cifar_dir(sub) or _class_dirs(sub):
            return _load_any(sub, None, limit, size)

    from core.stl10 import load_stl10, stl10_dir  # STL-10 binary folder (own module)

    if (stl := stl10_dir(p)) is not None:
        return load_stl10(stl, split, limit)
    if _is_cifar_dir(p):
        from core.cifar import load_cifar

        return load_cifar(_cifar_dir(p), split, limit)
    if _has_npy(p):
        return _load_npy(p, limit)
    pairs = _idx_pairs(p)
    if pairs:
        return _load_idx_dir(p, pairs, split, limit)
    class_dirs = _class_dirs(p)
    if class_dirs:
        return _load_image_folder(p, class_dirs, limit, size)

    # Folders of data sets (e.g. the defender's split: clean/, train_poisoned/, test/).
    subsets = sorted(d.name for d in p.iterdir() if d.is_dir() and (_has_npy(d) or _idx_pairs(d)))
    if subsets:
        listed = ", ".join(f"{name}/" for name in subsets)
        raise DataError(
            f"{p} holds several data sets ({listed}): give the folder of the one you mean, "
            f"e.g. {p / subsets[0]}"
        )
    _refuse_unreadable_entries(p)
    found = sorted(x.name for x in p.iterdir())[:8]
    raise DataError(
        f"no image data recognised in {p}: expected cifar-10-batches-py/, STL-10's "
        "stl10_binary/, (Fashion-)MNIST idx files (train-images-idx3-ubyte[.gz] + "
        "train-labels-idx1-ubyte[.gz]), "
        "data.npy + labels.npy, or one sub-folder of images per class; found "
        + (", ".join(found) if found else "an empty folder")
    )


def _refuse_unreadable_entries(p: Path) -> None:
    """Data files that exist by name but cannot be opened (link loops, broken links) are said
    as such instead of 'no image data recognised'."""
    for name in ("data.npy", "labels.npy"):
        entry = p / name
        if entry.is_symlink() or entry.exists():
            _check_path(entry)


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


def _load_file(p: Path, *, split: str | None, limit: int | None) -> ImageSet:
    """A single file given: data.npy/labels.npy or one idx file of a pair."""
    if p.name in ("data.npy", "labels.npy"):
        return _load_npy(p.parent, limit)
    m = _IDX_RE.match(p.name)
    if m:
        pairs = {k: v for k, v in _idx_pairs(p.parent).items() if k == m.group("prefix")}
        if pairs:
            return _load_idx_dir(p.parent, pairs, None, limit)
        raise DataError(f"{p.name} has no matching labels file (…-labels-idx1-ubyte) next to it")
    if p.name in ("data_batch_1", "test_batch", "batches.meta"):
        from core.cifar import load_cifar

        return load_cifar(p.parent, split, limit)
    raise DataError(
        f"cannot read {p}: give a folder (CIFAR batches, idx files, data.npy + labels.npy, or "
        "an ImageFolder tree), or data.npy / an idx file"
    )


def _normalise_split(split: str | None) -> str:
    if split is None:
        return "train"
    s = split.lower()
    if s in _TRAIN_NAMES:
        return "train"
    if s in _TEST_NAMES:
        return "test"
    raise DataError(f"unknown split {split!r}: expected 'train' or 'test'")


# ---- CIFAR ----------------------------------------------------------------------------------


def _is_cifar_dir(p: Path) -> bool:
    return _cifar_dir(p) is not None


def _cifar_dir(p: Path) -> Path | None:
    for d in (p, p / "cifar-10-batches-py", p / "cifar-100-python"):
        if (d / "data_batch_1").is_file() or (d / "test_batch").is_file():
            return d
        if (d / "meta").is_file() and ((d / "train").is_file() or (d / "test").is_file()):
            return d
    return None


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


# ---- ImageFolder ----------------------------------------------------------------------------


# Entries an ImageFolder walk may visit: pointing at a home folder or / must not walk the disk.
MAX_FOLDER_ENTRIES = 2_000_000


def _walk(d: Path, counter: list[int]):
    """Every path under ``d`` (rglob), counted against MAX_FOLDER_ENTRIES."""
    for f in d.rglob("*"):
        counter[0] += 1
        if counter[0] > MAX_FOLDER_ENTRIES:
            raise DataError(
                f"{d} holds more than {MAX_FOLDER_ENTRIES:,} files and folders: give the folder "
                "of one data set (one sub-folder of images per class)"
            )
        yield f


def _class_dirs(d: Path) -> list[Path]:
    """Sorted sub-folders of ``d`` that hold image files (hidden folders ignored)."""
    dirs = sorted(
        (s for s in d.iterdir() if s.is_dir() and not s.name.startswith(".")),
        key=lambda s: s.name,
    )
    counter = [0]
    has_images = any(f.suffix.lower() in IMAGE_EXTENSIONS for s in dirs for f in _walk(s, counter))
    return dirs if has_images else []


def _image_files(d: Path, counter: list[int]) -> list[Path]:
    return sorted(
        f for f in _walk(d, counter) if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
    )


def _load_image_folder(
    root: Path, class_dirs: list[Path], limit: int | None, size: tuple[int, int] | None
) -> ImageSet:
    counter = [0]
    per_class = [_image_files(c, counter) for c in class_dirs]
    order: list[tuple[int, Path]] = []
    if limit is None:
        order = [(k, f) for k, files in enumerate(per_class) for f in files]
    else:  # round-robin over the classes so a limit keeps every class
        i = 0
        while len(order) < limit and any(i < len(files) for files in per_class):
            order += [(k, files[i]) for k, files in enumerate(per_class) if i < len(files)]
            i += 1
        order = sorted(order[:limit], key=lambda t: t[0])
    if not order:
        raise DataError(f"ImageFolder {root} has class folders but no image files")

    from core.isolation import report_progress  # reaches the caller's bar from the reader

    arrays, total = [], 0
    for i, (_, f) in enumerate(order):
        report_progress(i, len(order))
        a = read_image_array(f)
        total += a.nbytes
        _check_budget(total, root)
        arrays.append(a)
    report_progress(len(order), len(order))
    grey = all(a.ndim == 2 for a in arrays)
    as_float = any(a.dtype == np.float32 for a in arrays)
    sizes = Counter(a.shape[:2] for a in arrays)
    if size is None and len(sizes) > 1:
        listed = ", ".join(f"{h}×{w} ({n})" for (h, w), n in sizes.most_common(4))
        raise DataError(
            f"images in {root} differ in size ({listed}); pass a size to resize them to one"
        )
    if size is not None:
        h, w = check_input_size(size)
        _check_budget(len(arrays) * h * w * (1 if grey else 3) * (4 if as_float else 1), root)
        arrays = [a if a.shape[:2] == (h, w) else _resize_array(a, h, w) for a in arrays]
    if not grey:
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    if as_float:
        arrays = [a if a.dtype == np.float32 else a.astype(np.float32) / 255.0 for a in arrays]
    arr = np.stack(arrays)
    arr = arr[:, None] if grey else arr.transpose(0, 3, 1, 2)
    labels = torch.tensor([k for k, _ in order], dtype=torch.int64)
    return ImageSet(
        torch.from_numpy(np.ascontiguousarray(arr)),
        labels,
        [c.name for c in class_dirs],
        str(root),
        [f.relative_to(root).as_posix() for _, f in order],
    )


_GREY_8BIT = ("1", "L", "LA", "La")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def read_image_array(path: Path) -> np.ndarray:
    """One image file as H×W (grey) or H×W×3 (colour): uint8, or float32 in [0, 1] for
    16-bit and float images. Refuses images over MAX_IMAGE_PIXELS before decoding them, and
    images whose values cannot be converted faithfully."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(path.read_bytes())) as im:
                pixels = im.width * im.height
                if pixels > MAX_IMAGE_PIXELS:
                    raise DataError(_too_many_pixels(path, im.width, im.height))
                im.load()
                return _pil_to_array(_upright(im, ImageOps), path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(
            f"{path} declares more than {MAX_IMAGE_PIXELS / 1e6:.1f} M pixels (a decompression "
            "bomb?): refused"
        ) from None
    except UnidentifiedImageError:  # its message names a BytesIO object, not the file
        raise DataError(
            f"cannot read image {path}: not an image file that can be decoded (damaged, "
            "truncated, or not an image)"
        ) from None
    except OSError as e:
        if e.errno is not None:
            raise DataError(os_error_message(e, path)) from None
        raise DataError(f"cannot read image {path}: {e}") from None
    except (ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def _upright(im: Any, image_ops: Any) -> Any:
    """A photo turned as its EXIF orientation says (as every viewer shows it); the image as it
    is when the tag is absent or malformed."""
    try:
        return image_ops.exif_transpose(im) or im
    except Exception:  # noqa: BLE001 - a stranger's EXIF block: malformed in many ways
        return im


def _too_many_pixels(path: Path, width: int, height: int) -> str:
    return (
        f"{path} is {width}×{height} pixels, more than the {MAX_IMAGE_PIXELS / 1e6:.1f} M "
        "pixels an image may have here (a decompression bomb?): refused"
    )


def _pil_to_array(im: Any, path: Path) -> np.ndarray:
    mode = im.mode
    if mode in _SIXTEEN_BIT:
        return np.asarray(im, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DataError(f"{path}: the image holds NaN or infinite values: refused")
        if mode == "I" and lo >= 0 and hi <= 255:
            return a.astype(np.uint8)
        if mode == "I" and lo >= 0 and hi <= 65535:  # 16-bit values in a 32-bit image
            return (a / 65535.0).astype(np.float32)
        if mode == "F" and lo >= 0 and hi <= 1:
            return a.astype(np.float32)
        kind = "32-bit integer" if mode == "I" else "floating-point"
        expected = "0..65535" if mode == "I" else "[0, 1]"
        raise DataError(
            f"{path} is a {kind} image with values in [{lo:g}, {hi:g}]; only {expected} can be "
            "read without clipping: rescale it, or save it as an 8-bit image"
        )
    if mode in _GREY_8BIT:
        return np.array(im.convert("L"), dtype=np.uint8)
    if mode in ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBa"):
        return np.array(im.convert("RGB"), dtype=np.uint8)
    raise DataError(f"{path}: images of mode {mode} cannot be converted faithfully: refused")


def _resize_array(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of H×W or H×W×C, uint8 or float32 (each channel as its own image)."""
    from PIL import Image

    if a.dtype == np.uint8:
        return np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR), dtype=np.uint8)
    channels = [a] if a.ndim == 2 else [a[..., c] for c in range(a.shape[2])]
    out = [
        np.asarray(Image.fromarray(c, "F").resize((w, h), Image.BILINEAR), dtype=np.float32)
        for c in channels
    ]
    resized = out[0] if a.ndim == 2 else np.stack(out, axis=2)
    return np.clip(resized, 0.0, 1.0)


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def image_to_tensor(path: str | Path) -> Tensor:
    """One image file (or a .npy array) as float32 C×H×W in [0, 1] (grey → 1 channel)."""
    p = Path(path)
    _check_path(p)
    note_read(p)
    if p.suffix.lower() == ".npy":
        a = open_npy(p)
        if a.size * 4 > MAX_IMAGE_PIXELS * 12:
            raise DataError(f"{p}: an array of shape {a.shape} is too large for one image")
        a = np.array(a)
        if a.ndim == 2:
            a = a[None]
        elif a.ndim == 3 and a.shape[0] not in (1, 3) and a.shape[2] in (1, 3):
            a = a.transpose(2, 0, 1)
        if a.ndim != 3:
            raise DataError(f"{p}: expected an H×W or C×H×W array, found shape {a.shape}")
        return to_float(_images_from_array(a[None], p))[0]
    arr = read_image_array(p)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return to_float(torch.from_numpy(np.ascontiguousarray(arr)))
