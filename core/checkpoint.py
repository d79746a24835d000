"""Safe loading of every checkpoint format we accept, and the metadata that travels with it.

A checkpoint is a stranger's file: it is parsed in a child process (`core.isolation`) under a
wall-clock limit, a memory limit and the caller's cancel, and only plain tensors and JSON come
back. Pickled files are only ever read with `torch.load(weights_only=True)`; a TorchScript
archive's weights are read as data (`core.torchscript`) and its forward is converted into
allowed operations (`core.scripted`; used when no registered architecture fits, or when it
computes something else than the registered one's), its code never run; anything that needs
full unpickling (which can run arbitrary code) is refused unless the caller opts in with
`trust_pickle=True`.
Zip sizes are checked before anything is unpacked, and metadata is validated when it is read.
Formats: the seed's `{'state_dict', 'trigger'}`, bare state_dicts (metadata in a `<file>.bnp.json`
sidecar when we wrote them), `{'model'|'net'|'state_dict': ...}` wrappers, `module.`/`model.`
prefixes, plain pickles (trusted), safetensors (our metadata as JSON under the header key
"bnp_meta"), TorchScript archives and BackdoorBench result files (`core.backdoorbench`, read in
the child too; their backdoored test images come back as tensors beside the weights).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import pickle
import pickletools
import re
import stat
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core import backdoorbench, described, weight_sets
from core.architectures import (
    ARCHITECTURES,
    Detection,
    detect_architecture,
    running_stats_notice,
)
from core.backdoorbench import BackdoorBenchResult
from core.checks import (
    MAX_CHANNELS,
    MAX_INPUT_SIDE,
    TINY_STD,
    check_normalisation,
    check_target,
)
from core.data import ImageSet
from core.errors import (
    ArchitectureMismatch,
    BnpError,
    CheckpointError,
    DataError,
    UnsafeCheckpointError,
)
from core.isolation import MEMORY_ENV, Parsed, default_memory_limit, run_isolated
from core.torchscript import CustomStateError, is_torchscript, read_torchscript

SAFETENSORS_META_KEY = "bnp_meta"
TORCHSCRIPT_META_FILE = "bnp_meta.json"
SIDECAR_SUFFIX = ".bnp.json"
# Keys under which training scripts commonly nest the weights, tried in this order.
WRAPPER_KEYS = weight_sets.MODEL_KEYS + weight_sets.EMA_KEYS
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
        if target is not None:  # the rule every target obeys (core.checks.check_target)
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
# The input side, channels and smallest std are core.checks' (InputSpec checks the same).
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
    """Per-channel mean/std as every input spec takes them (core.checks.check_normalisation),
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


