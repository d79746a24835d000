"""Checks on inputs: input size and channel bounds, normalisation, labels and target classes that
exist."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from numbers import Real
from typing import TYPE_CHECKING, Any

import torch

from core.errors import DataError

if TYPE_CHECKING:
    from core.data.images import InputSpec

__all__ = [
    "MAX_INPUT_SIDE",
    "MAX_CHANNELS",
    "TINY_STD",
    "tensor_warnings",
    "check_target",
    "check_labels",
    "check_normalisation",
]

# Bounds on a model's input, shared by the metadata reader (core.io.metadata.ModelMetadata) and
# the input spec (core.data.images.InputSpec), so that both refuse exactly the same values.
MAX_INPUT_SIDE = 1024  # pixels per side (ImageNet models take 224–600)
MAX_CHANNELS = 64
# A normalisation std below this multiplies inputs by more than 1000: almost surely broken. A
# stranger's metadata saying so is refused when read; a --std the user gives gets a warning.
TINY_STD = 1e-3
# A mean of images in [0, 1] (or 0..255) lies well inside this, for the metadata and the user
MAX_ABS_MEAN = 1e3


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity: one sum decides (NaN and ±inf carry through it) unless it
    overflows, then every element is checked."""
    if tensor.numel() == 0 or bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def _not_finite(named) -> list[str]:
    """Names of the floating-point tensors holding NaN or ±inf. One norm per tensor in a
    single call (`torch._foreach_norm`) decides for all (NaN and ±inf carry through a
    norm): a call per tensor costs more than reading the file, for a ResNet-50 on a busy
    machine (each wakes the thread pool). A norm that overflows, or a dtype the call does
    not take, is checked tensor by tensor."""
    named = [(n, t.detach()) for n, t in named if t.is_floating_point() and t.numel()]
    suspects: list[tuple[str, torch.Tensor]] = []
    by_dtype: dict[torch.dtype, list] = {}
    for item in named:
        by_dtype.setdefault(item[1].dtype, []).append(item)
    for group in by_dtype.values():
        try:
            norms = torch.stack(torch._foreach_norm([t for _, t in group]))
        except (RuntimeError, TypeError, NotImplementedError):
            suspects += group
            continue
        if not bool(torch.isfinite(norms).all()):
            bad = (~torch.isfinite(norms)).nonzero().reshape(-1).tolist()
            suspects += [group[i] for i in bad]
    found = {n for n, t in suspects if not _finite(t)}
    return [n for n, _ in named if n in found]


def tensor_warnings(
    named: Iterable[tuple[str, torch.Tensor]],
    norms: Iterable[tuple[str, torch.Tensor, int]],
    spec: InputSpec | None = None,
) -> list[str]:
    """``model_warnings`` from the tensors themselves: ``named`` the model's parameters and
    buffers in its order, ``norms`` its BatchNorms' (name, running_var, num_features)
    (`bnp info` of a model it has not built, core.model.described)."""
    warnings: list[str] = []
    broken = _not_finite(named)
    if broken:
        warnings.append(
            f"the weights hold NaN or infinite values ({_names(broken)}): the model's outputs "
            "are not numbers, so ACC, ASR and scores are meaningless; the checkpoint is damaged"
        )
    for name, running_var, num_features in norms:
        bad = (running_var <= 0).nonzero().reshape(-1).tolist()
        if bad:
            channels = ", ".join(str(c) for c in bad[:5]) + (" …" if len(bad) > 5 else "")
            warnings.append(
                f"BatchNorm {name} has running_var ≤ 0 in {len(bad)} of "
                f"{num_features} channels ({channels}): a variance cannot be ≤ 0, "
                "so the checkpoint is damaged; that layer's outputs and BNP/CLP scores are "
                "not meaningful"
            )
    if spec is not None and spec.std is not None:
        tiny = [s for s in spec.std if abs(s) < TINY_STD]
        if tiny:
            warnings.append(
                f"the normalisation std {list(spec.std)} multiplies inputs by more than "
                f"{1 / TINY_STD:.0f}: check the std you gave (--std)"
            )
    return warnings


def check_normalisation(values: Any, name: str, channels: int) -> tuple[float, ...]:
    """A per-channel ``mean`` or ``std``: one number or ``channels`` finite numbers, a std
    positive, a mean within ±MAX_ABS_MEAN; else a DataError. The metadata reader and
    InputSpec (the command line's --mean/--std, the window's input dialog) both check with
    this, so both refuse the same values."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    try:
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
            raise TypeError
        items = list(values)
        if any(isinstance(v, (bool, str, bytes)) for v in items):
            raise TypeError
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError, OverflowError):
        shown = repr(values)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise DataError(f"the normalisation {name} {shown} is not a list of numbers") from None
    if len(numbers) not in (1, channels):
        expected = "1 value" if channels == 1 else f"1 value or {channels}, one per channel"
        raise DataError(
            f"the normalisation {name} has {len(numbers)} values, but the model takes "
            f"{channels}-channel images: give {expected}"
        )
    if not all(math.isfinite(v) for v in numbers):
        raise DataError(
            f"the normalisation {name} {list(numbers)} is not finite: every input would "
            "become NaN; give finite numbers"
        )
    if name == "std" and any(v == 0 for v in numbers):
        raise DataError(
            f"the normalisation std {list(numbers)} contains 0 (division by zero); "
            "give the data's standard deviation, e.g. 0.25"
        )
    if name == "std" and any(v < 0 for v in numbers):
        raise DataError(
            f"the normalisation std {list(numbers)} is negative: a standard deviation is "
            "positive; give the data's standard deviation, e.g. 0.25"
        )
    if name == "mean" and any(abs(v) > MAX_ABS_MEAN for v in numbers):
        raise DataError(
            f"the normalisation mean {list(numbers)} is not one of images in [0, 1] "
            f"(each value must lie within ±{MAX_ABS_MEAN:g})"
        )
    return numbers


def _as_label(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, Real, torch.Tensor)):
        raise DataError(f"{what} must be a whole number, not {value!r}")
    number = float(value) if not isinstance(value, int) else value
    if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
        raise DataError(f"{what} must be a whole number, not {value!r}")
    return int(number)


def check_target(target: Any, num_classes: int) -> int:
    """The attack's target label as an int in 0..num_classes-1, else a DataError."""
    label = _as_label(target, "the target label")
    if not 0 <= label < num_classes:
        shown = f"{label:.3g}" if abs(label) > 1e6 else str(label)
        raise DataError(
            f"the target label {shown} is not one of the model's {num_classes} classes "
            f"(0–{num_classes - 1}); an ASR against it would read 0 % and hide a backdoor: "
            "give the label the attack aims at"
        )
    return label


def check_labels(labels: torch.Tensor, num_classes: int, role: str) -> None:
    """Labels the model cannot output would count as wrong (ACC 0 % silently): DataError."""
    if labels.numel() == 0:
        return
    top = int(labels.max())
    if top >= num_classes:
        beyond = int((labels >= num_classes).sum())
        raise DataError(
            f"{beyond} of {labels.numel()} {role} labels are ≥ {num_classes} (up to {top}), "
            f"but the model has {num_classes} classes (0–{num_classes - 1}): give the data "
            "set the model was trained on"
        )
