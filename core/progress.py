"""Progress on the command line: the engine's ``progress(done, total)`` callbacks drawn by tqdm
(the window has its own bar)."""

from __future__ import annotations

import sys
from typing import TextIO


def format_duration(seconds: float) -> str:
    """'1:05' for 65 s, '1:02:03' past an hour."""
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """A tqdm bar on stderr with ETA, fed absolute counts.

    Calling the bar as ``bar(done, total)`` fits the engine's progress callbacks (it closes at
    ``done == total``); ``update(done, text)`` for a known total; ``close()`` ends the line, and
    a later ``update`` starts a new one (one line per training epoch).
    """

    def __init__(
        self,
        total: int = 1,
        label: str = "",
        stream: TextIO | None = None,
        width: int | None = None,
    ) -> None:
        self.total, self.label, self.width = max(1, total), label, width
        self.stream = stream if stream is not None else sys.stderr
        self._bar = None

    def _open(self):
        from tqdm import tqdm

        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar = tqdm(
            total=self.total,
            desc=self.label or None,
            file=self.stream,
            ncols=self.width,
            dynamic_ncols=self.width is None and tty,
            mininterval=0.2 if tty else 5.0,  # a log file gets a line every few seconds
            leave=True,
        )
        return self._bar

    def __call__(self, done: int, total: int) -> None:
        self.total = max(1, total)
        self.update(done)
        if done >= total:
            self.close()

    def update(self, done: int, text: str = "") -> None:
        """Move the bar to ``done`` of the total, with ``text`` after it."""
        bar = self._bar or self._open()
        if bar.total != self.total:
            bar.total = self.total
        if text:
            bar.set_postfix_str(text, refresh=False)
        bar.update(max(0, done - bar.n))

    def close(self) -> None:
        """End the line (a later update starts a new bar)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