def load_checkpoint(
    path: str | Path,
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
    cancel: Callable[[], bool] | None = None,
    timeout: float | None = None,
    memory_limit: int | None = None,
    inputs: Mapping[str, Any] | None = None,
    weights: str | None = None,
    model_code: str | None = None,
    mapped: bool = False,
) -> LoadedCheckpoint:
    """Load a checkpoint of any supported format into a registered architecture, or use the
    file's own module: a trusted pickled module as it is, a TorchScript archive of an
    unregistered network converted into plain layers and allowed operations (`core.scripted`).
    A TorchScript archive whose weights fit a registered architecture is converted too and
    compared with it on a fixed probe input: its own forward is used when it differs.

    ``inputs`` (the command line's overrides: "size", "mean", "std") replace what the file's
    metadata says before it is checked, so a wrong field can be corrected rather than refused.

    The file is parsed in a child process (`core.isolation`): past ``timeout`` seconds
    (default $BNP_PARSE_TIMEOUT or 120) or ``memory_limit`` bytes (default $BNP_PARSE_MEMORY_MB
    or 4 GiB) it is stopped with a CheckpointError; ``cancel()`` returning True stops it with
    ``Cancelled``. Only plain tensors and JSON come back; the model is built here.
    A plain `torch.save` zip (tensors in dicts and lists, nothing else named) is read in this
    process instead, by `core.torch_zip`'s own pickle machine, which builds nothing a file
    names; ``mapped=True`` leaves its tensors over the file's mapped records instead of
    copying them (for a short-lived reader such as `bnp info`: see `core.torch_zip`).

    ``weights`` ("model" or "ema") chooses between a model's weights and its EMA copy where a
    file holds both (`core.weight_sets`; default the model's). ``model_code``
    ("FILE.py:CALLABLE") builds the model with the user's own code instead (`core.model_code`:
    it runs that code) and loads the weights into it strictly.
    """
    path = Path(path)
    _check_path(path)
    from core.safety import note_read

    note_read(path, sidecar_path(path))  # never written over by this run's outputs
    code = None
    if model_code is not None:
        from core import model_code as user_code

        if arch is not None:
            raise CheckpointError("Give --arch or --model-code, not both.")
        code = user_code.parse(model_code)
    max_bytes = memory_limit or default_memory_limit()
    parsed = _read_here(path, max_bytes, weights, mapped, cancel)
    if parsed is None:  # not a plain torch.save zip: the isolated child reads it
        parsed = run_isolated(
            "core.checkpoint:_parse_file", str(path.absolute()), bool(trust_pickle),
            max_bytes, weights, what=f"Reading {path.name}",
            error=CheckpointError, timeout=timeout, memory_limit=memory_limit, cancel=cancel,
        )  # fmt: skip
    info = parsed.info
    fmt, names, extra_names = str(info["format"]), list(info["names"]), list(info["extras"])
    state_dict = dict(zip(names, parsed.tensors[: len(names)], strict=True))
    extras = dict(zip(extra_names, parsed.tensors[len(names) :], strict=True))
    trigger = extras.get("trigger")
    meta = _parse_meta_json(info["meta"], path) if info.get("meta") is not None else None

    if meta is None:
        meta = _read_sidecar(path)  # our bare state_dict exports keep metadata beside them
    meta = _with_inputs(meta, inputs)
    if code is not None:
        return _code_checkpoint(path, fmt, code, state_dict, meta, info, extras, trigger)

    own = bool(info.get("own_module")) and trust_pickle and arch is None
    try:
        detection = _detect(state_dict, arch, meta)
    except ArchitectureMismatch as e:
        if fmt == "torchscript" and arch is None:
            # the archive's own forward, converted into allowed operations (core.scripted)
            from core.scripted import load_scripted

            model = load_scripted(
                path, state_dict, trust_pickle, str(e), cancel, timeout, memory_limit
            )
            return _own_checkpoint(path, fmt, model, state_dict, meta, info, extras, trigger)
        carries_module = fmt == "pickled-module" or fmt.startswith("wrapped:")
        if not own and carries_module and trust_pickle and arch is None:
            raise ArchitectureMismatch(f"{e} {NO_MODULE}") from None
        if not own:
            raise
        detection = None
    if own:  # the file carries its own module and the user trusts it: use it as it is
        model = own_module(path, state_dict)
        return _own_checkpoint(path, fmt, model, state_dict, meta, info, extras, trigger, detection)
    metadata = _metadata(detection, meta)
    _check_trigger(trigger, path)
    poisoned_test = _poisoned_test(info, extras, metadata, path)
    notices = _notices(info, path) + list(detection.notices) + running_stats_notice(detection)
    notices += _contradictions(detection, meta)
    # built now, or on first use where `bnp info` described this very layout before
    model = described.deferred(detection, state_dict, path)
    if fmt == "torchscript" and arch is None:
        # the archive carries its own forward: use it when it is not the registered one's
        from core.scripted import check_own_forward

        check = check_own_forward(
            path,
            model.get(),
            state_dict,
            detection.arch,
            metadata.in_channels,
            metadata.input_size,
            trust_pickle,
            cancel,
            timeout,
            memory_limit,
        )
        if check.module is not None:
            notice = OWN_FORWARD_NOTICE.format(arch=detection.arch, how=check.difference)
            known = {  # the size and channels the registered build was probed with
                **(meta or {}),
                "input_size": list(metadata.input_size),
                "in_channels": metadata.in_channels,
            }
            return _own_checkpoint(
                path, fmt, check.module, state_dict, known, info, extras, trigger, detection, notice
            )
        notices += [check.notice] if check.notice else []
    return LoadedCheckpoint(
        path=path,
        format=fmt,
        model=model,
        state_dict=state_dict,
        metadata=metadata,
        trigger=trigger,
        poisoned_test=poisoned_test,
        notices=notices,
    )


