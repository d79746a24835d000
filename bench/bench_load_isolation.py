"""What parsing checkpoints in a child process costs: start-up once, then per load.

Prints, for a CIFAR ResNet-20 and a CIFAR ResNet-18 checkpoint: the in-process parse (what
loading cost before isolation), the isolated load with a warm zygote, and their ratio; and the
one-time costs: a fresh `python -c "import torch"` (what a child per load would pay every
time) and the zygote's start-up. Run: PYTHONPATH=. python bench/bench_load_isolation.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from core.io.checkpoint import load_checkpoint  # noqa: E402
from core.io.parse import _parse_file  # noqa: E402
from core.model.architectures import build_model  # noqa: E402
from core.safety import isolation  # noqa: E402

REPEATS = 5


def _median_s(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    import_torch = time.perf_counter() - start
    print(f"fresh python -c 'import torch':           {import_torch * 1000:8.0f} ms")

    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for arch in ("cifar_resnet20", "cifar_resnet18"):
            path = Path(folder) / f"{arch}.pth"
            torch.save({"state_dict": build_model(arch, 10, 3).state_dict()}, path)
            paths[arch] = path

        start = time.perf_counter()
        load_checkpoint(paths["cifar_resnet20"])
        first = time.perf_counter() - start
        print(f"first isolated load (zygote starts):      {first * 1000:8.0f} ms")

        for arch, path in paths.items():
            size = path.stat().st_size / 2**20
            in_process = _median_s(
                lambda p=path: _parse_file(str(p), False, isolation.DEFAULT_MEMORY_BYTES)
            )
            isolated = _median_s(
                lambda p=path: isolation.run_isolated(
                    "core.io.parse:_parse_file",
                    str(p),
                    False,
                    isolation.DEFAULT_MEMORY_BYTES,
                    what="bench",
                )
            )
            full = _median_s(lambda p=path: load_checkpoint(p))
            print(
                f"{arch} ({size:.1f} MiB): parse in-process {in_process * 1000:6.1f} ms, "
                f"in a child {isolated * 1000:6.1f} ms ({isolated / in_process:.2f}×), "
                f"whole load_checkpoint {full * 1000:6.1f} ms; "
                f"a fresh interpreter per load would add {import_torch / full:.0f}× the load"
            )


if __name__ == "__main__":
    main()
