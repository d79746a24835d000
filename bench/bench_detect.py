"""Benchmark: architecture detection of a ResNet-50 state_dict with every candidate registered.

Prints the time of `detect_architecture` (first call in a fresh process: signatures read from
disk, the matching candidates built on `meta`; then a repeated call) beside the time of
`torch.load` of the same file, and their ratio. Run with OMP_NUM_THREADS=2 on 2 cores.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r""" import sys, time t0 = time.perf_counter() import torch from core.model.architectures
import ARCHITECTURES; from core.model.detect import detect_architecture t1 = time.perf_counter()
state_dict = torch.load(sys.argv[1], map_location="cpu", weights_only=True) t2 = time.perf_counter()
first = detect_architecture(state_dict) t3 = time.perf_counter() again =
detect_architecture(state_dict) t4 = time.perf_counter() print(len(ARCHITECTURES), first.arch, t1 -
t0, t2 - t1, t3 - t2, t4 - t3)
"""


def main() -> None:
    import torch
    import torchvision

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50.pth"
        torch.save(torchvision.models.resnet50(num_classes=1000).state_dict(), path)
        size = path.stat().st_size / 2**20
        rows = []
        for _ in range(3):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path)],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            n, arch = int(out[0]), out[1]
            rows.append([float(x) for x in out[2:]])
    print(f"ResNet-50 state_dict, {size:.0f} MiB, {n} candidates registered, detected: {arch}")
    print(
        f"{'run':>3}  {'import':>7}  {'torch.load':>10}  {'detect':>7}  {'ratio':>6}  {'again':>7}"
    )
    for i, (imp, load, detect, again) in enumerate(rows):
        print(
            f"{i:>3}  {imp:6.2f}s  {load:9.3f}s  {detect:6.3f}s  {detect / load:5.2f}×  "
            f"{again * 1e3:5.1f}ms"
        )
    best = min(rows, key=lambda r: r[2])
    print(f"best detection {best[2]:.3f} s = {best[2] / best[1]:.2f}× torch.load (target < 2 s)")


if __name__ == "__main__":
    main()
