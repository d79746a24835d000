"""ImageFolder trees and single image files: class folders, decoding with pixel limits, resizing."""

from __future__ import annotations

import io
import math
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from core.errors import DataError
from core.safety.paths import note_read

if TYPE_CHECKING:
    pass
from core.data.images import (
    MAX_IMAGE_PIXELS,
    ImageSet,
    _check_budget,
    _check_path,
    _images_from_array,
    check_input_size,
    os_error_message,
    to_float,
)
from core.data.npy import open_npy

__all__ = [
    "IMAGE_EXTENSIONS",
    "image_to_tensor",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


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

    from core.safety.isolation import report_progress  # reaches the caller's bar from the reader

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
