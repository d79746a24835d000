"""`load_images`: one entry point that recognises a data set's format and reads it with the
format's module."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import DataError
from core.safety.paths import note_read

if TYPE_CHECKING:
    pass
from core.data.idx import _IDX_RE, _idx_pairs, _load_idx_dir
from core.data.imagefolder import _class_dirs, _load_image_folder
from core.data.images import ImageSet, _check_path, os_error_message
from core.data.npy import _has_npy, _load_npy

__all__ = [
    "load_images",
]

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


def _load_any(p: Path, split: str | None, limit: int | None, size) -> ImageSet:
    if p.is_file():
        return _load_file(p, split=split, limit=limit)

    # A split given as a sub-folder (train/, test/, clean/ ...) that holds a data set.
    if split is not None and (p / split).is_dir() and not _is_cifar_dir(p):
        sub = p / split
        if _has_npy(sub) or _idx_pairs(sub) or _is_cifar_dir(sub) or _class_dirs(sub):
            return _load_any(sub, None, limit, size)

    from core.data.stl10 import load_stl10, stl10_dir  # STL-10 binary folder (own module)

    if (stl := stl10_dir(p)) is not None:
        return load_stl10(stl, split, limit)
    if _is_cifar_dir(p):
        from core.data.cifar import load_cifar

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
        from core.data.cifar import load_cifar

        return load_cifar(p.parent, split, limit)
    raise DataError(
        f"cannot read {p}: give a folder (CIFAR batches, idx files, data.npy + labels.npy, or "
        "an ImageFolder tree), or data.npy / an idx file"
    )


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
