"""Every field of a ``.bnpsession`` checked before anything is opened (Qt-free).

A session file can come from someone else. ``check_content`` returns one clear line per problem
(a wrong type, a number that is not finite or out of range, an unknown method or role) instead
of the ValueError, OverflowError, TypeError or RecursionError a blind read raises;
``check_path`` refuses paths that are not regular files or folders (a FIFO, a device); and
``outside`` lists the paths that lie outside the session's own folder, which the window opens
only once the user has confirmed them (a relative entry climbing out with ``..`` counts as
outside too).
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

from core.model.methods import METHODS
from core.safety.paths import file_kind, printable

ROLES_KNOWN = ("clean", "train", "test", "poisoned")
TRIGGER_KINDS = ("checkpoint", "image", "folder", "none")
PLACEMENTS = ("patch", "blend", "four-corner")
MAX_LIST = 100_000  # force_prune / keep entries
MAX_TEXT = 4096  # characters of one path or name


def _short(value: Any) -> str:
    return printable(repr(value), 60)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: Any, low: int, high: int) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return isinstance(value, int) and low <= value <= high


def _text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT and "\x00" not in value


def _path_entry(entry: Any, where: str, problems: list[str], *, required: bool = False) -> None:
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict):
        problems.append(f"{where} must be a path or {{'path': …}}, not {_short(entry)}")
        return
    path = entry.get("path", "")
    if not _text(path):
        problems.append(f"{where}: 'path' must be text, not {_short(path)}")
    elif required and not path:
        problems.append(f"{where}: no path is given")
    relative = entry.get("relative")
    if relative is not None and not _text(relative):
        problems.append(f"{where}: 'relative' must be text, not {_short(relative)}")


def _bounds() -> tuple[int, int]:
    """The engine's input bounds (imported on use: core.data.checks loads torch, and the window
    imports this module before the engine is there)."""
    from core.data.checks import MAX_CHANNELS, MAX_INPUT_SIDE

    return MAX_INPUT_SIDE, MAX_CHANNELS


def _overrides(value: Any, problems: list[str]) -> None:
    MAX_INPUT_SIDE, MAX_CHANNELS = _bounds()  # noqa: N806 - the engine's constants
    if value is None:
        return
    if not isinstance(value, dict):
        problems.append(f"input_overrides must be a dict, not {_short(value)}")
        return
    for key, item in value.items():
        if key == "size":
            if not (
                isinstance(item, list)
                and len(item) == 2
                and all(_whole(v, 1, MAX_INPUT_SIDE) for v in item)
            ):
                problems.append(
                    f"input_overrides.size must be [height, width], each 1–{MAX_INPUT_SIDE}, "
                    f"not {_short(item)}"
                )
        elif key == "channels":
            if not _whole(item, 1, MAX_CHANNELS):
                problems.append(
                    f"input_overrides.channels must be 1–{MAX_CHANNELS}, not {_short(item)}"
                )
        elif key in ("mean", "std"):
            if item is None:
                continue
            if (
                not isinstance(item, list)
                or not 1 <= len(item) <= MAX_CHANNELS
                or not all(_number(v) and math.isfinite(v) for v in item)
            ):
                problems.append(
                    f"input_overrides.{key} must be a list of finite numbers, not {_short(item)}"
                )
            elif key == "std" and not all(v > 0 for v in item):
                problems.append(f"input_overrides.std must be positive, not {_short(item)}")
        else:
            problems.append(f"input_overrides has an unknown entry {_short(key)}")


def _neurons(value: Any, where: str, problems: list[str]) -> None:
    if value is None:
        return
    if not isinstance(value, list) or len(value) > MAX_LIST:
        problems.append(
            f"decisions.{where} must be a list of [layer, channel], not {_short(value)}"
        )
        return
    for item in value:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and _text(item[0])
            and _whole(item[1], 0, 2**31 - 1)
        ):
            problems.append(f"decisions.{where} holds {_short(item)}, not [layer, channel ≥ 0]")
            return


def _decisions(value: Any, problems: list[str]) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        problems.append(f"decisions must be a dict, not {_short(value)}")
        return
    thresholds = value.get("thresholds") or {}
    if not isinstance(thresholds, dict):
        problems.append(f"decisions.thresholds must be a dict, not {_short(thresholds)}")
    else:
        for method, k in thresholds.items():
            if method not in METHODS:
                problems.append(f"decisions.thresholds names an unknown method {_short(method)}")
            elif not (_number(k) and math.isfinite(k) and abs(k) <= 1e6):
                problems.append(
                    f"decisions.thresholds.{method} must be a finite number, not {_short(k)}"
                )
    enabled = value.get("enabled") or {}
    if not isinstance(enabled, dict):
        problems.append(f"decisions.enabled must be a dict, not {_short(enabled)}")
    else:
        for method, on in enabled.items():
            if method not in METHODS:
                problems.append(f"decisions.enabled names an unknown method {_short(method)}")
            elif not isinstance(on, bool):
                problems.append(
                    f"decisions.enabled.{method} must be true or false, not {_short(on)}"
                )
    if value.get("combine", "union") not in ("union", "intersection"):
        problems.append(
            "decisions.combine must be 'union' or 'intersection', not "
            + _short(value.get("combine"))
        )
    _neurons(value.get("force_prune"), "force_prune", problems)
    _neurons(value.get("keep"), "keep", problems)


def _trigger(value: Any, problems: list[str]) -> None:
    MAX_INPUT_SIDE, _ = _bounds()  # noqa: N806 - the engine's constant
    if value is None:
        return
    if not isinstance(value, dict):
        problems.append(f"trigger must be a dict, not {_short(value)}")
        return
    if value.get("kind", "checkpoint") not in TRIGGER_KINDS:
        problems.append(
            f"trigger.kind must be one of {', '.join(TRIGGER_KINDS)}, not "
            + _short(value.get("kind"))
        )
    if value.get("placement", "patch") not in PLACEMENTS:
        problems.append(
            f"trigger.placement must be one of {', '.join(PLACEMENTS)}, not "
            + _short(value.get("placement"))
        )
    alpha = value.get("alpha", 0.2)
    if not (_number(alpha) and math.isfinite(alpha) and 0 <= alpha <= 1):
        problems.append(f"trigger.alpha must be a number in [0, 1], not {_short(alpha)}")
    size = value.get("size")
    if size is not None and not _whole(size, 1, MAX_INPUT_SIDE):
        problems.append(f"trigger.size must be 1–{MAX_INPUT_SIDE} pixels, not {_short(size)}")
    target = value.get("target")
    if target is not None and not _whole(target, 0, 1_000_000):
        problems.append(f"trigger.target must be a class index ≥ 0, not {_short(target)}")
    if "path" in value:
        _path_entry(value["path"], "trigger.path", problems)


def check_content(content: Any, version: int) -> list[str]:
    """One line per problem with the parsed JSON of a session file (empty: all fields fine)."""
    if not isinstance(content, dict):
        return [f"expected a JSON object, found {type(content).__name__}"]
    problems: list[str] = []
    v = content.get("version", 0)
    if not _whole(v, 0, 10**6):
        problems.append(f"version must be a whole number, not {_short(v)}")
    ckpt = content.get("checkpoint")
    if not isinstance(ckpt, dict):
        problems.append(f"checkpoint must be a dict with a path, not {_short(ckpt)}")
    else:
        _path_entry(ckpt, "checkpoint", problems, required=True)
        arch = ckpt.get("arch")
        if arch is not None and not (_text(arch) and len(arch) <= 200):
            problems.append(f"checkpoint.arch must be a name, not {_short(arch)}")
        digest = ckpt.get("sha256")
        if digest is not None and not (
            isinstance(digest, str)
            and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)
        ):
            problems.append(f"checkpoint.sha256 must be 64 hex digits, not {_short(digest)}")
    data = content.get("data")
    if data is not None:
        if not isinstance(data, dict):
            problems.append(f"data must be a dict of roles, not {_short(data)}")
        else:
            for role, entry in data.items():
                if role not in ROLES_KNOWN:
                    problems.append(f"data names an unknown role {_short(role)}")
                else:
                    _path_entry(entry, f"data.{role}", problems)
    _trigger(content.get("trigger"), problems)
    _overrides(content.get("input_overrides"), problems)
    _decisions(content.get("decisions"), problems)
    view = content.get("view_method", "bnp")
    if view not in METHODS:
        problems.append(f"view_method must be one of {', '.join(METHODS)}, not {_short(view)}")
    return problems


def check_path(path: str, where: str) -> str | None:
    """A problem line when ``path`` exists but is not a regular file or folder, else None."""
    if not path:
        return None
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None  # missing: opening it says so
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return f"{where} {printable(path)} is {file_kind(mode)}, not a file or folder"


def outside(path: str, base: Path) -> bool:
    """True when ``path`` (resolved, links followed) is not inside the folder ``base``."""
    if not path:
        return False
    try:
        real = Path(os.path.realpath(path))
        root = Path(os.path.realpath(base))
    except (OSError, ValueError):
        return True
    return real != root and root not in real.parents
