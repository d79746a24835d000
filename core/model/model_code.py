"""The analyst's own model code: `FILE.py:CALLABLE` builds the model the file's weights load into.

Research code (trojanzoo, backdoor-toolbox, BackdoorBox, BackdoorBench's own nets...) defines
models no registry holds; whoever has such a checkpoint has the code that defines it. This runs
that code — the file is imported as a module and ``CALLABLE()`` is called with no arguments —
so it is only ever done when the user names it (`--model-code`, the window's "Open With
Architecture…"), never inferred from a checkpoint, and the report names it. The weights are
still read from the checkpoint without running anything (`core.io.checkpoint`), then loaded into
the built model strictly.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from core.errors import BnpError


@dataclass(frozen=True)
class ModelCode:
    """`FILE.py:CALLABLE` as the user gave it."""

    file: Path
    callable: str

    @property
    def label(self) -> str:
        """How reports and notices name the model's origin."""
        return f"{self.callable} from {self.file.name} (your model code)"

    def __str__(self) -> str:
        return f"{self.file}:{self.callable}"


def parse(text: str | ModelCode) -> ModelCode:
    """`path/to/file.py:build` (the last colon separates the callable) → ModelCode."""
    if isinstance(text, ModelCode):
        return text
    file, sep, name = str(text).rpartition(":")
    if not sep or not file or not name:
        raise BnpError(
            f"--model-code takes FILE.py:CALLABLE (e.g. nets.py:resnet18), got {text!r}."
        )
    if not name.replace("_", "a").replace(".", "a").isalnum() or name[0].isdigit():
        raise BnpError(f"{name!r} in --model-code is not a Python name.")
    path = Path(file).expanduser()
    if not path.is_file():
        raise BnpError(f"--model-code: no such file {path}.")
    if path.suffix != ".py":
        raise BnpError(f"--model-code names {path.name}: a Python file (.py) is needed.")
    return ModelCode(path.resolve(), name)


def build(code: ModelCode) -> nn.Module:
    """Run the file and call the callable (no arguments): the model, on the CPU."""
    module_name = f"bnp_model_code_{abs(hash(str(code.file)))}"
    spec = importlib.util.spec_from_file_location(module_name, code.file)
    if spec is None or spec.loader is None:
        raise BnpError(f"--model-code: {code.file.name} cannot be imported.")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(code.file.parent))  # its own imports of files beside it
    try:
        spec.loader.exec_module(module)
        target: object = module
        for part in code.callable.split("."):
            target = getattr(target, part)
        if not callable(target):
            raise BnpError(f"--model-code: {code.callable} in {code.file.name} is not callable.")
        model = target()
    except BnpError:
        raise
    except AttributeError as e:
        raise BnpError(
            f"--model-code: {code.file.name} has no {code.callable} ({_first_line(e)})."
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's code failed: say where, in one line
        raise BnpError(
            f"--model-code: running {code} failed with {type(e).__name__}: {_first_line(e)}"
        ) from None
    finally:
        sys.path.remove(str(code.file.parent))
    if not isinstance(model, nn.Module):
        raise BnpError(
            f"--model-code: {code.callable}() returned a {type(model).__name__}, not a "
            "torch.nn.Module."
        )
    return model.cpu().eval()


def load_weights(model: nn.Module, state_dict: dict, code: ModelCode, file_name: str) -> None:
    """Load strictly; a mismatch is said in one line with the first differing keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(COUNTER)]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} (file {list(v.shape)}, model {list(expected[k].shape)})"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    parts = [
        f"{len(items)} {what}: {', '.join(items[:3])}"
        for what, items in (
            ("missing key(s)", missing),
            ("unexpected key(s)", unexpected),
            ("shape mismatch(es)", shapes),
        )  # fmt: skip
        if items
    ]
    if parts:
        raise BnpError(
            f"The weights of {file_name} do not fit the model {code.callable}() builds: "
            + "; ".join(parts)
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise BnpError(
            f"The weights of {file_name} do not load into {code.callable}(): "
            f"{' '.join(str(e).split())[:300]}"
        ) from None


COUNTER = "num_batches_tracked"  # strict loading accepts its absence (BatchNorm fills it in)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
