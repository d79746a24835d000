"""Safe loading of every checkpoint format we accept, and the metadata that travels with it.

Pickled files are only ever read with `torch.load(weights_only=True)`; anything that needs
full unpickling (which can run arbitrary code) is refused unless the caller opts in with
`trust_pickle=True`. Formats: the seed's `{'state_dict', 'trigger'}`, bare state_dicts,
`{'model'|'net'|'state_dict': ...}` wrappers, DataParallel `module.` prefixes, safetensors
(our metadata as JSON under the header key "bnp_meta") and TorchScript archives.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.architectures import (
    ARCHITECTURES,
    Detection,
    build_detected,
    detect_architecture,
    running_stats_notice,
)
from core.backdoorbench import read_backdoorbench
from core.data import ImageSet
from core.errors import ArchitectureMismatch, CheckpointError, UnsafeCheckpointError

SAFETENSORS_META_KEY = "bnp_meta"
TORCHSCRIPT_META_FILE = "bnp_meta.json"
SIDECAR_SUFFIX = ".bnp.json"
# Keys under which training scripts commonly nest the weights, tried in this order.
WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict", "state_dict_ema")
PREFIXES = ("module.", "_orig_mod.", "model.")  # DataParallel, torch.compile, Lightning


@dataclass
class ModelMetadata:
    """What the engine needs to know about a model beyond its weights."""

    arch: str
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    target_label: int | None = None
    attack: dict | None = None  # {"kind": "badnets", ...}
    dataset: str | None = None
    class_names: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists) that from_dict reads back."""
        d = asdict(self)
        for key in ("input_size", "mean", "std"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelMetadata:
        """Read a dict written by to_dict; unknown keys are kept in `extra`."""
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("arch", "num_classes", "in_channels", "input_size") if k not in d]
        if missing:
            raise CheckpointError(f"The model metadata lacks {', '.join(missing)}.")
        extra = dict(d.get("extra") or {})
        extra.update({k: v for k, v in d.items() if k not in known})
        try:
            size = d["input_size"]
            input_size = (int(size), int(size)) if isinstance(size, int) else tuple(map(int, size))
            if len(input_size) != 2:
                raise ValueError("input_size needs two numbers (height, width)")
            return cls(
                arch=str(d["arch"]),
                num_classes=int(d["num_classes"]),
                in_channels=int(d["in_channels"]),
                input_size=input_size,
                mean=_floats(d.get("mean")),
                std=_floats(d.get("std")),
                target_label=None if d.get("target_label") is None else int(d["target_label"]),
                attack=None if d.get("attack") is None else dict(d["attack"]),
                dataset=None if d.get("dataset") is None else str(d["dataset"]),
                class_names=None if d.get("class_names") is None else list(d["class_names"]),
                extra=extra,
            )
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"The model metadata is malformed: {e}.") from None


def _floats(values: Any) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


@dataclass
class LoadedCheckpoint:
    """A model ready for inspection, with the weights and metadata it was loaded from."""

    path: Path
    format: str  # "seed", "state_dict", "wrapped:model", "safetensors", "torchscript", ...
    model: nn.Module  # eval mode, on CPU, strict-loaded
    state_dict: dict[str, Tensor]
    metadata: ModelMetadata
    trigger: Tensor | None  # the seed's 3×s×s patch when present
    poisoned_test: ImageSet | None = None  # backdoored test samples the file holds (ASR source)
    notices: list[str] = field(default_factory=list)  # what the user should know about the file


