"""What travels with a checkpoint: its metadata, the `<file>.bnp.json` sidecar, and the checks
that keep a file's claims believable."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.data.checks import (
    MAX_CHANNELS,
    MAX_INPUT_SIDE,
    TINY_STD,
    check_normalisation,
    check_target,
)
from core.data.images import ImageSet
from core.errors import (
    CheckpointError,
    DataError,
)
from core.model import described
from core.model.architectures import ARCHITECTURES, Detection

SAFETENSORS_META_KEY = "bnp_meta"
TORCHSCRIPT_META_FILE = "bnp_meta.json"
SIDECAR_SUFFIX = ".bnp.json"


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
        """Read a dict written by to_dict; unknown keys are kept in `extra`.

        Every field is checked here, so that a stranger's metadata fails with one line now
        instead of a traceback (or an out-of-memory kill) later.
        """
        if not isinstance(d, Mapping):
            raise CheckpointError("The model metadata is not a dict.")
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("arch", "num_classes", "in_channels", "input_size") if k not in d]
        if missing:
            raise CheckpointError(f"The model metadata lacks {', '.join(missing)}.")
        extra = d.get("extra")
        if extra is not None and not isinstance(extra, Mapping):
            raise CheckpointError(
                f"The model metadata's 'extra' must be a dict, not {_kind(extra)}."
            )
        extra = dict(extra or {})
        extra.update({k: v for k, v in d.items() if k not in known})
        num_classes = _count(d["num_classes"], "num_classes", 1, MAX_CLASSES)
        in_channels = _count(d["in_channels"], "in_channels", 1, MAX_CHANNELS)
        size = d["input_size"]
        if isinstance(size, (list, tuple)):
            if len(size) != 2:
                raise CheckpointError(
                    f"The model metadata's input_size needs two numbers (height, width), "
                    f"got {_short(size)}."
                )
            input_size = tuple(_count(s, "input_size", 1, MAX_INPUT_SIDE) for s in size)
        else:
            side = _count(size, "input_size", 1, MAX_INPUT_SIDE)
            input_size = (side, side)
        target = d.get("target_label")
        if target is not None:  # the rule every target obeys (core.data.checks.check_target)
            try:
                target = check_target(target, num_classes)
            except DataError as e:
                raise CheckpointError(f"The model metadata's target_label: {e}.") from None
        attack = d.get("attack")
        if attack is not None and not isinstance(attack, Mapping):
            raise CheckpointError(
                f"The model metadata's 'attack' must be a dict, not {_kind(attack)}."
            )
        class_names = d.get("class_names")
        if class_names is not None:
            if not isinstance(class_names, (list, tuple)) or not all(
                isinstance(n, str) for n in class_names
            ):
                raise CheckpointError("The model metadata's class_names must be a list of names.")
            if len(class_names) != num_classes:
                raise CheckpointError(
                    f"The model metadata names {len(class_names)} classes for a model with "
                    f"{num_classes} outputs."
                )
        dataset = d.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            raise CheckpointError(f"The model metadata's dataset must be a name: {_kind(dataset)}")
        return cls(
            arch=str(d["arch"]),
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            mean=_normalisation(d.get("mean"), "mean", in_channels),
            std=_normalisation(d.get("std"), "std", in_channels),
            target_label=target,
            attack=None if attack is None else dict(attack),
            dataset=dataset,
            class_names=None if class_names is None else list(class_names),
            extra=extra,
        )


# Bounds on what metadata may declare: beyond them a model is no image classifier we can run.
# The input side, channels and smallest std are core.defense.checks' (InputSpec checks the same).
MAX_CLASSES = 100_000
MIN_STD = TINY_STD
MAX_ABS_MEAN = 1e3


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _count(value: Any, name: str, low: int, high: int) -> int:
    """An integer in [low, high] (integral floats accepted), else a one-line CheckpointError."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(
            f"The model metadata's {name} must be a whole number, got {_short(value)}."
        )
    if not low <= value <= high:
        raise CheckpointError(
            f"The model metadata's {name} is {_short(value)}; it must lie in {low}..{high}."
        )
    return value


def _normalisation(values: Any, name: str, channels: int) -> tuple[float, ...] | None:
    """Per-channel mean/std as every input spec takes them (core.data.checks.check_normalisation),
    and, in a stranger's metadata, a std of at least MIN_STD and a mean of images in [0, 1]."""
    if values is None:
        return None
    try:
        numbers = check_normalisation(values, name, channels)
    except DataError as e:
        raise CheckpointError(f"The model metadata's {name}: {e}.") from None
    if name == "std" and not all(v >= MIN_STD for v in numbers):
        raise CheckpointError(
            f"The model metadata's std {_short(values)} would divide the inputs by almost "
            f"nothing (each value must be at least {MIN_STD:g})."
        )
    if name == "mean" and any(abs(v) > MAX_ABS_MEAN for v in numbers):
        raise CheckpointError(
            f"The model metadata's mean {_short(values)} is not one of images in [0, 1]."
        )
    return numbers


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


LoadedCheckpoint.model = described.MODEL  # type: ignore[assignment]  # a Deferred builds on use