# ---- a file that carries its own module (trusted) --------------------------------------------


def _own_checkpoint(
    path: Path,
    fmt: str,
    model: nn.Module,
    state_dict: dict[str, Tensor],
    meta: Mapping[str, Any] | None,
    info: Mapping[str, Any],
    extras: Mapping[str, Tensor],
    trigger: Tensor | None,
    detection: Detection | None = None,
    notice: str | None = None,
) -> LoadedCheckpoint:
    """A checkpoint whose model is the file's own module (pickled, or converted TorchScript);
    ``notice`` replaces the one said about it."""
    metadata = module_metadata(model, state_dict, meta, path)
    cls = metadata.arch.removesuffix(UNREGISTERED_TAIL)  # the network's name, as shown
    notices = [OWN_MODULE_NOTICE.format(cls=cls)]
    if detection is not None:  # its weights fit a registered architecture too
        probed = metadata.to_dict()
        if not (meta and meta.get("input_size")):
            del probed["input_size"]  # the architecture's native size, not the first that ran
        metadata = _metadata(detection, {**probed, **dict(meta or {})})
        notices = [OWN_FITS_NOTICE.format(cls=cls, arch=detection.arch), *detection.notices]
    elif fmt == "torchscript":
        notices = [SCRIPTED_NOTICE.format(cls=cls)]
    if notice is not None:
        notices = [notice]
    no_stats = tuple(
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is None
    )
    _check_trigger(trigger, path)
    return LoadedCheckpoint(
        path=path,
        format=fmt,
        model=model,
        state_dict=state_dict,
        metadata=metadata,
        trigger=trigger,
        poisoned_test=_poisoned_test(info, extras, metadata, path),
        notices=_notices(info, path)
        + notices
        + (_guessed_size_notice(meta, metadata) if detection is None else [])
        + running_stats_notice(
            Detection(metadata.arch, metadata.num_classes, metadata.in_channels, no_stats)
        ),
    )


def _code_checkpoint(path, fmt, code, state_dict, meta, info, extras, trigger) -> LoadedCheckpoint:
    """The model built by the user's code (core.model_code), holding the file's weights."""
    from core import model_code as user_code

    model = user_code.build(code)
    user_code.load_weights(model, state_dict, code, path.name)
    notice = (
        f"The model was built by your code {code} (it ran on this computer) and the file's "
        "weights were loaded into it strictly; exports reopen with the same --model-code."
    )
    ckpt = _own_checkpoint(path, fmt, model, state_dict, meta, info, extras, trigger, None, notice)
    ckpt.metadata.arch = code.label
    ckpt.metadata.extra["model_code"] = str(code)
    return ckpt


OWN_MODULE_NOTICE = (
    "The file's own module ({cls}) is used as it is: its architecture is not registered. "
    "Export it as TorchScript (--format torchscript) to reopen it as it is; a state_dict or "
    "safetensors export keeps its weights (with a sidecar of metadata); the seed format, which "
    "is reopened by architecture, needs a registered one."
)
OWN_FITS_NOTICE = (
    "The file's own module ({cls}) is used as it is, with its own forward; its weights also "
    "fit {arch}, so exports in the seed, state_dict or safetensors format reopen as {arch} "
    "(TorchScript exports keep this forward)."
)
SCRIPTED_NOTICE = (
    "The archive's own forward ({cls}) is used as it is: its architecture is not registered, "
    "and its TorchScript graph was converted into plain layers and allowed tensor operations "
    "without running its code. Export it as TorchScript (--format torchscript) to reopen it."
)
OWN_FORWARD_NOTICE = (
    "The archive's forward differs from the registered {arch}'s ({how} on a fixed probe "
    "input), so the archive's own is used: its TorchScript graph converted into plain layers "
    "and allowed tensor operations without running its code. A TorchScript export "
    "(--format torchscript) keeps this forward; seed, state_dict and safetensors exports "
    "reopen as {arch}, with {arch}'s forward."
)
NO_MODULE = "It holds no module of its own to use instead."
GUESSED_SIDES = (32, 28, 64, 96, 224)  # tried in turn when the metadata names no input size
UNREGISTERED_TAIL = " (the file's own module, not registered)"
UNREGISTERED_ARCH = "{cls}" + UNREGISTERED_TAIL


