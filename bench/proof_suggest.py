"""Does repair without knowing the attack work? Suspects, target and suggestion on trained models.

    python bench/proof_suggest.py [--archs cifar_resnet20] [--attacks badnets blend]
        [--rates 0.1 0] [--train-limit 20000] [--epochs 2] [--demo] [--out bench/suggest.md]
    python bench/proof_suggest.py --attacks cla --model CLA.pth --clean-model CLEAN.pth
        [--train-limit 20000]

Models are trained as `bench/proof_of_effect.py` trains them (`core.attack.train.train`, real
Fashion-MNIST, target 0, seed 0; a rate of 0 gives a clean model) and cached in --workdir with
the defender's data, so a second run only analyses. The defender holds 500 clean held-out
images and 500 images of the (poisoned) training set. Per model: suspect-sample precision and
recall against the known poisoned set, the target estimate, the suggestion (and its time), and
real ACC/ASR on --eval-limit test images for: no pruning, each method at k = 3, the suggestion,
and the oracle — the smallest configuration with test ASR ≤ 5 % within 2 points of ACC, found
with the test set's trigger (what a defender does not have). --demo adds the bundled model.
Each row gives the estimated ASR, the estimate from the suspected samples alone (what it was
before the reconstructed trigger) and the basis used with the number of samples it rests on.
The clean-label attack (`cla`) is analysed on a model trained earlier (`--model`, e.g. by
`bench/proof_of_effect.py --attacks cla`), not trained here: its poisoned training set is rebuilt
the way `core.attack.train.train` built it (same holdout split, seed and PGD against
`--clean-model`), so the defender's data and the known poisoned set match the training run's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.images import ImageSet  # noqa: E402
from core.data.load import load_images  # noqa: E402
from core.defense.evaluation import sample_subset  # noqa: E402
from core.defense.inspection import METHODS, Inspection, build_mask  # noqa: E402
from core.evidence.suggest import configurations, describe, suggest  # noqa: E402
from core.evidence.suspects import analyse_suspects, estimate_asr, make_probe  # noqa: E402
from core.io.checkpoint import load_checkpoint  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"
ORACLE_KS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)


def trained(arch: str, attack: str, rate: float, args) -> tuple[Path, dict]:
    """Train (or reuse) one model; returns its checkpoint and the defender's data."""
    from core.attack.train import make_trigger, train

    name = f"fmnist_{arch}_{attack}_{rate:g}_{args.train_limit}_{args.epochs}"
    ckpt, data_file = args.workdir / f"{name}.pth", args.workdir / f"{name}.data.pt"
    if ckpt.exists() and data_file.exists():
        return ckpt, torch.load(data_file, weights_only=True)
    full = load_images(FMNIST, split="train").subset(slice(0, args.train_limit))
    test = load_images(FMNIST, split="test")
    alpha = 0.15 if attack == "blend" else None
    trigger = make_trigger(attack, channels=1, image_size=(28, 28), size=3, alpha=alpha, seed=0)
    started = time.monotonic()
    result = train(
        full, test, arch=arch, trigger=trigger, target=0, rate=rate, epochs=args.epochs,
        lr=args.lr, flip=True, seed=0, out=ckpt, dataset="fashion-mnist", eval_limit=1000,
        progress=False,
    )  # fmt: skip
    print(f"{name}: trained in {(time.monotonic() - started) / 60:.1f} min", file=sys.stderr)
    data = defender_data(result)
    torch.save(data, data_file)
    return ckpt, data


def defender_data(result) -> dict:
    """What the defender holds after a training run: 500 samples of the (poisoned) training set
    picked with seed 0, which of them are poisoned, and the clean held-out samples."""
    rng = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(result.train_set), generator=rng)[:500].sort().values
    truth = torch.zeros(len(result.train_set), dtype=torch.bool)
    truth[result.poisoned_index] = True
    slice_ = result.train_set.subset(pick)
    return {
        "train_images": (slice_.float_images() * 255).round().to(torch.uint8),
        "train_labels": slice_.labels,
        "poisoned": truth[pick],
        "clean_images": result.holdout.images,
        "clean_labels": result.holdout.labels,
    }


