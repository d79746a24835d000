"""Writing pruned models and reports: atomically, and never over the checkpoint they came from."""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from core.checkpoint import SAFETENSORS_META_KEY, ModelMetadata, sidecar_path
from core.errors import BnpError
from core.masks import PruneMask
from core.triggers import PatchTrigger

EXPORT_FORMATS = ("seed", "state_dict", "safetensors")
SUFFIXES = {"seed": ".pth", "state_dict": ".pth", "safetensors": ".safetensors"}


def format_for_path(path: str | Path) -> str:
    """The export format a file name implies (.safetensors, else the seed format)."""
    return "safetensors" if str(path).endswith(".safetensors") else "seed"


def atomic_write(path: str | Path, write: Callable[[Path], None], *, source: Path | None = None):
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    if source is not None and _same_file(path, source):
        raise BnpError(f"Refusing to overwrite the input checkpoint {source}: choose another name.")
    if path.is_dir():
        raise BnpError(f"{path} is a folder: choose a file name.")
    if not path.parent.is_dir():
        raise BnpError(f"The folder {path.parent} does not exist.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def pruned_state_dict(model: nn.Module, mask: PruneMask | None) -> dict[str, torch.Tensor]:
    """The model's state_dict with the mask written in (the model itself is left untouched)."""
    pruned = copy.deepcopy(model).cpu()
    if mask is not None:
        mask.apply_(pruned)
    return {k: v.detach().clone().contiguous() for k, v in pruned.state_dict().items()}


def export_model(
    model: nn.Module,
    path: str | Path,
    *,
    mask: PruneMask | None = None,
    fmt: str = "seed",
    metadata: ModelMetadata | None = None,
    trigger: torch.Tensor | None = None,
    source: str | Path | None = None,
) -> Path:
    """Write the (pruned) model as `fmt`: seed {'state_dict','trigger','meta'}, bare
    state_dict, or safetensors with our metadata in its header."""
    if fmt not in EXPORT_FORMATS:
        raise BnpError(f"Unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}.")
    state_dict = pruned_state_dict(model, mask)
    meta = metadata.to_dict() if metadata is not None else None
    if meta is not None and mask is not None:
        meta["extra"] = {**meta.get("extra", {}), "pruned": mask.neurons()}
    if meta is not None and trigger is not None and not (meta.get("attack") or {}).get("trigger"):
        # formats without a 'trigger' entry (safetensors) keep the seed's patch in the metadata
        meta["attack"] = {**(meta.get("attack") or {}), "trigger": PatchTrigger(trigger).to_dict()}

    def write(tmp: Path) -> None:
        if fmt == "seed":
            obj = {"state_dict": state_dict, "trigger": trigger}
            if meta is not None:
                obj["meta"] = meta
            torch.save(obj, tmp)
        elif fmt == "state_dict":
            torch.save(state_dict, tmp)  # no room for metadata: a sidecar JSON beside it
        else:
            header = {SAFETENSORS_META_KEY: json.dumps(meta)} if meta is not None else None
            save_file(state_dict, str(tmp), metadata=header)

    path = Path(path)
    atomic_write(path, write, source=Path(source) if source else None)
    if fmt == "state_dict" and meta is not None:
        text = json.dumps(json_ready(meta), indent=1)
        atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text))
    return path


def json_ready(value):
    """Tensors to lists, NaN/inf to None, recursively, so json.dump writes valid JSON."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, report: dict, *, source: str | Path | None = None) -> Path:
    """Write a JSON report atomically."""
    text = json.dumps(json_ready(report), indent=2)
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(text), source=Path(source) if source else None)
    return path


def method_report(inspection, method: str, k: float, mask: PruneMask) -> dict:
    """Report fields of one method at one threshold: flagged neurons and every score."""
    return {
        "method": method,
        "threshold": k,
        "flagged": mask.neurons(),
        "pruned": mask.count(),
        "scores": inspection.scores(method),
    }


def session_metadata(inspection) -> ModelMetadata:
    """The checkpoint's metadata with what the session knows now: its input size and
    normalisation (overrides included), target label and trigger, so that reopening an
    export reproduces the session's predictions."""
    meta = copy.deepcopy(inspection.ckpt.metadata)
    spec = inspection.spec
    meta.input_size = tuple(spec.size)
    meta.mean = tuple(spec.mean) if spec.mean else None
    meta.std = tuple(spec.std) if spec.std else None
    meta.target_label = inspection.target
    if inspection.trigger is not None:
        meta.attack = {**(meta.attack or {}), "trigger": inspection.trigger.to_dict()}
    return meta