def _guessed_size_notice(meta: Mapping[str, Any] | None, metadata: ModelMetadata) -> list[str]:
    if meta and meta.get("input_size"):
        return []
    h, w = metadata.input_size
    return [
        f"The file names no input size: {h}×{w} is the first size tried that the module maps "
        "to class scores; set the right one before trusting any number."
    ]


def own_module(path: Path, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Trusted only: the pickled nn.Module of ``path`` as the model (CPU, eval).

    The child has already parsed the file with the user's consent, but a module cannot come
    back from it as tensors: it is unpickled again here, and must hold exactly the weights the
    child read (the file did not change in between).
    """
    kind = _sniff(path)
    obj = (
        _read_pickle(path, kind, True) if kind in ("legacy", "pickle") else _torch_load(path, True)
    )
    if isinstance(obj, Mapping):  # {"model": module, "epoch": ...} as training scripts save
        obj = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), nn.Module)), obj)
    if not isinstance(obj, nn.Module):
        raise ArchitectureMismatch(NO_MODULE)
    model = obj.cpu().eval()
    mine = _clean_state_dict(model.state_dict(), path)
    same = mine.keys() == state_dict.keys() and all(
        same_tensor(mine[k], v) for k, v in state_dict.items()
    )
    if not same:
        raise CheckpointError(f"{path.name} changed while it was read: its weights differ.")
    return model


def module_metadata(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    meta: Mapping[str, Any] | None,
    path: Path,
) -> ModelMetadata:
    """Metadata of a module used as it is: the class count from one forward pass on zeros of
    the metadata's input size, or of the first guessed size that runs."""
    merged = dict(meta or {})
    convs = [v for v in state_dict.values() if v.dim() == 4]
    channels = merged.get("in_channels") or (int(convs[0].shape[1]) if convs else 3)
    sides: list[Any] = [merged["input_size"]] if merged.get("input_size") else []
    sides += [(s, s) for s in GUESSED_SIDES]
    for size in sides:
        hw = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, int(channels), *hw))
        except Exception as e:  # noqa: BLE001 - a size the module does not accept: try the next
            if isinstance(e, MemoryError) or _allocation_failed(e):
                raise CheckpointError(
                    f"{path.name} holds a module ({type(model).__name__}) whose forward pass on "
                    f"one {hw[0]}×{hw[1]} input asks for more memory than allowed or available."
                ) from None
            continue
        if isinstance(out, Tensor) and out.dim() == 2:
            break
    else:
        raise CheckpointError(
            f"{path.name} holds a module ({type(model).__name__}) that maps no "
            f"{channels}-channel input of {', '.join(str(s) for s in GUESSED_SIDES)} pixels to "
            "class scores; give its input_size in the metadata."
        )
    name = type(model).__name__
    hint = merged.get("arch")
    if name == "GraphModule" and isinstance(hint, str) and hint.endswith(UNREGISTERED_TAIL):
        name = hint[: -len(UNREGISTERED_TAIL)]  # our TorchScript export of a converted module
    merged.update(
        arch=UNREGISTERED_ARCH.format(cls=name),
        num_classes=int(out.shape[1]),
        in_channels=int(channels),
        input_size=list(hw),
    )
    metadata = ModelMetadata.from_dict(merged)
    _check_metadata_trigger(metadata)
    return metadata


def _check_path(path: Path) -> None:
    """A readable, non-empty regular file; otherwise say exactly what it is."""
    try:
        st = path.stat()
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise CheckpointError(f"No such file: {path}") from None
        if e.errno == errno.ELOOP:
            raise CheckpointError(f"{path} is a loop of symbolic links.") from None
        raise CheckpointError(f"Cannot read {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path} is not a file but a folder.")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a file (a device, pipe or socket).")
    if st.st_size == 0:
        raise CheckpointError(f"{path.name} is empty.")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"Cannot read {path}: permission denied.")


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


