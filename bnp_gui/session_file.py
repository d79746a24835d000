"""``.bnpsession`` files: save an inspection and reopen it to the same numbers (Qt-free parts).

A session file is JSON: the checkpoint (path, architecture, sha256), the data roles, the
trigger source, input overrides, the decisions (thresholds, methods, combination, overrides)
and the viewed method. Paths are stored absolute and, when the file sits near them, also
relative to the file, so a folder moved as a whole still opens. Reopening loads the checkpoint,
applies the input overrides and decisions, reads the data and analyses: the statistics are
recomputed from the same data, so the scores, masks and ACC/ASR are the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from bnp_gui.data_roles import ROLES, DataRoles
from bnp_gui.decisions import Decisions, capture
from bnp_gui.session_check import check_content, check_path, outside
from bnp_gui.trigger_source import TriggerSource
from core.errors import BnpError

SUFFIX = ".bnpsession"
FORMAT = "bnp-inspector-session"
VERSION = 1


class SessionFileError(BnpError):
    """A session file that cannot be read."""


@dataclasses.dataclass
class SessionFile:
    """What a .bnpsession holds, with paths resolved."""

    checkpoint: str
    arch: str | None
    checkpoint_sha256: str | None
    roles: DataRoles
    trigger: TriggerSource
    input_overrides: dict
    decisions: Decisions
    view_method: str = "bnp"
    outside: list[str] = dataclasses.field(default_factory=list)  # paths to confirm first


def _paths(path: str, base: Path) -> dict:
    if not path:
        return {"path": ""}
    entry = {"path": str(Path(path).resolve())}
    try:
        entry["relative"] = os.path.relpath(Path(path).resolve(), base.resolve())
    except ValueError:  # another drive on Windows
        pass
    return entry


def _resolve(entry, base: Path) -> str:
    """The entry's absolute path when it exists, else its relative one from the session's
    folder when that exists (a folder moved as a whole), else the absolute path (missing:
    the open reports it). Paths outside the folder are confirmed by the user (``outside``)."""
    if isinstance(entry, str):
        entry = {"path": entry}
    path = entry.get("path", "")
    if not path or os.path.lexists(path):
        return path
    relative = entry.get("relative")
    if relative and os.path.lexists(base / relative):
        return os.path.abspath(base / relative)
    return path


def save(session, path: str | Path) -> Path:
    """Write the session's state as JSON (atomically); returns the path (suffix added)."""
    path = Path(path).expanduser()
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    if session.inspection is None:  # before any engine import: it may still be loading
        raise SessionFileError("Nothing to save: open a checkpoint first.")
    from bnp_gui.report import sha256_file, spec_overrides
    from core.io.export import atomic_write

    base = path.parent
    source = session.trigger_source
    trigger = dataclasses.asdict(source)
    trigger["path"] = _paths(source.path, base)
    content = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": {
            **_paths(session.checkpoint_path, base),
            "arch": session.inspection.ckpt.metadata.arch,
            "sha256": sha256_file(session.checkpoint_path),
        },
        "data": {role: _paths(session.roles.get(role), base) for role in ROLES},
        "trigger": trigger,
        "input_overrides": spec_overrides(session.inspection),
        "decisions": capture(session).to_dict(),
        "view_method": session.view_method,
    }
    text = json.dumps(content, indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


MAX_SESSION_BYTES = 16 * 2**20  # a session file is a few kB


def load(path: str | Path) -> SessionFile:
    """Read and check a .bnpsession; SessionFileError with one clear line per problem when it
    is wrong. Every field is checked (``session_check``) before anything is used; paths that
    are not regular files or folders are refused; those outside the session's folder are
    listed in ``SessionFile.outside`` for the window to confirm before opening them."""
    from core.safety.paths import check_input, printable

    path = Path(path).expanduser()
    name = printable(path.name)
    check_input(path, error=SessionFileError)
    try:
        if path.stat().st_size > MAX_SESSION_BYTES:
            raise SessionFileError(f"{name} is not a session file (larger than 16 MB).")
        content = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SessionFileError(f"Cannot read {name}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SessionFileError(
            f"{name} is not a session file (invalid JSON: {printable(exc, 200)})."
        ) from None
    except (RecursionError, ValueError):  # nesting too deep, an integer of 5000 digits
        raise SessionFileError(f"{name} is not a session file (malformed JSON).") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise SessionFileError(f"{name} is not a BNP Inspector session file.")
    version = content.get("version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise SessionFileError(f"{name} was written by a newer BNP Inspector (version {version}).")
    problems = check_content(content, VERSION)
    if problems:
        raise _problems(name, problems)
    base = path.parent
    ckpt = content["checkpoint"]
    data = content.get("data") or {}
    roles = DataRoles(**{role: _resolve(data.get(role, ""), base) for role in ROLES})
    trig = dict(content.get("trigger") or {})
    trig["path"] = _resolve(trig.get("path", ""), base)
    fields = {f.name for f in dataclasses.fields(TriggerSource)}
    trigger = TriggerSource(**{k: v for k, v in trig.items() if k in fields})
    overrides = dict(content.get("input_overrides") or {})
    if "size" in overrides:
        overrides["size"] = tuple(int(v) for v in overrides["size"])
    for key in ("mean", "std"):
        if overrides.get(key) is not None:
            overrides[key] = tuple(float(v) for v in overrides[key])
    checkpoint = _resolve(ckpt, base)
    paths = [("checkpoint", checkpoint)]
    paths += [(f"data ({role})", roles.get(role)) for role in ROLES if roles.get(role)]
    if trigger.path:
        paths.append(("trigger", trigger.path))
    problems = [line for where, p in paths if (line := check_path(p, where))]
    if problems:
        raise _problems(name, problems)
    return SessionFile(
        checkpoint=checkpoint,
        arch=ckpt.get("arch"),
        checkpoint_sha256=ckpt.get("sha256"),
        roles=roles,
        trigger=trigger,
        input_overrides=overrides,
        decisions=Decisions.from_dict(content.get("decisions") or {}),
        view_method=str(content.get("view_method", "bnp")),
        outside=[p for _, p in paths if outside(p, base)],
    )


def _problems(name: str, problems: list[str]) -> SessionFileError:
    shown = problems[:6] + ([f"and {len(problems) - 6} more"] if len(problems) > 6 else [])
    error = SessionFileError(f"{name} cannot be opened: " + "; ".join(shown) + ".")
    error.problems = problems
    return error
