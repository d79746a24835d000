"""Safe loading of every checkpoint format we accept, and the metadata that travels with it.

A checkpoint is a stranger's file: it is parsed in a child process (`core.safety.isolation`) under a
wall-clock limit, a memory limit and the caller's cancel, and only plain tensors and JSON come
back. Pickled files are only ever read with `torch.load(weights_only=True)`; a TorchScript
archive's weights are read as data (`core.io.torchscript`) and its forward is converted into
allowed operations (`core.io.scripted`; used when no registered architecture fits, or when it
computes something else than the registered one's), its code never run; anything that needs
full unpickling (which can run arbitrary code) is refused unless the caller opts in with
`trust_pickle=True`.
Zip sizes are checked before anything is unpacked, and metadata is validated when it is read.
Formats: the seed's `{'state_dict', 'trigger'}`, bare state_dicts (metadata in a `<file>.bnp.json`
sidecar when we wrote them), `{'model'|'net'|'state_dict': ...}` wrappers, `module.`/`model.`
prefixes, plain pickles (trusted), safetensors (our metadata as JSON under the header key
"bnp_meta"), TorchScript archives and BackdoorBench result files (`core.io.backdoorbench`, read in
the child too; their backdoored test images come back as tensors beside the weights).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from core.data.checks import MAX_INPUT_SIDE
from core.errors import (
    ArchitectureMismatch,
    BnpError,
    CheckpointError,
)
from core.io import backdoorbench
from core.io.metadata import (
    LoadedCheckpoint,
    _check_trigger,
    _meta_to_json,
    _metadata,
    _notices,
    _parse_meta_json,
    _poisoned_test,
    _read_sidecar,
    sidecar_path,
)
from core.io.own_module import (
    NO_MODULE,
    OWN_FORWARD_NOTICE,
    _code_checkpoint,
    _own_checkpoint,
    own_module,
)
from core.io.unwrap import _Chosen, _clean_state_dict, _ModuleWeights, _unwrap
from core.model import described
from core.model.architectures import ARCHITECTURES, Detection, running_stats_notice
from core.model.detect import detect_architecture
from core.safety.isolation import Parsed, default_memory_limit, run_isolated


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
    unregistered network converted into plain layers and allowed operations (`core.io.scripted`).
    A TorchScript archive whose weights fit a registered architecture is converted too and
    compared with it on a fixed probe input: its own forward is used when it differs.

    ``inputs`` (the command line's overrides: "size", "mean", "std") replace what the file's
    metadata says before it is checked, so a wrong field can be corrected rather than refused.

    The file is parsed in a child process (`core.safety.isolation`): past ``timeout`` seconds
    (default $BNP_PARSE_TIMEOUT or 120) or ``memory_limit`` bytes (default $BNP_PARSE_MEMORY_MB
    or 4 GiB) it is stopped with a CheckpointError; ``cancel()`` returning True stops it with
    ``Cancelled``. Only plain tensors and JSON come back; the model is built here.
    A plain `torch.save` zip (tensors in dicts and lists, nothing else named) is read in this
    process instead, by `core.io.torch_zip`'s own pickle machine, which builds nothing a file
    names; ``mapped=True`` leaves its tensors over the file's mapped records instead of
    copying them (for a short-lived reader such as `bnp info`: see `core.io.torch_zip`).

    ``weights`` ("model" or "ema") chooses between a model's weights and its EMA copy where a
    file holds both (`core.model.weight_sets`; default the model's). ``model_code``
    ("FILE.py:CALLABLE") builds the model with the user's own code instead (`core.model.model_code`:
    it runs that code) and loads the weights into it strictly.
    """
    path = Path(path)
    _check_path(path)
    from core.safety.paths import note_read

    note_read(path, sidecar_path(path))  # never written over by this run's outputs
    code = None
    if model_code is not None:
        from core.model import model_code as user_code

        if arch is not None:
            raise CheckpointError("Give --arch or --model-code, not both.")
        code = user_code.parse(model_code)
    max_bytes = memory_limit or default_memory_limit()
    parsed = _read_here(path, max_bytes, weights, mapped, cancel)
    if parsed is None:  # not a plain torch.save zip: the isolated child reads it
        parsed = run_isolated(
            "core.io.parse:_parse_file", str(path.absolute()), bool(trust_pickle),
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
            # the archive's own forward, converted into allowed operations (core.io.scripted)
            from core.io.scripted import load_scripted

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
        from core.io.scripted import check_own_forward

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
    """A plain torch.save zip read in this process (`core.io.torch_zip`), packed as the child
    packs it; None for any other file, which the child reads as before."""
    from core.errors import Cancelled
    from core.io import torch_zip

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
        return None  # its samples and layout are read by core.io.backdoorbench, in the child
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
    """The file's metadata without the fields the caller overrides ("size", "mean", "std"), so a
    wrong field can be corrected instead of refused. The caller's values are checked where they
    are applied (core.data.images.InputSpec); a valid size also stands in for the file's here."""
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


def _contradictions(detection: Detection, meta: Mapping[str, Any] | None) -> list[str]:
    """A notice for each field of the stored metadata that the weights contradict (the
    weights win: they are what the model computes with)."""
    from core.safety.paths import printable

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