def _poisoned_test(
    info: Mapping[str, Any], extras: Mapping[str, Tensor], meta: ModelMetadata, path: Path
) -> ImageSet | None:
    """The backdoored test samples the child sent back (a BackdoorBench file's), checked."""
    images, labels = extras.get("poisoned_images"), extras.get("poisoned_labels")
    if images is None or labels is None:
        return None
    about = info.get("poisoned")
    about = about if isinstance(about, Mapping) else {}
    names = about.get("class_names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        names = None
    try:
        samples = ImageSet(images, labels, names, str(about.get("source") or path.name))
    except DataError as e:
        raise CheckpointError(f"The backdoored test samples in {path.name}: {e}") from None
    if samples.channels not in (1, 3):
        raise CheckpointError(
            f"The backdoored test samples in {path.name} have {samples.channels} channels."
        )
    low, high = (int(samples.labels.min()), int(samples.labels.max())) if len(samples) else (0, 0)
    if low < 0 or high >= meta.num_classes:
        raise CheckpointError(
            f"The backdoored test samples in {path.name} carry labels outside the model's "
            f"{meta.num_classes} classes."
        )
    return samples


def _notices(info: Mapping[str, Any], path: Path) -> list[str]:
    """What the child found worth telling the user about the file (plain lines of text)."""
    notices = info.get("notices") or []
    if not isinstance(notices, list) or not all(isinstance(n, str) for n in notices):
        raise CheckpointError(f"The reader of {path.name} sent back malformed notices.")
    return [" ".join(n.split())[:500] for n in notices[:20]]


def sidecar_path(path: Path) -> Path:
    """Where a bare state_dict export keeps its metadata: `<file>.bnp.json`."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _read_sidecar(path: Path) -> dict | None:
    """The metadata in `<file>.bnp.json` beside a bare state_dict (read here, in the parent:
    it is bounded JSON), or None when there is none."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        if side.stat().st_size > META_MAX_CHARS:
            raise CheckpointError(f"The metadata in {side.name} is too large.")
        return _parse_meta_json(side.read_text(encoding="utf-8"), side)
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"Cannot read the metadata file {side.name}: {e}") from None


def _meta_to_json(meta: Any, path: Path) -> str:
    """The metadata as JSON text, bounded in depth and size (it crosses to the parent)."""
    if isinstance(meta, (str, bytes)):
        text = meta.decode("utf-8", "replace") if isinstance(meta, bytes) else meta
        if len(text) > META_MAX_CHARS:
            raise CheckpointError(f"The metadata in {path.name} is too large.")
        _parse_meta_json(text, path)  # fails here, in the child, if hostile
        return text
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"The 'meta' entry of {path.name} is not a dict.")
    _check_depth(meta, path)
    try:
        text = json.dumps(meta, default=_json_default)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"The metadata in {path.name} is not plain data: {e}") from None
    if len(text) > META_MAX_CHARS:
        raise CheckpointError(f"The metadata in {path.name} is too large.")
    return text


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor) and value.numel() <= 1_000_000:
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not plain data")


META_MAX_CHARS = 16 * 2**20
META_MAX_DEPTH = 32


def _check_depth(obj: Any, path: Path) -> None:
    """Containers nested at most META_MAX_DEPTH deep (checked without recursion)."""
    stack = [(obj, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if depth > META_MAX_DEPTH or seen > 10_000_000:
            raise CheckpointError(
                f"The metadata in {path.name} is nested more than {META_MAX_DEPTH} levels deep."
            )
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def _parse_meta_json(text: str | bytes, path: Path) -> dict:
    if len(text) > META_MAX_CHARS:
        raise CheckpointError(f"The metadata in {path.name} is too large.")
    try:
        meta = json.loads(text)
    except RecursionError:
        raise CheckpointError(
            f"The metadata in {path.name} is nested too deeply to be read."
        ) from None
    except ValueError as e:
        raise CheckpointError(
            f"The metadata stored in {path.name} is not valid JSON: {e}"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"The metadata in {path.name} is not a JSON object.")
    _check_depth(meta, path)
    return meta


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


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
    metadata = ModelMetadata.from_dict(merged)
    _check_metadata_trigger(metadata)
    return metadata


def _check_metadata_trigger(meta: ModelMetadata) -> None:
    """A trigger described in the metadata must rebuild and fit the model's input."""
    trigger = (meta.attack or {}).get("trigger")
    if not trigger:
        return
    from core.data.triggers import Trigger

    position = trigger.get("position") if isinstance(trigger, Mapping) else None
    if position is not None and not isinstance(position, str):
        if not (
            isinstance(position, (list, tuple))
            and len(position) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in position)
        ):
            raise CheckpointError(
                f"The trigger in the model metadata is placed at {_short(position)}: a position "
                "is a name (bottom-right, top-left, ...) or [y, x]."
            )
    try:
        built = Trigger.from_dict(trigger)
        built.apply(torch.zeros(1, meta.in_channels, *meta.input_size))
    except Exception as e:  # DataError, and IndexError/TypeError from odd fields alike
        raise CheckpointError(
            f"The trigger in the model metadata is unusable: {_first_line(e) or type(e).__name__}"
        ) from None


def _check_trigger(trigger: Tensor | None, path: Path) -> None:
    """The seed's 'trigger' entry: a C×s×s patch of finite numbers."""
    if trigger is None:
        return
    if trigger.ndim != 3 or not 1 <= trigger.shape[1] <= MAX_INPUT_SIDE:
        raise CheckpointError(
            f"The 'trigger' of {path.name} is not a C×s×s patch (shape {tuple(trigger.shape)})."
        )
    if not trigger.is_floating_point() or not bool(torch.isfinite(trigger).all()):
        raise CheckpointError(f"The 'trigger' of {path.name} is not finite floating point.")
