"""docs/models.md's "Models it opens" table, measured: every model named in issues 11 and 21
at its native input size (or --size), random weights, two samples, through
tests/zoo_check.check_model; the research-code models of bench/research_models.py through
`--model-code` (refused without it, opened with it, exported and reopened with it).

Usage: OMP_NUM_THREADS=2 PYTHONPATH=. python bench/zoo_table.py [--out table.md] [--size S]
       [names...]
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

# issue 21: the timm models refused before, two look-alikes, torchvision's maxvit_t
ISSUE_21 = tuple(f"timm/{n}" for n in (
    "regnety_008", "dpn68", "res2net50_14w_8s", "resnest14d", "seresnext26d_32x4d", "repvgg_a0",
    "ecaresnet26t", "selecsls42b", "ese_vovnet19b_dw", "tresnet_m", "tf_efficientnet_b0",
    "resnet50_gn",
))  # fmt: skip


def _cases(names: list[str]):
    cases = [(n, "") for n in OURS + TORCHVISION] + [
        (n, "backdoorbench") for n in BACKDOORBENCH_NAMES
    ]
    try:
        import timm  # noqa: F401

        cases += [(n, "timm") for n in TIMM + ISSUE_21]
    except ImportError:
        print("timm is not installed: its rows are left out", file=sys.stderr)
    cases += [("maxvit_t", "torchvision")]
    from bench.research_models import CASES

    cases += [(fn, f"code:{project} {row}") for row, (project, fn) in CASES.items()]
    return [c for c in cases if not names or c[0] in names]


def check_model_code(fn: str, folder: Path, size: int) -> ZooRow:
    """A research model: refused without --model-code, opened, pruned, exported and reopened
    with it, the same predictions."""
    import torch

    from bench import research_models
    from core.defense.evaluation import predict
    from core.defense.inspection import Inspection
    from core.errors import ArchitectureMismatch
    from core.io.checkpoint import load_checkpoint
    from core.io.export import export_model, session_metadata
    from core.model.graph import discover_layers, method_availability

    code = f"{ROOT / 'bench' / 'research_models.py'}:{fn}"
    row = ZooRow(fn, "code", fn, size)
    torch.manual_seed(0)
    path = folder / f"{fn}.pth"
    torch.save(getattr(research_models, fn)().eval().state_dict(), path)
    try:
        load_checkpoint(path)
        row.detected = "(detected without --model-code?)"
    except ArchitectureMismatch:
        pass
    ckpt = load_checkpoint(path, model_code=code)
    ckpt.metadata.input_size = (size, size)
    row.loads, row.detected = True, "--model-code " + fn
    found = discover_layers(ckpt.model, torch.zeros(1, 3, size, size))
    row.layers = len(found.layers)
    row.neurons = sum(layer.channels for layer in found.layers)
    row.clp_partners = sum(layer.conv is not None for layer in found.layers)
    row.methods = {m: ok for m, (ok, _) in method_availability(ckpt.model, found).items()}
    inspection = Inspection(ckpt, device="cpu")
    mask = inspection.mask({"clp": 2.0})
    row.pruned = mask.count()
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    preview = predict(inspection.model, images, inspection.spec, mask=mask)
    out = folder / f"{fn}_pruned.pth"
    export_model(inspection.model, out, mask=mask, fmt="state_dict",
                 metadata=session_metadata(inspection))  # fmt: skip
    reopened = load_checkpoint(out, model_code=code)
    row.reproduces = bool(torch.equal(preview, predict(reopened.model, images, inspection.spec)))
    return row


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
    parser.add_argument("--size", type=int, help="input side for every model (default native)")
    args = parser.parse_args()
    lines = [HEADER]
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in _cases(args.names):
            start = time.perf_counter()
            folder = Path(tmp) / f"{source}_{name.replace('/', '_')}"
            folder.mkdir()
            try:
                if source.startswith("code:"):
                    row = check_model_code(name, folder, args.size or 32)
                    row.source = source[5:]
                else:
                    row = check_model(name, folder, size=args.size, source=source)
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
