"""A text progress bar with ETA for the command line (the window has its own)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """'1:05' for 65 s, '1:02:03' past an hour."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """`bar(done, total)` redraws one line on stderr at most ~10 times a second."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.live = getattr(self.stream, "isatty", lambda: False)()  # redraws only on a terminal

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        finished = total > 0 and done >= total
        if not finished and (not self.live or now - self.last_draw < 0.1):
            return
        self.last_draw = now
        fraction = done / total if total else 1.0
        filled = int(self.width * fraction)
        elapsed = now - self.start
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        timing = f"{format_duration(elapsed)}" if finished else f"ETA {format_duration(eta)}"
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(
            f"{chr(13) if self.live else ''}{self.label} [{bar}] {done}/{total} {timing}  "
        )
        if finished:
            self.stream.write("\n")
        self.stream.flush()
