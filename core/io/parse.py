"""What runs in the reader child: sniff the format, read it, unwrap the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.errors import (
    CheckpointError,
)
from core.io.backdoorbench import BackdoorBenchResult
from core.io.checkpoint import _pack
from core.io.readers import _not_a_checkpoint, _read_pickle, _read_safetensors, _read_zip, _sniff
from core.io.unwrap import _holds_weights, _unwrap
from core.model import weight_sets

# ---- reading the file (in the child process) ----------------------------------------------


def _parse_file(
    path_text: str, trust_pickle: bool, max_bytes: int, weights: str | None = None
) -> tuple[dict, list[Tensor]]:
    """Child side of load_checkpoint: the file → JSON info and a list of tensors."""
    import warnings

    warnings.simplefilter("ignore")
    path = Path(path_text)
    trigger: Tensor | None = None
    meta: Any = None
    extras: dict[str, Tensor] = {}  # tensors beside the weights, by name
    more: dict[str, Any] = {}  # JSON beside the metadata (notices, what the extras are)
    try:
        kind = _sniff(path)
    except OSError as e:
        raise CheckpointError(f"Cannot read {path}: {e.strerror or e}") from None
    if kind == "safetensors":
        fmt, raw, meta = "safetensors", *_read_safetensors(path)
    elif kind == "zip":
        read = _read_zip(path, trust_pickle, max_bytes, weights)
        if isinstance(read, BackdoorBenchResult):
            fmt, raw, meta = read.format, read.state_dict, read.meta
            extras, more = _backdoorbench_payload(read)
        else:
            fmt, raw, trigger, meta = read
    elif kind in ("legacy", "pickle"):
        obj = _read_pickle(path, kind, trust_pickle)
        fmt, raw, trigger, meta = _unwrap(obj, path, weights)
    elif kind == "truncated zip":
        raise CheckpointError(
            f"{path.name} is a damaged or truncated zip archive (the format torch.save "
            "writes): its end, which lists what it holds, is missing; copy the file again"
        )
    else:
        raise CheckpointError(_not_a_checkpoint(path, f"it starts with {kind}"))
    if weights is not None and kind == "safetensors":
        weight_sets.choose({}, path, weights, _holds_weights)  # says there is no choice
    return _pack(path, fmt, raw, trigger, meta, extras, more)


def _backdoorbench_payload(result: BackdoorBenchResult) -> tuple[dict[str, Tensor], dict]:
    """A BackdoorBench file's backdoored test samples as named tensors, its notices as JSON."""
    extras: dict[str, Tensor] = {}
    more: dict[str, Any] = {"notices": [str(n) for n in result.notices]}
    samples = result.poisoned_test
    if samples is not None:
        extras["poisoned_images"], extras["poisoned_labels"] = samples.images, samples.labels
        more["poisoned"] = {"source": samples.source, "class_names": samples.class_names}
    return extras, more


def zygote_warm_up() -> None:
    """Parse one tiny file of each kind once in the zygote (core.safety.isolation): torch.load and
    safetensors import more modules on their first call, which every child would redo."""
    import tempfile

    from safetensors.torch import save_file

    tiny = {"w": torch.zeros(2)}
    with tempfile.TemporaryDirectory() as folder:
        for name, save in (
            ("warm.pth", lambda p: torch.save(tiny, p)),
            (
                "warm_legacy.pth",
                lambda p: torch.save(tiny, p, _use_new_zipfile_serialization=False),
            ),
            ("warm.safetensors", lambda p: save_file(tiny, str(p))),
        ):
            path = Path(folder) / name
            save(path)
            _parse_file(str(path), False, 2**20)
