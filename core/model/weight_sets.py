"""Which weight set of a checkpoint dict to use: the model's, or its EMA copy.

Training scripts that keep an exponential moving average (EMA) of the weights save it beside
the model's: torchvision's references as `{'model': ..., 'model_ema': AveragedModel state}`
(keys `module.<name>` and a counter `n_averaged`), timm's train script as `{'state_dict': ...,
'state_dict_ema': ...}`. Some files hold the EMA copy only. Where both are there, the model's
weights are used unless the caller asks for the EMA copy (`--weights ema`); a notice says which
and names both. Runs in the checkpoint reader's child (`core.io.unwrap._unwrap`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.errors import CheckpointError

# keys under which scripts save the model's weights, tried in this order
MODEL_KEYS = ("state_dict", "model", "net", "model_state_dict")
# keys under which they save the EMA copy
EMA_KEYS = ("model_ema", "state_dict_ema", "ema_state_dict", "ema", "model_ema_state_dict")
CHOICES = ("model", "ema")
AVERAGED_COUNTER = "n_averaged"  # torch.optim.swa_utils.AveragedModel's buffer


def choose(
    obj: Mapping[str, Any], path: Path, weights: str | None, holds: Callable[[Any], bool]
) -> tuple[str | None, list[str]]:
    """(key of the weight set to use, notices); None when neither kind of key holds weights.
    ``holds(value)`` says whether a value is a state_dict or a module."""
    if weights is not None and weights not in CHOICES:
        raise CheckpointError(f"--weights takes {' or '.join(CHOICES)}, not {weights!r}.")
    model = next((k for k in MODEL_KEYS if holds(obj.get(k))), None)
    ema = next((k for k in EMA_KEYS if holds(obj.get(k))), None)
    if weights == "ema" and ema is None:
        raise CheckpointError(
            f"{path.name} holds no EMA copy of the weights (none under "
            f"{', '.join(repr(k) for k in EMA_KEYS)}): open it without --weights ema."
        )
    if weights == "model" and model is None and ema is not None:
        raise CheckpointError(
            f"{path.name} holds only an EMA copy of the weights ({ema!r}): open it without "
            "--weights model."
        )
    if ema is None:
        return model, []
    if model is None:
        return ema, [
            f"The file holds only an EMA copy of the weights (its exponential moving average, "
            f"under {ema!r}): it is used."
        ]
    chosen = ema if weights == "ema" else model
    default = " (the default; --weights ema uses the EMA copy)" if weights is None else ""
    return chosen, [
        f"The file holds two weight sets: the model's ({model!r}) and its exponential moving "
        f"average ({ema!r}). The {'EMA copy' if chosen == ema else 'model' + chr(39) + 's'} "
        f"is used{default}; --weights model|ema chooses."
    ]


def drop_averaging_counter(state_dict: dict) -> dict:
    """An AveragedModel's state_dict without its counter (`n_averaged`), which the model it
    averages does not have; its `module.` prefix is dropped with the other prefixes."""
    if AVERAGED_COUNTER in state_dict and len(state_dict) > 1:
        rest = [k for k in state_dict if k != AVERAGED_COUNTER]
        if all(k.startswith("module.") for k in rest):
            return {k: state_dict[k] for k in rest}
    return state_dict
