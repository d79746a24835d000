"""What the window's benchmarks share: their model arguments and waiting in Qt's event loop
until a condition holds."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable


def model_arguments(description: str, repeats: int) -> argparse.Namespace:
    """``[checkpoint] [--data DIR] [--repeats N]`` from the command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("checkpoint", nargs="?", help="default: the bundled demo")
    parser.add_argument("--data", help="the checkpoint's data folder")
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser.parse_args()


def model_and_roles(args: argparse.Namespace) -> tuple:
    """(checkpoint, data roles) the arguments name, the demo's without a checkpoint; printed
    with the thread count the timings ran on."""
    import torch

    from bnp_gui.data_roles import guess_roles
    from bnp_gui.demo import demo_files

    if args.checkpoint:
        checkpoint, roles = args.checkpoint, guess_roles(args.data)
    else:
        checkpoint, roles = demo_files()
    print(f"model: {checkpoint}")
    print(f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}")
    return checkpoint, roles


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
