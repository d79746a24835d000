"""Finding the weights inside a checkpoint dict: wrapper keys, prefixes, the model's own weight
set."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.errors import (
    CheckpointError,
)
from core.model import weight_sets

# Keys under which training scripts commonly nest the weights, tried in this order.
WRAPPER_KEYS = weight_sets.MODEL_KEYS + weight_sets.EMA_KEYS
PREFIXES = ("module.", "_orig_mod.", "model.")  # DataParallel, torch.compile, Lightning


def same_tensor(a: Tensor, b: Tensor) -> bool:
    """Equal shape, dtype and values, NaN equal to NaN (a damaged model read twice is the same
    damaged model, not a file that changed while it was read)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))


# ---- finding the weights inside what was read ---------------------------------------------


def _unwrap(
    obj: Any, path: Path, weights: str | None = None
) -> tuple[str, Any, Tensor | None, Mapping | None]:
    """(format, raw state_dict, trigger, metadata dict) from a torch.load result; ``weights``
    ("model" or "ema") chooses between a model's weights and its EMA copy
    (core.model.weight_sets)."""
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
    """One of several weight sets (core.model.weight_sets), with the notices that say which."""

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
