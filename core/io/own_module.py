"""Checkpoints that carry their own module (a pickled `nn.Module`, a TorchScript archive, the
analyst's model code): used as they are, with notices."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.errors import (
    ArchitectureMismatch,
    CheckpointError,
)
from core.io.metadata import (
    LoadedCheckpoint,
    ModelMetadata,
    _check_metadata_trigger,
    _check_trigger,
    _metadata,
    _notices,
    _poisoned_test,
)
from core.io.readers import _allocation_failed, _read_pickle, _sniff, _torch_load
from core.io.unwrap import WRAPPER_KEYS, _clean_state_dict, same_tensor
from core.model.architectures import Detection, running_stats_notice

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
    """The model built by the user's code (core.model.model_code), holding the file's weights."""
    from core.model import model_code as user_code

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