def load_checkpoint(
    path: str | Path, *, arch: str | None = None, trust_pickle: bool = False
) -> LoadedCheckpoint:
    """Load a checkpoint of any supported format into a registered architecture."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"No such file: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty.")

    trigger: Tensor | None = None
    meta: Mapping[str, Any] | None = None
    bb = None  # a BackdoorBench result file (core.backdoorbench)
    try:
        is_safetensors, is_torchscript = _is_safetensors(path), _is_torchscript(path)
    except OSError as e:
        raise CheckpointError(f"Cannot read {path}: {e.strerror or e}") from None
    if is_safetensors:
        fmt, raw, meta = "safetensors", *_read_safetensors(path)
    elif is_torchscript:
        fmt, raw, meta = "torchscript", *_read_torchscript(path)
    elif (bb := read_backdoorbench(path)) is not None:
        fmt, raw, meta = bb.format, bb.state_dict, bb.meta
    else:
        obj = _read_pickle(path, trust_pickle)
        fmt, raw, trigger, meta = _unwrap(obj, path)

    if meta is None:
        meta = _read_sidecar(path)  # our bare state_dict exports keep metadata beside them
    state_dict = _clean_state_dict(raw, path)
    detection = _detect(state_dict, arch, meta)
    model = build_detected(detection)  # BatchNorms without statistics in the file get none
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path.name} fits {detection.arch} by its keys and shapes but its weights "
            f"cannot be loaded: {str(e).splitlines()[0]}"
        ) from None
    model.eval()
    return LoadedCheckpoint(
        path=path,
        format=fmt,
        model=model,
        state_dict=state_dict,
        metadata=_metadata(detection, meta),
        trigger=trigger,
        poisoned_test=bb.poisoned_test if bb else None,
        notices=(list(bb.notices) if bb else []) + running_stats_notice(detection),
    )


# ---- reading the file ---------------------------------------------------------------------


def sidecar_path(path: Path) -> Path:
    """Where a bare state_dict export keeps its metadata: `<file>.bnp.json`."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _read_sidecar(path: Path) -> dict | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        return _parse_meta_json(side.read_text(), side)
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"Cannot read the metadata file {side.name}: {e}") from None


def _is_safetensors(path: Path) -> bool:
    """A `.safetensors` name, or the format's header: 8-byte length then a JSON object."""
    if path.suffix.lower() == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + n <= path.stat().st_size


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips like torch.save's, but carry compiled code."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict | None]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is not a readable safetensors file: {e}") from None
    meta = None
    if SAFETENSORS_META_KEY in header:
        meta = _parse_meta_json(header[SAFETENSORS_META_KEY], path)
    return tensors, meta


