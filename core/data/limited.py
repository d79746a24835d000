"""Data sets and trigger images read like checkpoints: in the isolated reader
(``core.safety.isolation``).

``load_images`` and ``image_to_tensor`` (``core.data.load``) parse files strangers made: pickled
CIFAR batches, idx headers, PNG/TIFF decoders, .npy headers. Here they run in a forked child under
the same wall-clock limit ($BNP_PARSE_TIMEOUT, 120 s), memory limit ($BNP_PARSE_MEMORY_MB, 4 GiB)
and cancel as a checkpoint, so that a file that hangs the parser, allocates without bound or crashes
it (signal 11) ends in one DataError line instead of a frozen or dead app. Only tensors and JSON
come back. A FIFO, device or socket is refused before any child starts
(``core.safety.paths.check_input``); where ``fork`` is missing (Windows) the readers run in-process,
without the limits.

The command line and the window read user-given data and triggers through these two functions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from core.data.imagefolder import image_to_tensor
from core.data.images import ImageSet
from core.data.load import load_images
from core.errors import DataError
from core.safety import isolation
from core.safety.paths import check_input, note_read

__all__ = ["read_images", "read_image"]


def read_images(
    path: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    size: tuple[int, int] | None = None,
    cancel: Callable[[], bool] | None = None,
    timeout: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImageSet:
    """``core.data.load.load_images`` in the isolated reader (same arguments, same errors);
    ``progress(done, total)`` hears how many image files of a folder tree are read."""
    p = Path(path).expanduser()
    check_input(p, error=DataError)
    note_read(p)  # the parent's record: no output of this run replaces it
    if not isolation.available():
        return load_images(p, split=split, limit=limit, size=size)
    size_arg = list(size) if size is not None else None
    parsed = isolation.run_isolated(
        "core.data.limited:_images_child",
        str(p.absolute()),
        split,
        limit,
        size_arg,
        what=f"reading {p.name or p}",
        error=DataError,
        timeout=timeout,
        cancel=cancel,
        progress=progress,
    )
    info = parsed.info
    images, labels = parsed.tensors
    return ImageSet(images, labels, info["class_names"], info["source"], info["files"])


def read_image(
    path: str | Path,
    *,
    cancel: Callable[[], bool] | None = None,
    timeout: float | None = None,
) -> Tensor:
    """``core.data.imagefolder.image_to_tensor`` (one image or .npy, C×H×W in [0, 1]) in the
    isolated reader: a trigger file that hangs or crashes the decoder is one DataError line."""
    p = Path(path).expanduser()
    check_input(p, error=DataError)
    note_read(p)
    if not isolation.available():
        return image_to_tensor(p)
    parsed = isolation.run_isolated(
        "core.data.limited:_image_child",
        str(p.absolute()),
        what=f"reading {p.name or p}",
        error=DataError,
        timeout=timeout,
        cancel=cancel,
    )
    return parsed.tensors[0]


def _images_child(path: str, split, limit, size) -> tuple[dict, list[Tensor]]:
    """The child's half: read, hand back the tensors and the rest as JSON."""
    images = load_images(path, split=split, limit=limit, size=tuple(size) if size else None)
    info = {"class_names": images.class_names, "source": images.source, "files": images.files}
    return info, [images.images.contiguous(), images.labels.contiguous()]


def _image_child(path: str) -> tuple[dict, list[Tensor]]:
    return {}, [image_to_tensor(path).contiguous()]