def _pack(
    path: Path,
    fmt: str,
    raw: Any,
    trigger: Tensor | None,
    meta: Any,
    extras: dict[str, Tensor],
    more: dict[str, Any],
) -> tuple[dict, list[Tensor]]:
    """What a reader found → JSON info and a list of tensors (the child's answer)."""
    if isinstance(raw, _Chosen):  # one of two weight sets: say which
        more["notices"] = [*more.get("notices", []), *raw.notices]
    state_dict = _clean_state_dict(raw, path)
    if trigger is not None:
        extras["trigger"] = trigger
    info = {
        "format": fmt,
        "own_module": isinstance(raw, _ModuleWeights) or getattr(raw, "module", False),
        "names": list(state_dict),
        "extras": list(extras),
        "meta": None if meta is None else _meta_to_json(meta, path),
        **more,
    }
    return info, list(state_dict.values()) + list(extras.values())


def _read_here(
    path: Path, max_bytes: int, weights: str | None, mapped: bool, cancel
) -> Parsed | None:
    """A plain torch.save zip read in this process (`core.torch_zip`), packed as the child
    packs it; None for any other file, which the child reads as before."""
    from core import torch_zip
    from core.errors import Cancelled

    try:
        if path.suffix.lower() == ".safetensors" or path.stat().st_size > max_bytes:
            return None  # the child refuses it with its own words, or it is another format
        if not _starts_as_zip(path):
            return None  # the child refuses it with its own words, or it is another format
        obj = torch_zip.read(path, copy=not mapped, cancel=cancel)
    except (Cancelled, MemoryError):
        raise
    except Exception:  # noqa: BLE001 - NotPlain, or anything unforeseen: the child's turn
        return None
    if backdoorbench.is_backdoorbench(obj):
        return None  # its samples and layout are read by core.backdoorbench, in the child
    try:
        fmt, raw, trigger, meta = _unwrap(obj, path, weights)
        info, tensors = _pack(path, fmt, raw, trigger, meta, {}, {})
    except (BnpError, MemoryError):
        raise  # the words the child would have sent
    except Exception:  # noqa: BLE001 - unforeseen: the child answers as it always has
        return None
    return Parsed(info, tensors)


def _starts_as_zip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


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
    """Parse one tiny file of each kind once in the zygote (core.isolation): torch.load and
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


LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # torch's legacy format starts so


def _sniff(path: Path) -> str:
    """ "safetensors", "zip", "legacy" (old torch.save), "pickle", or the first bytes of junk."""
    if _is_safetensors(path):
        return "safetensors"
    with path.open("rb") as f:
        head = f.read(len(LEGACY_MAGIC))
    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        return "zip"
    if head.startswith(b"PK\x03\x04") and _zip_entry_name(path):
        return "truncated zip"  # a real first entry, but the archive's directory is gone
    if head.startswith(LEGACY_MAGIC):
        return "legacy"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return repr(head[:4])


def _zip_entry_name(path: Path) -> str:
    """The first entry's name when the file starts with a plausible zip entry header (a
    printable name of at most 1024 bytes), else ''."""
    with path.open("rb") as f:
        header = f.read(30)
        if len(header) < 30:
            return ""
        length = int.from_bytes(header[26:28], "little")
        name = f.read(length) if 0 < length <= 1024 else b""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return text if len(name) == length and text.isprintable() else ""


def _not_a_checkpoint(path: Path, detail: str) -> str:
    return (
        f"{path.name} is not a PyTorch checkpoint, safetensors file or TorchScript archive "
        f"({detail})."
    )


def same_tensor(a: Tensor, b: Tensor) -> bool:
    """Equal shape, dtype and values, NaN equal to NaN (a damaged model read twice is the same
    damaged model, not a file that changed while it was read)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))


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


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], Any]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is not a readable safetensors file: {e}") from None
    return tensors, header.get(SAFETENSORS_META_KEY)