def given_cla(args) -> tuple[Path, dict]:
    """The defender's data for the CLA model in --model, rebuilt as ``core.attack.train.train``
    made it."""
    from core.attack.cla import poison_clean_label
    from core.attack.train import _split_holdout, make_trigger, subseed
    from core.data.images import InputSpec

    data_file = args.workdir / f"{args.model.stem}_{args.train_limit}.data.pt"
    if data_file.exists():
        return args.model, torch.load(data_file, weights_only=True)
    meta = load_checkpoint(args.model).metadata
    if (meta.attack or {}).get("kind") != "cla" or args.clean_model is None:
        sys.exit("--attacks cla analyses a CLA checkpoint: give --model CLA.pth --clean-model X")
    seed, holdout = int(meta.extra["split_seed"]), int(meta.extra["holdout"])
    full = load_images(FMNIST, split="train").subset(slice(0, args.train_limit))
    trigger = make_trigger("cla", channels=1, image_size=(28, 28), size=3, seed=0)
    fit_part, holdout_set = _split_holdout(full, holdout, seed)
    started = time.monotonic()
    train_set, poisoned_index = poison_clean_label(
        fit_part, trigger, meta.target_label, float(meta.attack["rate"]), subseed(seed, "poison"),
        clean_model=load_checkpoint(args.clean_model).model, spec=InputSpec(1, (28, 28)),
    )  # fmt: skip
    if len(poisoned_index) != int(meta.attack["poisoned"]):
        sys.exit(f"rebuilt {len(poisoned_index)} poisoned samples, the checkpoint says otherwise")
    print(f"CLA set rebuilt in {time.monotonic() - started:.0f} s", file=sys.stderr)
    rng = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(train_set), generator=rng)[:500].sort().values
    truth = torch.zeros(len(train_set), dtype=torch.bool)
    truth[poisoned_index] = True
    slice_ = train_set.subset(pick)
    data = {
        "train_images": (slice_.float_images() * 255).round().to(torch.uint8),
        "train_labels": slice_.labels,
        "poisoned": truth[pick],
        "clean_images": holdout_set.images,
        "clean_labels": holdout_set.labels,
    }
    torch.save(data, data_file)
    return args.model, data


def oracle(inspection: Inspection, test: ImageSet, acc_before: float):
    """Smallest configuration with test ASR ≤ 5 % and ACC within 2 points (test trigger)."""
    methods = [m for m in METHODS if inspection.available(m)]
    scores = {m: inspection.scores(m) for m in methods}
    candidates = {}
    for names, combine in configurations(methods):
        for k in ORACLE_KS:
            mask = build_mask(scores, {m: k for m in names}, combine, channels=inspection.channels)
            if mask.count():
                key = tuple(sorted((n, tuple(c)) for n, c in mask.neurons().items()))
                candidates.setdefault(key, ({m: k for m in names}, combine, mask))
    ordered = sorted(candidates.values(), key=lambda c: c[2].count())
    victims = sample_subset(test.subset(test.labels != inspection.target), 300)
    for chosen, combine, mask in ordered:
        asr = inspection.evaluate(victims, mask=mask).asr
        if asr is not None and asr <= 5:
            acc = inspection.evaluate(test, mask=mask, trigger=None).acc
            if acc >= acc_before - 2:
                return chosen, combine, mask
    return None


