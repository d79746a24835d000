"""Benchmark: `bnp info` on a ResNet-50 state_dict beside a bare `torch.load` of the same file.

One process runs, alternately, `torch.load(file, weights_only=True)` and `bnp info file`
(stdout discarded) several times. A plain torch.save zip is read in-process (`core.io.torch_zip`,
no reader child); unless a ResNet-50 of this layout was described before (core.model.described,
in the user's cache), the first `bnp info` also imports torchvision, builds the
architecture's `meta` template, traces it once and describes it; the others build nothing.
Prints each pair and the ratio of the medians of the warm runs (issue 21's target:
`bnp info` at most 1.5× the bare load).

Then the same from the command line, each in a fresh process: `bnp info FILE` beside
`python -c "import torch; torch.load(FILE)"` (the layout is described by then: no
torchvision import).

Usage: OMP_NUM_THREADS=2 PYTHONPATH=. python bench/bench_info.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--arch", default="resnet50")
    args = parser.parse_args()
    t0 = time.perf_counter()
    import torch
    import torchvision

    from core.cli import main as bnp

    imported = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.arch}.pth"
        torch.save(torchvision.models.get_model(args.arch, num_classes=1000).state_dict(), path)
        size = path.stat().st_size / 2**20
        rows = []
        for _ in range(args.repeat + 1):
            start = time.perf_counter()
            torch.load(path, map_location="cpu", weights_only=True)
            load = time.perf_counter() - start
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()) as out:
                code = bnp(["info", str(path)])
            info = time.perf_counter() - start
            if code != 0:
                raise SystemExit(f"bnp info failed ({code})")
            rows.append((load, info))
    arch = next(
        line.split()[1] for line in out.getvalue().splitlines() if line.startswith("architecture")
    )
    print(f"{args.arch} state_dict, {size:.0f} MiB, detected as {arch}; imports {imported:.2f} s")
    print(f"{'run':>3}  {'torch.load':>10}  {'bnp info':>9}  {'ratio':>6}")
    for i, (load, info) in enumerate(rows):
        tag = "  (first: may import torchvision, build, trace, describe)" if i == 0 else ""
        print(f"{i:>3}  {load:9.3f}s  {info:8.3f}s  {info / load:5.2f}×{tag}")
    load = statistics.median(r[0] for r in rows[1:])
    info = statistics.median(r[1] for r in rows[1:])
    print(f"median of warm runs: torch.load {load:.3f} s, bnp info {info:.3f} s, "
          f"ratio {info / load:.2f}× (target ≤ 1.5×)")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.1f}")
    _command_line(args, path_for_cli(args))
    print(f"load average {os.getloadavg()[0]:.1f}")


def path_for_cli(args) -> Path:
    import torch
    import torchvision

    path = Path(tempfile.gettempdir()) / f"bnp_bench_info_{os.getpid()}_{args.arch}.pth"
    torch.save(torchvision.models.get_model(args.arch, num_classes=1000).state_dict(), path)
    return path


def _timed(command: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def _command_line(args, path: Path) -> None:
    load = [sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=True)"]
    info = [sys.executable, "-m", "core.cli", "info", str(path)]
    rows = []
    try:
        for _ in range(args.repeat):
            rows.append((_timed(load), _timed(info)))
    finally:
        path.unlink()
    print(f"\ncommand line, fresh processes: {'python -c torch.load':>20}  {'bnp info':>9}  ratio")
    for i, (a, b) in enumerate(rows):
        print(f"{i:>3}  {a:19.2f}s  {b:8.2f}s  {b / a:5.2f}×")
    a = statistics.median(r[0] for r in rows)
    b = statistics.median(r[1] for r in rows)
    print(f"median: python -c torch.load {a:.2f} s, bnp info {b:.2f} s, ratio {b / a:.2f}× "
          "(target ≤ 1.5×)")  # fmt: skip


if __name__ == "__main__":
    main()