def _read_torchscript(path: Path) -> tuple[dict[str, Tensor], dict | None]:
    """Only the archive's weights are used: its compiled code is never run."""
    extra = {TORCHSCRIPT_META_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # torch raises bare RuntimeErrors of many kinds here
        raise CheckpointError(f"{path.name} is not a readable TorchScript archive: {e}") from None
    text = extra[TORCHSCRIPT_META_FILE]
    meta = _parse_meta_json(text, path) if text else None
    return dict(module.state_dict()), meta


def _parse_meta_json(text: str | bytes, path: Path) -> dict:
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise CheckpointError(
            f"The metadata stored in {path.name} is not valid JSON: {e}"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"The metadata in {path.name} is not a JSON object.")
    return meta


def _read_pickle(path: Path, trust_pickle: bool) -> Any:
    """torch.load with weights_only=True, or full unpickling when the caller trusts the file."""
    with path.open("rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..) or, in its legacy format, a protocol-2+ pickle
    # (0x80 ..); anything else is no checkpoint, not a pickle that merely needs trust
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):
        raise CheckpointError(
            f"{path.name} is not a PyTorch checkpoint, safetensors file or TorchScript archive "
            f"(it starts with {head!r})."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise CheckpointError(f"{path.name} cannot be unpickled: {_first_line(e)}") from None
        raise UnsafeCheckpointError(_unsafe_message(path, str(e))) from None
    except MemoryError:
        raise
    except Exception as e:  # torch.load raises KeyError, EOFError, RuntimeError... on other files
        raise CheckpointError(
            f"{path.name} is not a PyTorch checkpoint, safetensors file or TorchScript archive "
            f"(reading it failed with {type(e).__name__}: {_first_line(e) or 'no details'})."
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _unsafe_message(path: Path, torch_message: str) -> str:
    """Say why the file was refused and how to opt in, without torch's long advice text."""
    if m := re.search(r"GLOBAL (\S+) was not an allowed global", torch_message):
        why = f"it refers to the Python object {m.group(1)}, which is not plain tensor data"
    elif m := re.search(r"whose module (\S+) is blocked", torch_message):
        why = f"it refers to the blocked module {m.group(1)}"
    elif m := re.search(r"Unsupported operand (\S+)", torch_message):
        why = f"it uses a pickle instruction the safe loader refuses (opcode {m.group(1)})"
    else:
        why = "it holds more than tensors and plain containers"
    return (
        f"{path.name} cannot be loaded safely: {why}. Loading it needs full unpickling, "
        "which can execute arbitrary code on this computer. Only if you trust where the file "
        "came from, opt in: --trust-pickle on the command line, confirm the prompt in the app, "
        "or load_checkpoint(path, trust_pickle=True) in Python."
    )


# ---- finding the weights inside what was read ---------------------------------------------


def _unwrap(obj: Any, path: Path) -> tuple[str, Any, Tensor | None, Mapping | None]:
    """(format, raw state_dict, trigger, metadata dict) from a torch.load result."""
    if isinstance(obj, nn.Module):
        return "pickled-module", obj.state_dict(), None, None
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path.name} holds a {type(obj).__name__}, not a state_dict or a checkpoint dict."
        )
    if not obj:
        raise CheckpointError(f"{path.name} holds an empty dict: there are no weights in it.")
    if all(isinstance(v, Tensor) for v in obj.values()):
        return "state_dict", obj, None, None

    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise CheckpointError(f"The 'meta' entry of {path.name} is not a dict.")
    trigger = obj.get("trigger")
    if trigger is not None and not isinstance(trigger, Tensor):
        raise CheckpointError(f"The 'trigger' entry of {path.name} is not a tensor.")

    candidates = [k for k in WRAPPER_KEYS if _holds_weights(obj.get(k))]
    if not candidates:  # a single nested state_dict under a name we do not know
        candidates = [k for k, v in obj.items() if _holds_weights(v)]
        if len(candidates) != 1:
            keys = ", ".join(repr(k) for k in list(obj)[:10])
            raise CheckpointError(
                f"{path.name} holds a dict with keys {keys} but no model weights under "
                f"{', '.join(repr(k) for k in WRAPPER_KEYS)}."
            )
    key = candidates[0]
    inner = obj[key]
    if isinstance(inner, nn.Module):
        inner = inner.state_dict()
    if key == "state_dict" and (trigger is not None or meta is not None):
        fmt = "seed"
    else:
        fmt = f"wrapped:{key}"
    return fmt, inner, (trigger.detach().clone() if trigger is not None else None), meta


def _holds_weights(value: Any) -> bool:
    if isinstance(value, nn.Module):
        return True
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(v, Tensor) for v in value.values())
    )


def _clean_state_dict(raw: Any, path: Path) -> dict[str, Tensor]:
    """Check that it is a non-empty str -> Tensor mapping and drop wrapper prefixes."""
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError(f"{path.name} contains no weights.")
    bad = [k for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"The weights in {path.name} are not all named tensors (e.g. {bad[0]!r})."
        )
    state_dict = {k: v.detach() for k, v in raw.items()}
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _detect(
    state_dict: Mapping[str, Tensor], arch: str | None, meta: Mapping[str, Any] | None
) -> Detection:
    """The caller's arch wins; else the metadata's arch when it fits; else full detection."""
    if arch is not None:
        return detect_architecture(state_dict, arch)
    hint = meta.get("arch") if meta else None
    if isinstance(hint, str) and hint in ARCHITECTURES:
        try:
            return detect_architecture(state_dict, hint)
        except ArchitectureMismatch:
            pass  # the weights are the truth: fall back to trying every architecture
    return detect_architecture(state_dict)


def _metadata(detection: Detection, meta: Mapping[str, Any] | None) -> ModelMetadata:
    """Stored metadata completed from the detection; shapes always come from the weights."""
    merged = dict(meta or {})
    merged.update(
        arch=detection.arch,
        num_classes=detection.num_classes,
        in_channels=detection.in_channels,
    )
    if merged.get("input_size") is None:
        size = ARCHITECTURES[detection.arch].input_size
        merged["input_size"] = (size, size)
    return ModelMetadata.from_dict(merged)