def analyse(label: str, ckpt: Path, data: dict, test: ImageSet, args) -> list[str]:
    inspection = Inspection(load_checkpoint(ckpt), device="cpu")
    train = ImageSet(data["train_images"], data["train_labels"])
    clean = ImageSet(data["clean_images"], data["clean_labels"])
    truth = data["poisoned"]
    inspection.collect(clean, train)
    started = time.monotonic()
    probe = make_probe(inspection, train, clean)
    analysis = analyse_suspects(inspection, train, clean, probe=probe)
    s = suggest(inspection, analysis, train, clean, probe=probe)
    seconds = time.monotonic() - started
    found = analysis.poisoned
    hits = int((found & truth).sum())
    precision = hits / int(found.sum()) if found.any() else float("nan")
    recall = hits / int(truth.sum()) if truth.any() else float("nan")
    target = "none" if analysis.target is None else f"{analysis.target} ({analysis.confidence:.2f})"

    def real(mask):
        m = inspection.evaluate(test, mask=mask)
        return m.acc, m.asr

    def est(mask):
        """'estimate | from suspected only | basis' cells."""
        e = estimate_asr(probe, analysis, mask, clean.labels)
        if e.percent is None:
            return "- | - | -"
        old = estimate_asr(probe, analysis, mask, clean.labels, basis="suspected")
        basis = f"stamped ({e.n})" if e.basis == "stamped" else f"suspected ({e.n})"
        return f"{e.percent:.1f} | {old.percent:.1f} | {basis}"

    acc0, asr0 = real(None)
    rows = [f"| {label} | none | 0 | {acc0:.2f} | {asr0:.2f} | {est(None)} |"]
    for method in METHODS:
        mask = inspection.mask({method: 3.0})
        acc, asr = real(mask)
        rows.append(
            f"| {label} | {method.upper()} k=3 | {mask.count()} | {acc:.2f} | {asr:.2f} | "
            f"{est(mask)} |"
        )
    acc, asr = real(s.mask)
    rows.append(
        f"| {label} | **suggested{'' if s.repairs else ' (says: no repair)'}: "
        f"{describe(s.methods, s.combine)}** | {s.pruned} | "
        f"{acc:.2f} | {asr:.2f} | {est(s.mask)} |"
    )
    best = oracle(inspection, sample_subset(test, 1000), acc0) if asr0 > 5 else None
    if asr0 <= 5:
        rows.append(
            f"| {label} | oracle: nothing to remove (ASR ≤ 5 % unpruned) | 0 | - | - | - | - | - |"
        )
    elif best is None:
        rows.append(f"| {label} | oracle: none repairs within 2 points | - | - | - | - | - | - |")
    else:
        chosen, combine, mask = best
        acc, asr = real(mask)
        rows.append(
            f"| {label} | oracle: {describe(chosen, combine)} | {mask.count()} | {acc:.2f} | "
            f"{asr:.2f} | {est(mask)} |"
        )
    split = analysis.clusters
    signal = (
        "-"
        if analysis.target is None
        else "neuron mode + clusters"
        if split is not None and split.accepted
        else f"neuron mode (clusters: {split.reason if split is not None else 'no clean set'})"
    )
    from core.evidence.suspects import reconstruction

    rebuilt = reconstruction(probe, analysis, clean.labels)
    if analysis.target is not None:
        print(f"{label}: {rebuilt.reason}", flush=True)
    summary = (
        f"| {label} | {int(truth.sum())} | {int(found.sum())} | {precision:.2f} | "
        f"{recall:.2f} | {target} | {signal} | {'yes' if s.repairs else 'no'} | "
        f"{seconds:.1f} s | {s.why} |"
    )
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="*", default=["cifar_resnet20"])
    parser.add_argument("--attacks", nargs="+", default=["badnets", "blend"])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.1])
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--eval-limit", type=int, default=2000, help="test images for ACC/ASR")
    parser.add_argument("--demo", action="store_true", help="also the bundled demo model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="cla: the trained CLA checkpoint to analyse")
    parser.add_argument("--clean-model", type=Path, help="cla: the clean model PGD ran against")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bnp-proof-suggest"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    table = [
        "| model | configuration | pruned | ACC % | ASR % | est. ASR % | from suspected only % "
        "| basis (samples) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary = [
        "| model | poisoned | suspected | precision | recall | target (conf.) | suspected by | "
        "repairs | time | why |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    jobs = []
    if args.demo:
        jobs.append(("demo", None))
    for arch in args.archs:
        for attack in args.attacks:
            for rate in args.rates:
                jobs.append((f"{arch} {attack} rate {rate:g}", (arch, attack, rate)))
    for label, spec in jobs:
        if spec is None:
            ckpt = DEMO / "fmnist_resnet20_badnets.pth"
            train, clean = load_images(DEMO / "train_poisoned"), load_images(DEMO / "clean")
            import numpy as np

            data = {
                "train_images": train.images,
                "train_labels": train.labels,
                "poisoned": torch.from_numpy(np.load(DEMO / "train_poisoned" / "poisoned.npy")),
                "clean_images": clean.images,
                "clean_labels": clean.labels,
            }
            test = load_images(DEMO / "test")
        else:
            ckpt, data = given_cla(args) if spec[1] == "cla" else trained(*spec, args)
            test = sample_subset(load_images(FMNIST, split="test"), args.eval_limit)
        rows, line = analyse(label, ckpt, data, test, args)
        table += rows
        summary.append(line)
        print("\n".join(rows) + "\n" + line, flush=True)
    only_given = args.model is not None and args.attacks == ["cla"] and not args.demo
    text = (
        (
            f"Fashion-MNIST, ACC/ASR on {args.eval_limit} test images."
            if only_given
            else f"Fashion-MNIST models: {args.train_limit} training images, {args.epochs} "
            f"epochs, lr {args.lr}, target 0, seed 0; ACC/ASR on {args.eval_limit} test images "
            "(demo: its 2 000)."
        )
        + (
            f" CLA: the model in {args.model} (its own recipe, see its metadata), poisoned set "
            f"rebuilt with PGD against {args.clean_model}."
            if args.model is not None and "cla" in args.attacks
            else ""
        )
        + "\n\n"
        + "\n".join(summary)
        + "\n\n"
        + "\n".join(table)
        + "\n"
    )
    print("\n" + text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
