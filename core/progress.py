"""A text progress bar with ETA for the command line (the window has its own)."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """'1:05' for 65 s, '1:02:03' past an hour."""
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """One line with ETA on stderr, redrawn on a terminal, a line per tenth in a log file.

    `update(done, text)` for a known total; calling the bar as `bar(done, total)` fits the
    engine's progress callbacks.
    """

    def __init__(
        self, total: int = 1, label: str = "", stream: TextIO | None = None, width: int = 28
    ) -> None:
        self.total, self.label, self.width = max(1, total), label, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_tenth = -1

    def __call__(self, done: int, total: int) -> None:
        self.total = max(1, total)
        self.update(done)
        if done >= total:
            self.close()

    def update(self, done: int, text: str = "") -> None:
        """Redraw at most 5 times a second (or once per tenth of the work in a log file)."""
        now = time.monotonic()
        tenth = 10 * done // self.total
        if self.tty:
            if now - self._last_draw < 0.2 and done < self.total:
                return
        elif tenth == self._last_tenth and done < self.total:
            return
        self._last_draw, self._last_tenth = now, tenth
        elapsed = now - self.start
        eta = elapsed / done * (self.total - done) if done else float("nan")
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        eta_text = format_duration(eta) if math.isfinite(eta) else "?"
        label = f"{self.label} " if self.label else ""
        line = (
            f"{label}[{bar}] {100 * done / self.total:5.1f}% "
            f"{format_duration(elapsed)}<{eta_text} {text}"
        )
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line on a terminal."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
