"""Do the defenses work? Train backdoored models on real Fashion-MNIST, then prune.

    python bench/proof_of_effect.py [--archs cifar_resnet20 mobilenet_v2]
        [--attacks badnets blend cla] [--train-limit 20000] [--epochs 3] [--out bench/proof.md]

For each architecture × attack: `core.attack.train.train` (seed recipe, seed 0) on the first
`--train-limit` Fashion-MNIST training images, then EP, BNP and CLP at k = 3 evaluated on the
full test set (10 000 images), and a threshold sweep evaluated on a fixed 2 000-image subset.
Data the defender holds: 500 clean held-out training images (BNP) and 500 images of the
poisoned training set (EP), as in the papers. Prints (and writes) markdown tables.
The clean-label attack (`cla`) first trains a clean model on the same images (rate 0, same
recipe and epochs) for PGD to run against, and reports that clean model's ACC and the share of
its triggered non-target test images that land in the target class (the ASR a model without a
backdoor already has), next to the backdoored model's.
Takes long on a CPU (minutes per model); it is a script, not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# idle OpenMP threads sleep instead of spinning (set before torch loads; see core/cli.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.attack.train import CleanLabelSetup, make_trigger, train  # noqa: E402
from core.data.images import InputSpec  # noqa: E402
from core.data.load import load_images  # noqa: E402
from core.defense.evaluation import evaluate, sample_subset  # noqa: E402
from core.defense.inspection import METHODS, Inspection  # noqa: E402
from core.io.checkpoint import load_checkpoint  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
SWEEP = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)


def run_setting(arch, attack, args, workdir: Path) -> tuple[list[str], list[str], list[str]]:
    """Train one model, defend it, return its k=3 table rows, sweep rows and notes."""
    full_train = load_images(FMNIST, split="train")
    test = load_images(FMNIST, split="test")
    data = full_train.subset(slice(0, args.train_limit))
    alpha = 0.15 if attack == "blend" else None
    trigger = make_trigger(attack, channels=1, image_size=(28, 28), size=3, alpha=alpha, seed=0)
    out = workdir / f"fmnist_{arch}_{attack}.pth"
    recipe = dict(
        arch=arch, target=0, rate=args.rate, epochs=args.epochs, lr=args.lr, flip=True, seed=0,
        dataset="fashion-mnist", eval_limit=1000, progress=False, crop_padding=args.crop_padding,
    )  # fmt: skip
    started = time.monotonic()
    clean_label = None
    baseline = ""
    if attack == "cla":
        spec = InputSpec(data.channels, data.size)
        if args.clean_model is not None:  # a clean model of an earlier run, same data
            clean_out = args.clean_model
            clean_model = load_checkpoint(clean_out).model
        else:
            clean_out = workdir / f"fmnist_{arch}_clean_for_cla.pth"
            clean_model = train(data, test, trigger=None, out=clean_out, **recipe).model
        base = evaluate(clean_model, test, spec, trigger=trigger, target=0)
        baseline = (
            f"clean model (trained for PGD): ACC {base.acc:.2f} %, four-corner trigger → "
            f"class 0 on {base.asr:.2f} % of non-target test images"
        )
        print(f"{arch} | cla: {baseline}", file=sys.stderr, flush=True)
        clean_label = CleanLabelSetup(clean_model, spec, str(clean_out))
    result = train(data, test, trigger=trigger, out=out, clean_label=clean_label, **recipe)
    minutes = (time.monotonic() - started) / 60
    inspection = Inspection(load_checkpoint(out), device="cpu")
    rng = torch.Generator().manual_seed(0)
    ep_slice = result.train_set.subset(
        torch.randperm(len(result.train_set), generator=rng)[:500].sort().values
    )
    inspection.collect(result.holdout, ep_slice)
    before = inspection.evaluate(test)
    rows = []
    label = f"{arch} | {attack}"
    rows.append(f"| {label} | none | - | 0 | {before.acc:.2f} | {before.asr:.2f} |")
    for method in METHODS:
        mask = inspection.mask({method: 3.0})
        after = inspection.evaluate(test, mask=mask)
        rows.append(
            f"| {label} | {method.upper()} | 3 | {mask.count()} | {after.acc:.2f} | "
            f"{after.asr:.2f} |"
        )
    small = sample_subset(test, 2000)
    sweep = []
    for method in METHODS:
        cells = []
        for k in SWEEP:
            mask = inspection.mask({method: k})
            m = inspection.evaluate(small, mask=mask)
            cells.append(f"{m.acc:.1f} / {m.asr:.1f} ({mask.count()})")
        sweep.append(f"| {label} | {method.upper()} | " + " | ".join(cells) + " |")
    print(f"{label}: trained in {minutes:.1f} min", file=sys.stderr, flush=True)
    notes = [f"- {label}: {len(result.poisoned_index)} training images poisoned"]
    if baseline:
        notes[0] += f"; {baseline}"
    return rows, sweep, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["cifar_resnet20", "mobilenet_v2"])
    parser.add_argument("--attacks", nargs="+", default=["badnets", "blend"])
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=0.1, help="the seed's 0.1 diverges for VGG")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--crop-padding", type=int, help="random-crop padding (default: bnp train's, 3 px here)"
    )
    parser.add_argument(
        "--clean-model", type=Path, help="cla: the clean model to run PGD against (default: train)"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bnp-proof"))
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()
    if not FMNIST.is_dir():
        sys.exit(
            f"needs the real Fashion-MNIST in {FMNIST} (apt-get install dataset-fashion-mnist)"
        )
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    table = [
        "| model | attack | defense | k | pruned | ACC % | ASR % |",
        "|---|---|---|---|---|---|---|",
    ]
    sweep = [
        "| model | attack | defense | " + " | ".join(f"k={k:g}" for k in SWEEP) + " |",
        "|---|---|---|" + "---|" * len(SWEEP),
    ]
    notes: list[str] = []
    for arch in args.archs:
        for attack in args.attacks:
            rows, sweep_rows, setting_notes = run_setting(arch, attack, args, args.workdir)
            table += rows
            sweep += sweep_rows
            notes += setting_notes
            print("\n".join(rows), flush=True)
    text = (
        f"Fashion-MNIST, {args.train_limit} training images, {args.epochs} epochs, lr {args.lr}, "
        + (f"crop padding {args.crop_padding}, " if args.crop_padding is not None else "")
        + f"poisoning "
        f"rate {args.rate}, target 0, seed 0.\n\nk = 3, full test set (10 000):\n\n"
        + "\n".join(table)
        + "\n\nThreshold sweep, 2 000 test images, cells are ACC / ASR (neurons pruned):\n\n"
        + "\n".join(sweep)
        + "\n\n"
        + "\n".join(notes)
        + "\n"
    )
    print("\n" + text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
