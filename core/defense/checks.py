"""Checks that keep nonsense from looking like a result.

A model with a NaN weight, a BatchNorm whose running variance is ≤ 0, a normalisation that
divides by almost nothing, a target label outside the classes, test labels the model cannot
output, or a threshold that is not a number would each still give a clean-looking table (ACC 9 %,
ASR 100 % or 0 %, "pruned" neurons). These checks turn them into errors (``BnpError``
subclasses, one line each) or warnings (plain strings the command line prints on stderr and puts
in its report, and the window shows as a banner):

- ``model_warnings(model, spec)``: what is wrong with the weights or the input spec (warnings;
  ``Inspection.warnings`` holds them for the loaded model);
- ``check_outputs(bad, total, what)``: outputs NaN/inf on every sample → ``MeaninglessResult``,
  on some → a warning (``Metrics.warnings``);
- ``check_statistics(stats, role)``: non-finite pre-activations → ``MeaninglessResult``;
- ``check_target(target, num_classes)``, ``check_labels(labels, num_classes, role)``:
  ``DataError``;
- ``check_threshold(k)``: not a finite number → ``BnpError``;
- ``check_normalisation(values, name, channels)`` and the bounds ``MAX_INPUT_SIDE``,
  ``MAX_CHANNELS``, ``TINY_STD``: shared by the metadata reader (``ModelMetadata.from_dict``,
  which refuses a stranger's values when the file is read) and ``InputSpec`` (the user's
  overrides), so that both apply the same rules.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from core.errors import BnpError, MeaninglessResult

if TYPE_CHECKING:
    from core.data.images import InputSpec
    from core.defense.statistics import Statistics
from core.data.checks import _names, tensor_warnings

__all__ = [
    "model_warnings",
    "check_outputs",
    "check_statistics",
    "check_threshold",
]


def model_warnings(model: nn.Module, spec: InputSpec | None = None) -> list[str]:
    """What in the weights or the input spec makes the model's outputs meaningless."""
    norms = [
        (name, module.running_var, module.num_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None
    ]
    return tensor_warnings((*model.named_parameters(), *model.named_buffers()), norms, spec)


def check_outputs(bad: int, total: int, what: str = "test images") -> list[str]:
    """Outputs that are NaN/inf on every sample: MeaninglessResult; on some: one warning."""
    if total and bad == total:
        raise MeaninglessResult(
            f"the model's outputs are NaN or infinite on all {total} {what}: its weights, its "
            "BatchNorm statistics or the input normalisation are broken, so ACC/ASR would be "
            "meaningless"
        )
    if bad:
        return [
            f"the model's outputs are NaN or infinite on {bad} of {total} {what} "
            "(counted as wrong predictions)"
        ]
    return []


def check_statistics(stats: Statistics, role: str) -> None:
    """Pre-activations that are NaN/inf make every score of their layer meaningless."""
    broken = [
        name
        for name, layer in stats.layers.items()
        if not (bool(torch.isfinite(layer.mean).all()) and bool(torch.isfinite(layer.m2).all()))
    ]
    if broken:
        raise MeaninglessResult(
            f"the pre-activations of {_names(broken)} are NaN or infinite on the {role} "
            "samples: the model's weights, BatchNorm statistics or the input normalisation "
            "are broken, so no neuron can be scored"
        )


def check_threshold(k: Any) -> float:
    """A threshold k (or u) as a finite float, else a BnpError (−inf prunes all, NaN none)."""
    try:
        value = float(k)
    except (TypeError, ValueError):
        raise BnpError(f"the threshold must be a number, not {k!r}") from None
    if not math.isfinite(value):
        raise BnpError(
            f"the threshold must be a finite number, not {value} (−inf would prune every "
            "neuron, NaN none): give e.g. 3"
        )
    return value
