"""What a session holds and checks without Qt or torch: the range of k, thresholds read from
anywhere, what is wrong with a loaded model, and the text of an error."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from core.errors import BnpError

if TYPE_CHECKING:
    import torch

    from bnp_gui.workers import Job
    from core.defense.inspection import Inspection

DEFAULT_K = 3.0
# The one range of k: spin box, slider, the dragged line and saved settings all clamp to it.
K_MIN, K_MAX = 0.0, 10.0
# Smaller than the engine's default: Cancel and closing take effect at the next batch.
BATCH_SIZE = 128
# Lanes whose work belongs to the open model: a new model stops them, a failed open resumes them.
MODEL_LANES = ("collect", "preview", "curve", "neuron")

Neuron = tuple[str, int]


def valid_threshold(value: Any) -> float | None:
    """``value`` as a threshold k clamped to [K_MIN, K_MAX]; None when it is not a finite number
    (NaN, ±inf, text): a settings file or a caller may hold anything."""
    try:
        k = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(k):
        return None
    return float(round(min(max(k, K_MIN), K_MAX), 3))


def batchnorm_warning(model: torch.nn.Module) -> str:
    """A warning naming BatchNorm channels whose running variance is ≤ 0 or whose running
    statistics are not finite ("" when none): their scores are infinite or undefined."""
    import torch

    broken = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d) and module.running_var is not None:
            var, mean = module.running_var, module.running_mean
            bad = (var <= 0) | ~torch.isfinite(var) | ~torch.isfinite(mean)
            if bad.any():
                broken[name] = int(bad.sum())
    if not broken:
        return ""
    where = ", ".join(f"{name} ×{n}" for name, n in list(broken.items())[:3])
    more = f" and {len(broken) - 3} more layers" if len(broken) > 3 else ""
    total = sum(broken.values())
    return (
        f"{total} BatchNorm channel{'s' if total > 1 else ''} with a running variance ≤ 0 or "
        f"non-finite running statistics ({where}{more}): their scores are infinite or missing; the "
        "model's outputs may not be numbers. This checkpoint is damaged; do not trust its numbers."
    )


def model_warning(inspection: Inspection) -> str:
    """What is wrong with the loaded model itself, for the banner ("" when nothing): the
    command line's checks (``core.defense.checks.model_warnings``: NaN or infinite weights, a tiny
    normalisation std) and the BatchNorm channels whose statistics make scores meaningless."""
    lines = [
        w[:1].upper() + w[1:] + "."
        for w in getattr(inspection, "warnings", [])
        if not w.startswith("BatchNorm ")  # said per channel, with the layers, below
    ]
    bn = batchnorm_warning(inspection.model)
    return " ".join([*lines, bn] if bn else lines)


def _cancel_argument(loader, job: Job) -> dict:
    """``cancel=job.cancelled`` for a checkpoint loader that can stop mid-parse (the child-process
    loader kills its reader); {} for one that cannot, which then finishes before the job ends."""
    import inspect

    return {"cancel": job.cancelled} if "cancel" in inspect.signature(loader).parameters else {}


def describe_error(exc: BaseException) -> str:
    """The message a user should read for an engine or worker error."""
    text = str(exc).strip()
    if isinstance(exc, BnpError):
        return text or type(exc).__name__
    return text or type(exc).__name__
