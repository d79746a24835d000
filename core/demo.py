"""`bnp demo`: all three defenses, end to end, on the bundled backdoored Fashion-MNIST model."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import BnpError

if TYPE_CHECKING:  # imported where used, so that `bnp demo -h` does not load torch
    from core.data.images import ImageSet
    from core.defense.evaluation import Metrics
    from core.defense.inspection import Inspection

DEMO_DIR = Path(__file__).resolve().parent.parent / "resources" / "demo"
DEMO_CHECKPOINT = "fmnist_resnet20_badnets.pth"


@dataclass(frozen=True)
class DemoPaths:
    """Where the bundled demo's model and data live."""

    checkpoint: Path
    clean: Path  # clean holdout: BNP statistics
    train: Path  # slice of the poisoned training set: EP statistics
    test: Path  # clean test subset: ACC, and ASR with the checkpoint's trigger


def demo_paths(root: Path = DEMO_DIR) -> DemoPaths:
    """Paths of the bundled demo; a clear error when the asset is missing."""
    paths = DemoPaths(
        root / DEMO_CHECKPOINT, root / "clean", root / "train_poisoned", root / "test"
    )
    missing = [str(p) for p in vars(paths).values() if not p.exists()]
    if missing:
        raise BnpError(f"The bundled demo is incomplete; missing: {', '.join(missing)}")
    return paths


@dataclass
class DemoData:
    """The demo's loaded model and data sets."""

    inspection: Inspection
    clean: ImageSet
    train: ImageSet
    test: ImageSet


def load_demo(device: str | None = None, root: Path = DEMO_DIR) -> DemoData:
    """Load the demo checkpoint and its three data sets (statistics not collected yet)."""
    from core.data.load import load_images
    from core.defense.inspection import Inspection
    from core.io.checkpoint import load_checkpoint

    paths = demo_paths(root)
    inspection = Inspection(load_checkpoint(paths.checkpoint), device=device)
    return DemoData(
        inspection, load_images(paths.clean), load_images(paths.train), load_images(paths.test)
    )


def run_demo(
    out: Path | None = None, device: str | None = None, threshold: float = 3.0, quiet=False
) -> dict:
    """Collect, score, prune and evaluate with EP, BNP, CLP and EP ∪ BNP; return the report."""
    from core.defense.inspection import METHOD_NAMES, METHODS
    from core.io.export import method_report, write_json
    from core.progress import ProgressBar

    started = time.monotonic()
    demo = load_demo(device)
    inspection = demo.inspection

    def bar(label):
        return None if quiet else ProgressBar(label=label)

    inspection.collect(demo.clean, demo.train, progress=bar("statistics"))
    before = inspection.evaluate(demo.test, progress=bar("before"))
    report: dict = {"acc_before": before.acc, "asr_before": before.asr}
    rows: list[tuple[str, float | None, int, Metrics]] = [("none", None, 0, before)]
    masks = {}
    for method in METHODS:
        mask = inspection.mask({method: threshold})
        after = inspection.evaluate(demo.test, mask=mask, progress=bar(METHOD_NAMES[method]))
        entry = method_report(inspection, method, threshold, mask)
        entry.update(acc_before=before.acc, asr_before=before.asr)
        entry.update(acc_after=after.acc, asr_after=after.asr)
        report[method] = entry
        masks[method] = mask
        rows.append((METHOD_NAMES[method], threshold, mask.count(), after))
    # the window's default view: EP and BNP together, a neuron pruned when either flags it
    union = inspection.mask({"ep": threshold, "bnp": threshold}, combine="union")
    after = inspection.evaluate(demo.test, mask=union, progress=bar("EP ∪ BNP"))
    report["ep_bnp_union"] = {
        "methods": ["ep", "bnp"],
        "combine": "union",
        "threshold": threshold,
        "flagged": union.neurons(),
        "pruned": union.count(),
        "acc_after": after.acc,
        "asr_after": after.asr,
    }
    rows.append(("EP ∪ BNP", threshold, union.count(), after))
    report["seconds"] = round(time.monotonic() - started, 1)
    report["device"] = inspection.device_name
    print_table(rows)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "report.json", report)
        from core.figure import demo_figure

        demo_figure(inspection, masks, rows, out / "figure.png", threshold)
        print(f"wrote {out / 'report.json'} and {out / 'figure.png'}", file=sys.stderr)
    return report


def print_table(rows) -> None:
    """The seed-style table: ACC/ASR before and after each method, neurons pruned."""
    print(f"{'method':<8} {'threshold':>9} {'pruned':>7}  {'ACC %':>6}  {'ASR %':>6}")
    for label, k, pruned, m in rows:
        k_text = "-" if k is None else f"{k:g}"
        asr = "-" if m.asr is None else f"{m.asr:6.2f}"
        print(f"{label:<8} {k_text:>9} {pruned:>7}  {m.acc:6.2f}  {asr:>6}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bnp demo`."""
    parser.add_argument("--out", type=Path, help="write report.json and figure.png here")
    parser.add_argument("--threshold", "-k", type=float, default=3.0, help="k for all methods")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")


def run(args) -> int:
    """Run `bnp demo` from parsed arguments; the exit status."""
    run_demo(args.out, args.device, args.threshold)
    return 0
