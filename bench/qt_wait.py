"""Waiting in the benchmarks of the window: run Qt's event loop until a condition holds."""

from __future__ import annotations

import time
from collections.abc import Callable


def event_loop_waiter(app, default_timeout_s: float) -> Callable[..., None]:
    """``wait_until(predicate, timeout_s=default_timeout_s)``: process ``app``'s events every
    20 ms until ``predicate()`` is true; TimeoutError past the limit."""
    from PySide6.QtCore import QEventLoop

    def wait_until(predicate: Callable[[], bool], timeout_s: float = default_timeout_s) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("timed out")
            app.processEvents(QEventLoop.AllEvents, 20)
            time.sleep(0.002)

    return wait_until
