"""The rules every reader and writer of the engine shares about the paths and strings it handles.

Files come from strangers, so three things are decided here once, for the command line, the
window and the reports alike:

- ``printable(text)``: a string that came from a file (metadata, class names, layer names,
  an error that quotes the file) with its control characters escaped, so that it cannot move
  the cursor, clear the screen, change the terminal's title or forge a line of output.
- ``check_input(path)``: what is read is a regular file or a folder; a FIFO, a device or a
  socket is refused up front (reading one blocks for good or never ends).
- ``check_output(path, reads)``: what is written replaces only a regular file, never a device,
  a FIFO, a socket or a symbolic link, and never a file the same run reads (the checkpoint, its
  sidecar, the data, the trigger). ``core.io.export.atomic_write`` applies it to every file the
  product writes. The readers record what they read (``note_read``: the checkpoint and its
  sidecar, every data set, every trigger image) so that no writer has to be told; the command
  line starts each run with ``forget_reads()``.
- ``confined(path, root)``: a path a file names, resolved, only when it stays inside ``root``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from core.errors import BnpError

__all__ = [
    "printable",
    "check_input",
    "check_output",
    "confined",
    "file_kind",
    "note_read",
    "forget_reads",
    "EscapingStream",
]

_READS: set[str] = set()  # absolute paths of what this run (process) has read

# C0 and C1 control characters, DEL, and the Unicode format characters that reorder or hide
# text (bidirectional overrides and isolates, zero-width joiners, the BOM)
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


def _escape(match: re.Match) -> str:
    ch = match.group(0)
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, limit: int | None = None) -> str:
    """``text`` as one line with every control character written as an escape (``\\x1b``,
    ``\\n``, ``\\u202e``); cut to ``limit`` characters (with "…") when given."""
    s = text if isinstance(text, str) else str(text)
    s = _CONTROL.sub(_escape, s)
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 1)] + "…"
    return s


_TERMINAL_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)


class EscapingStream:
    """A text stream that writes what it is given with control characters escaped, except the
    line breaks and tabs of the output itself and a progress bar's leading carriage return:
    the command line's last line of defence, whatever string reaches ``print``."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        """Write `text` with terminal control characters escaped (a leading \\r kept)."""
        lead = "\r" if text.startswith("\r") else ""
        self.stream.write(lead + _TERMINAL_CONTROL.sub(_escape, text[len(lead) :]))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def file_kind(mode: int) -> str:
    """'a FIFO', 'a device', 'a socket', 'a symbolic link' … for an ``st_mode``."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def check_input(path: str | Path, what: str = "", error: type[BnpError] = BnpError) -> None:
    """Refuse (``error``, one line) a path that is neither a regular file nor a folder: opening
    a FIFO blocks until someone writes to it, a device never ends. Missing paths pass (the
    reader says they are missing)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    name = f"{what} {path}" if what else str(path)
    raise error(
        f"{printable(name)} is {file_kind(mode)}, not a file: refused (reading it could block "
        "for good); give a regular file"
    )


def note_read(*paths: str | Path | None) -> None:
    """Record files and folders this run reads: ``check_output`` never writes over them."""
    for path in paths:
        if path is not None and str(path) != "":
            _READS.add(os.path.abspath(os.path.expanduser(path)))


def forget_reads() -> None:
    """A new run: nothing read yet (the command line calls it as each command starts)."""
    _READS.clear()


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _inside(path: Path, folder: Path) -> bool:
    try:
        real, root = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    except (OSError, ValueError):
        return False
    return real == root or root in real.parents


def check_output(
    path: str | Path, reads: Iterable[str | Path | None] = (), *, what: str = "output"
) -> Path:
    """The rule for every file the product writes; returns ``path`` or raises BnpError (one line).

    The target either does not exist or is a regular file (not a symbolic link, a device, a
    FIFO or a socket: replacing one of those by renaming a file over it is never what was
    meant, and as root it replaces /dev/null), and it is none of the files in ``reads`` or
    recorded by ``note_read`` nor inside such a folder (what this run reads)."""
    path = Path(path)
    shown = printable(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise BnpError(f"cannot write {shown}: a part of its folder is a file") from None
        raise BnpError(f"cannot write {shown}: {e.strerror or e}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise BnpError(f"{shown} is a folder: choose a file name.")
        raise BnpError(
            f"refusing to write the {what} to {shown}: it is {file_kind(st.st_mode)}, and only a "
            "regular file (or a new name) is ever replaced; choose another name"
        )
    for read in [*reads, *sorted(_READS)]:
        if read is None or str(read) == "":
            continue
        read = Path(read)
        try:
            is_dir = read.is_dir()
        except OSError:
            is_dir = False
        if is_dir and _inside(path, read):
            raise BnpError(
                f"refusing to write the {what} to {shown}: it lies inside the folder "
                f"{printable(read)}, which this run reads; choose another folder"
            )
        if not is_dir and (_same(path, read) if st is not None else _resolved_equal(path, read)):
            raise BnpError(
                f"refusing to write the {what} to {shown}: this run reads that file "
                f"({printable(read)}); choose another name"
            )
    return path


def _resolved_equal(a: Path, b: Path) -> bool:
    try:
        return Path(os.path.realpath(a)) == Path(os.path.realpath(b))
    except (OSError, ValueError):
        return False


def confined(stored: str | Path, root: Path) -> Path | None:
    """``stored`` (relative paths taken from ``root``) resolved, symbolic links followed, when
    it is a regular file inside ``root``; None otherwise (absolute elsewhere, ``..`` climbing
    out, a link pointing out, missing, not a regular file)."""
    try:
        candidate = Path(stored)
        if not candidate.is_absolute():
            candidate = root / candidate
        real = Path(os.path.realpath(candidate))
        base = Path(os.path.realpath(root))
    except (OSError, ValueError, TypeError):
        return None
    if base not in real.parents:
        return None
    try:
        if not stat.S_ISREG(os.stat(real).st_mode):
            return None
    except OSError:
        return None
    return real