def _read_zip(path: Path, trust_pickle: bool, max_bytes: int, weights: str | None = None):
    """torch.save's zip format or a TorchScript archive, sizes checked before anything is read:
    (format, weights, trigger, metadata), or a BackdoorBenchResult for BackdoorBench's files."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            _check_zip_sizes(archive, path, max_bytes)
            if is_torchscript(names):
                return _read_torchscript(archive, path, trust_pickle)
            data_pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(data_pkl) != 1:
                raise CheckpointError(
                    _not_a_checkpoint(path, "a zip archive without the data.pkl of torch.save")
                )
            refers_to = _check_pickle(io.BytesIO(archive.read(data_pkl[0])), path, count=1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as e:
        raise CheckpointError(_not_a_checkpoint(path, f"a damaged zip archive: {e}")) from None
    obj = None
    if not trust_pickle and any(name.startswith("numpy.") for name in refers_to):
        obj = backdoorbench.load_with_numpy(path)  # a BackdoorBench result needs numpy types
        if not backdoorbench.is_backdoorbench(obj):
            obj = None  # numpy types anywhere else still need trust: torch.load says why
            _refuse_beyond_numpy(path)
    if obj is None:
        obj = _torch_load(path, trust_pickle)
    if backdoorbench.is_backdoorbench(obj):
        try:
            return backdoorbench.from_dict(obj, path)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(
                f"{path.name} has BackdoorBench's layout but a malformed entry: {_first_line(e)}"
            ) from None
    return _unwrap(obj, path, weights)


def _refuse_beyond_numpy(path: Path) -> None:
    """A file with numpy types (as BackdoorBench's) that also refers to other objects (PIL
    images in a data set's state...): name those, not the numpy types torch meets first."""
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - torch.load says what is wrong with it
        return
    beyond = sorted(unsafe - backdoorbench.ALLOWED_GLOBALS)
    if beyond and any(name.startswith("numpy.") for name in unsafe):
        shown = ", ".join(beyond[:5]) + (f" (+{len(beyond) - 5})" if len(beyond) > 5 else "")
        raise UnsafeCheckpointError(
            _unsafe_text(
                path,
                f"beside the numpy arrays a BackdoorBench result holds, it refers to the Python "
                f"object(s) {shown}, which are not plain tensor data",
            )
        )


# A torch.save zip stores its records uncompressed; a compressed record expanding more than this
# (and to more than ZIP_RATIO_FLOOR bytes) is a decompression bomb.
ZIP_MAX_RATIO = 50
ZIP_RATIO_FLOOR = 16 * 2**20
ZIP_MAX_ENTRIES = 200_000


def _check_zip_sizes(archive: zipfile.ZipFile, path: Path, max_bytes: int) -> None:
    entries = archive.infolist()
    if len(entries) > ZIP_MAX_ENTRIES:
        raise CheckpointError(f"{path.name} is a zip archive of {len(entries)} files: refused.")
    total = 0
    for entry in entries:
        total += entry.file_size
        ratio = entry.file_size / max(entry.compress_size, 1)
        if entry.file_size > ZIP_RATIO_FLOOR and ratio > ZIP_MAX_RATIO:
            raise CheckpointError(
                f"{path.name} is a decompression bomb: its record {entry.filename} of "
                f"{entry.compress_size} bytes would expand to {entry.file_size} bytes. Refused."
            )
    if total > max_bytes:
        raise CheckpointError(
            f"{path.name} would take {total / 2**30:.3g} GiB of memory once unpacked, more than "
            f"the {max_bytes / 2**30:.3g} GiB allowed (${MEMORY_ENV} raises the limit). Refused."
        )


def _read_torchscript(archive: zipfile.ZipFile, path: Path, trust_pickle: bool):
    """Weights read as data (no code run); with trust, torch.jit.load for archives needing code."""
    try:
        state_dict, meta = read_torchscript(archive, path.name)
    except CustomStateError as e:
        if not trust_pickle:
            raise UnsafeCheckpointError(_unsafe_text(path, str(e))) from None
        state_dict, meta = _jit_load(path)
    return "torchscript", state_dict, None, meta


def _jit_load(path: Path) -> tuple[dict[str, Tensor], Any]:
    """Trusted only: torch.jit.load runs the archive's code."""
    extra = {TORCHSCRIPT_META_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # torch raises bare RuntimeErrors of many kinds here
        if _allocation_failed(e):
            raise MemoryError from None
        raise CheckpointError(
            f"{path.name} is not a readable TorchScript archive: {_first_line(e)}"
        ) from None
    return dict(module.state_dict()), extra[TORCHSCRIPT_META_FILE] or None


def _check_pickle(stream: Any, path: Path, count: int) -> list[str]:
    """Parse ``count`` pickles opcode by opcode without running them; their globals' names.

    Junk fails here and is said to be junk, instead of "needs trust" from the unpickler.
    """
    from core.pickle_guard import NestedSharing, check_sharing

    found: list[str] = []
    for _ in range(count):
        strings: list[str] = []
        try:
            start = stream.tell()
            check_sharing(stream)  # a hash bomb is refused by its structure, before any hashing
            stream.seek(start)
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    found.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
                elif isinstance(arg, str):
                    strings.append(arg)
        except NestedSharing as e:
            raise CheckpointError(f"{path.name} is refused: {e}.") from None
        except (ValueError, EOFError, UnicodeDecodeError, OverflowError) as e:
            raise CheckpointError(
                _not_a_checkpoint(path, f"its pickle data is damaged: {_first_line(e)}")
            ) from None
    return found


def _read_pickle(path: Path, kind: str, trust_pickle: bool) -> Any:
    """Old torch.save files through torch.load; plain pickles only without globals or trusted."""
    with path.open("rb") as f:
        names = _check_pickle(f, path, count=4 if kind == "legacy" else 1)
    if kind == "legacy":
        return _torch_load(path, trust_pickle)
    if names and not trust_pickle:
        listed = ", ".join(sorted(set(names))[:5])
        raise UnsafeCheckpointError(
            _unsafe_text(
                path,
                f"it is a plain Python pickle (not written by torch.save) that refers to {listed}",
            )
        )
    with path.open("rb") as f:
        try:
            return (pickle.Unpickler if trust_pickle else _PlainDataUnpickler)(f).load()
        except (RecursionError, MemoryError):
            raise
        except Exception as e:
            if _allocation_failed(e):
                raise MemoryError from None
            raise CheckpointError(f"{path.name} cannot be unpickled: {_first_line(e)}") from None


class _PlainDataUnpickler(pickle.Unpickler):
    """A pickle that names no global holds only plain data; refuse any it names all the same."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} was not an allowed global")


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """torch.load with weights_only=True, or full unpickling when the caller trusts the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise CheckpointError(f"{path.name} cannot be unpickled: {_first_line(e)}") from None
        raise UnsafeCheckpointError(_unsafe_message(path, str(e))) from None
    except (MemoryError, RecursionError):
        raise
    except Exception as e:  # torch.load raises KeyError, EOFError, RuntimeError... on other files
        text = _first_line(e)
        if _allocation_failed(e):
            raise MemoryError from None
        raise CheckpointError(
            f"{path.name} is a damaged PyTorch checkpoint (reading it failed with "
            f"{type(e).__name__}: {text or 'no details'})."
        ) from None


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


def _allocation_failed(e: BaseException) -> bool:
    """torch reports a failed allocation (the child's memory limit) as a RuntimeError."""
    text = str(e)
    return "can't allocate memory" in text or "bad_alloc" in text or "out of memory" in text


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
    return _unsafe_text(path, why)


def _unsafe_text(path: Path, why: str) -> str:
    return (
        f"{path.name} cannot be loaded safely: {why}. Loading it needs full unpickling, "
        "which can execute arbitrary code on this computer. Only if you trust where the file "
        "came from, opt in: --trust-pickle on the command line, confirm the prompt in the app, "
        "or load_checkpoint(path, trust_pickle=True) in Python."
    )


# ---- finding the weights inside what was read ---------------------------------------------


def _unwrap(
    obj: Any, path: Path, weights: str | None = None
) -> tuple[str, Any, Tensor | None, Mapping | None]:
    """(format, raw state_dict, trigger, metadata dict) from a torch.load result; ``weights``
    ("model" or "ema") chooses between a model's weights and its EMA copy (core.weight_sets)."""
    if weights is not None and not isinstance(obj, Mapping):
        weight_sets.choose({}, path, weights, _holds_weights)  # says there is no choice
    if isinstance(obj, nn.Module):
        return "pickled-module", _ModuleWeights(obj.state_dict()), None, None
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path.name} holds a {type(obj).__name__}, not a state_dict or a checkpoint dict."
        )
    if not obj:
        raise CheckpointError(f"{path.name} holds an empty dict: there are no weights in it.")
    if all(isinstance(v, Tensor) for v in obj.values()):
        if weights is not None:
            weight_sets.choose({}, path, weights, _holds_weights)  # says there is no choice
        return "state_dict", obj, None, None

    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise CheckpointError(f"The 'meta' entry of {path.name} is not a dict.")
    trigger = obj.get("trigger")
    if trigger is not None and not isinstance(trigger, Tensor):
        raise CheckpointError(f"The 'trigger' entry of {path.name} is not a tensor.")

    chosen, notices = weight_sets.choose(obj, path, weights, _holds_weights)
    candidates = [chosen] if chosen is not None else []
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
        inner = _ModuleWeights(inner.state_dict())
    if notices:
        inner = _Chosen(inner, notices=notices, module=isinstance(inner, _ModuleWeights))
    if key == "state_dict" and (trigger is not None or meta is not None):
        fmt = "seed"
    else:
        fmt = f"wrapped:{key}"
    return fmt, inner, (trigger.detach().clone() if trigger is not None else None), meta


