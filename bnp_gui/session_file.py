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
    if isinstance(entry, str):
        entry = {"path": entry}
    path = entry.get("path", "")
    if not path or Path(path).exists():
        return path
    relative = entry.get("relative")
    if relative and (base / relative).exists():
        return str((base / relative).resolve())
    return path  # missing: the open reports it


def save(session, path: str | Path) -> Path:
    """Write the session's state as JSON (atomically); returns the path (suffix added)."""
    path = Path(path).expanduser()
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    if session.inspection is None:  # before any engine import: it may still be loading
        raise SessionFileError("Nothing to save: open a checkpoint first.")
    from bnp_gui.report import sha256_file, spec_overrides
    from core.export import atomic_write

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


def load(path: str | Path) -> SessionFile:
    """Read and check a .bnpsession; SessionFileError with one clear line when it is wrong."""
    path = Path(path).expanduser()
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SessionFileError(f"Cannot read {path.name}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SessionFileError(
            f"{path.name} is not a session file (invalid JSON: {exc})."
        ) from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise SessionFileError(f"{path.name} is not a BNP Inspector session file.")
    if int(content.get("version", 0)) > VERSION:
        raise SessionFileError(
            f"{path.name} was written by a newer BNP Inspector (version {content['version']})."
        )
    base = path.parent
    try:
        ckpt = content["checkpoint"]
        data = content.get("data") or {}
        roles = DataRoles(**{role: _resolve(data.get(role, ""), base) for role in ROLES})
        trig = dict(content.get("trigger") or {})
        trig["path"] = _resolve(trig.get("path", ""), base)
        fields = {f.name for f in dataclasses.fields(TriggerSource)}
        trigger = TriggerSource(**{k: v for k, v in trig.items() if k in fields})
        overrides = dict(content.get("input_overrides") or {})
        if "size" in overrides:
            overrides["size"] = tuple(overrides["size"])
        for name in ("mean", "std"):
            if overrides.get(name) is not None:
                overrides[name] = tuple(overrides[name])
        return SessionFile(
            checkpoint=_resolve(ckpt, base),
            arch=ckpt.get("arch"),
            checkpoint_sha256=ckpt.get("sha256"),
            roles=roles,
            trigger=trigger,
            input_overrides=overrides,
            decisions=Decisions.from_dict(content.get("decisions") or {}),
            view_method=str(content.get("view_method", "bnp")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SessionFileError(f"{path.name} is damaged: {exc}") from None
