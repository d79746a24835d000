"""The "Models it opens" table (docs/models.md), measured: every model named in issue 11 at
its native input size, random weights, two samples, through tests/zoo_check.check_model.

Usage: OMP_NUM_THREADS=2 PYTHONPATH=. python bench/zoo_table.py [--out table.md] [names...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.zoo_check import (  # noqa: E402
    BACKDOORBENCH_NAMES,
    OURS,
    TIMM,
    TORCHVISION,
    ZooRow,
    check_model,
)


def _cases(names: list[str]):
    cases = [(n, "") for n in OURS + TORCHVISION] + [
        (n, "backdoorbench") for n in BACKDOORBENCH_NAMES
    ]
    try:
        import timm  # noqa: F401

        cases += [(n, "timm") for n in TIMM]
    except ImportError:
        print("timm is not installed: its rows are left out", file=sys.stderr)
    return [c for c in cases if not names or c[0] in names]


def _row_text(row: ZooRow, seconds: float) -> str:
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    source = {"backdoorbench": "BackdoorBench `attack_result.pt`", "timm": "timm"}.get(
        row.source, row.source.replace("torchvision_", "torchvision ")
    )
    if row.error:
        return f"| {row.model} | {source} | **no**: {row.error} | | | | | | |"
    skipped = "; ".join(f"{n}× {reason}" for reason, n in row.skipped.items()) or "none"
    methods = ", ".join(m.upper() for m, ok in row.methods.items() if ok) or "none"
    return (
        f"| {row.model} | {source} | {yes(row.loads)} | {row.detected} | {row.size} | "
        f"{row.layers} ({row.neurons}) | {skipped} | {row.clp_partners} | {methods} | "
        f"{row.pruned} | {yes(row.reproduces)} | {seconds:.0f} s |"
    )


HEADER = (
    "| model | from | loads | detected as | input | BatchNorm layers (neurons) | "
    "skipped, with reason | CLP partners | methods that apply | pruned (CLP u=2) | "
    "export → reopen, same predictions | time |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = [HEADER]
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in _cases(args.names):
            start = time.perf_counter()
            folder = Path(tmp) / f"{source}_{name.replace('/', '_')}"
            folder.mkdir()
            try:
                row = check_model(name, folder, source=source)
            except Exception as e:  # noqa: BLE001 - a failure is a row of the table
                row = ZooRow(name, source, error=f"{type(e).__name__}: {str(e)[:120]}")
            text = _row_text(row, time.perf_counter() - start)
            print(text, flush=True)
            lines.append(text)
            for path in folder.rglob("*"):
                if path.is_file():
                    path.unlink()
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