class _ModuleWeights(dict):
    """The state_dict of a pickled module (the file carries a module of its own)."""


class _Chosen(dict):
    """One of several weight sets (core.weight_sets), with the notices that say which."""

    def __init__(self, weights: Mapping, *, notices: list[str], module: bool) -> None:
        super().__init__(weights)
        self.notices = notices
        self.module = module


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
    state_dict = weight_sets.drop_averaging_counter({k: v.detach() for k, v in raw.items()})
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


def _with_inputs(
    meta: Mapping[str, Any] | None, inputs: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """The file's metadata without the fields the caller overrides ("size", "mean", "std"), so
    a wrong field can be corrected instead of refused. The caller's values are checked where
    they are applied (core.data.InputSpec); a valid size also stands in for the file's here."""
    inputs = {k: v for k, v in (inputs or {}).items() if v is not None}
    dropped = {"size": "input_size", "mean": "mean", "std": "std"}
    if not any(k in inputs for k in dropped):
        return meta
    meta = meta or {}  # a bare state_dict: the caller's size stands in for the registry's
    kept = {k: v for k, v in meta.items() if k not in {dropped[k] for k in inputs if k in dropped}}
    size = inputs.get("size")
    if size is not None and all(isinstance(s, int) and 1 <= s <= MAX_INPUT_SIDE for s in size):
        kept["input_size"] = list(size)
    return kept


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


def _contradictions(detection: Detection, meta: Mapping[str, Any] | None) -> list[str]:
    """A notice for each field of the stored metadata that the weights contradict (the
    weights win: they are what the model computes with)."""
    from core.safety import printable

    notices = []
    stored = meta if isinstance(meta, Mapping) else {}
    for key, found in (
        ("arch", detection.arch),
        ("num_classes", detection.num_classes),
        ("in_channels", detection.in_channels),
    ):
        said = stored.get(key)
        if said is None or said == found or (key == "arch" and said not in ARCHITECTURES):
            continue
        notices.append(
            f"The metadata says {key} = {printable(repr(said), 40)}, but the weights are "
            f"{found}: the weights' value is used."
        )
    return notices


def _check_metadata_trigger(meta: ModelMetadata) -> None:
    """A trigger described in the metadata must rebuild and fit the model's input."""
    trigger = (meta.attack or {}).get("trigger")
    if not trigger:
        return
    from core.triggers import Trigger

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
