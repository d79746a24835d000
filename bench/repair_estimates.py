"""How close are the held-out estimates of a repair to the full test set's? Per seed, per candidate.

    python bench/repair_estimates.py NAME --seeds 0 1 2 --out DIR [--workdir /work/proof-models]
        [--share 0.5] [--threads 1]
    python bench/repair_estimates.py --table DIR     # the table of the runs saved in DIR

Runs what `bnp defend NAME.pth --auto --train … --clean … --seed S` runs (the statistics pass, the
suspect analysis, `core.evidence.repair.run_repair`), in process, then measures EVERY candidate the
search judged (pruning, pruning + recovery, recovery alone — not only the one applied) on the full
Fashion-MNIST test set with the checkpoint's true trigger and target, and compares the held-out
accuracy-drop estimate with the real drop. Beside the estimate the report gives, it computes other
estimators on the same candidate from the defender's clean samples:

- `judge`: the report's: paired drop on the judging half (what the verdict uses);
- `judge+check`: paired drop on the judging half and the recovery's early-stopping third (every
  clean sample the recovery did not train on; the check third chose the epoch);
- `clipped`: max(0, judge): an estimated gain reported as no cost;
- `all`: on all 500 clean samples (in-sample: the recovery trained on a third of them);
- `train`, `judge+train`: on the training samples nobody suspected (labels as given; the
  backdoored model was trained on them, the recovery was not), alone and with the judging half;
- `fresh` (`--fresh N`): the drop on N training-split images past `--train-limit` (20 000 for
  blend), which neither the model nor the defender saw: is the gap the test split's, or the
  defender's samples'?

`--share`: the judged share of the clean samples (default the engine's, 0.5; the suspected
samples' stays the engine's). One JSON per seed in DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.data.load import load_images  # noqa: E402
from core.defense.inspection import Inspection  # noqa: E402
from core.io.checkpoint import load_checkpoint  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _drop(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor) -> float:
    """Paired accuracy drop (points) on the same samples."""
    if len(labels) == 0:
        return float("nan")
    return 100 * float(((before == labels).double() - (after == labels).double()).mean())


def run(name: str, seed: int, args) -> dict:
    import core.evidence.verdict
    from core.evidence.repair import run_repair
    from core.evidence.repair_search import CHECK_SHARE, predict
    from core.evidence.verdict import Holdout, split_rows, stratified_split

    if args.share != core.evidence.verdict.JUDGE_SHARE:  # the clean samples' judged share only

        def wider(cls, suspected, clean_labels, seed=0, share=core.evidence.verdict.JUDGE_SHARE):
            s_select, s_judge = split_rows(suspected, seed, "suspected", share)
            c_select, c_judge = stratified_split(clean_labels, seed, args.share)
            return cls(s_select, s_judge, c_select, c_judge, seed)

        Holdout.split = classmethod(wider)
    folder = args.workdir / f"{name}_defender"
    ckpt = load_checkpoint(args.workdir / f"{name}.pth")
    train = load_images(folder / "train")
    clean = load_images(folder / "clean")
    test = load_images(FMNIST, split="test")
    inspection = Inspection(ckpt, device="cpu")
    started = time.monotonic()
    inspection.collect(clean, train)
    repair = run_repair(inspection, train, clean, auto=True, seed=seed)
    seconds = time.monotonic() - started
    outcome = repair.outcome
    holdout = outcome.holdout
    # the recovery's training and check parts, as core.evidence.repair_search._recovery_parts
    # makes them
    fit_c, check_c = stratified_split(
        clean.labels, seed, CHECK_SHARE, "check", rows=holdout.clean_select
    )
    clean_x = repair.probe.inputs["clean"]
    train_x = repair.probe.inputs["train"]
    unsuspected = torch.nonzero(~repair.analysis.poisoned).flatten()
    # one set of inputs: the clean samples, then the training samples no one suspected (labels
    # as given: the suspects' precision/recall is 1.00 on the proof models)
    inputs = torch.cat([clean_x, train_x[unsuspected.to(train_x.device)]])
    labels = torch.cat([clean.labels, train.labels[unsuspected]])
    before_all = predict(inspection.model, None, inputs)
    n_clean = len(clean)
    train_rows = n_clean + torch.arange(len(unsuspected))
    parts = {
        "judge": holdout.clean_judge,
        "judge+check": torch.cat([holdout.clean_judge, check_c]),
        "check": check_c,
        "all": torch.arange(n_clean),
        "train": train_rows,
        "judge+train": torch.cat([holdout.clean_judge, train_rows]),
    }
    original = inspection.evaluate(test)
    fresh = None
    if args.fresh:  # training-split images neither the model nor the defender ever saw
        pool = load_images(FMNIST, split="train")
        rows = torch.arange(args.train_limit, min(len(pool), args.train_limit + args.fresh))
        fresh = pool.subset(rows)
        fresh_before = inspection.evaluate(fresh, trigger=None).acc
    candidates = []
    for cand in outcome.candidates:
        after_all = predict(cand.model, cand.mask, inputs)
        real = inspection.evaluate(test, mask=cand.mask, model=cand.model)
        estimates = {
            part: _drop(before_all[rows], after_all[rows], labels[rows])
            for part, rows in parts.items()
        }
        estimates["clipped"] = max(0.0, estimates["judge"])
        if fresh is not None:
            after = inspection.evaluate(fresh, trigger=None, mask=cand.mask, model=cand.model)
            estimates["fresh"] = fresh_before - after.acc
        v = cand.verdict
        candidates.append(
            {
                "name": cand.name,
                "steps": cand.steps,
                "verdict": v.verdict,
                "acc_drop": v.acc_drop,
                "acc_interval": list(v.acc_interval),
                "n_acc": v.n_acc,
                "estimated_asr": v.estimate,
                "asr_interval": None if v.interval is None else list(v.interval),
                "asr_n": v.n,
                "asr_basis": v.basis,
                "estimates": estimates,
                "sizes": {part: len(rows) for part, rows in parts.items()},
                "real_acc": real.acc,
                "real_asr": real.asr,
                "real_drop": original.acc - real.acc,
            }
        )
    return {
        "name": name,
        "seed": seed,
        "share": args.share,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "applied": outcome.applied,
        "verdict": outcome.verdict.verdict,
        "acc_before": original.acc,
        "asr_before": original.asr,
        "candidates": candidates,
    }


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(folder: Path) -> str:
    rows = [
        "| model | share | seed | candidate | verdict | held-out drop [interval] (n) | "
        "judge+check | clipped | all 500 | judge+train | fresh 5 000 | real drop | "
        "est. ASR [interval] (n) | real ASR |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(folder.glob("*.json")):
        r = json.loads(path.read_text())
        for c in r["candidates"]:
            e = c["estimates"]
            lo, hi = c["acc_interval"]
            asr = "-" if c["estimated_asr"] is None else f"{c['estimated_asr']:.1f}"
            if c["asr_interval"]:
                asr += f" [{c['asr_interval'][0]:.1f}, {c['asr_interval'][1]:.1f}]"
            asr += f" ({c['asr_n']})"
            mark = "" if r["applied"] != c["name"] else " (applied)"
            rows.append(
                f"| {r['name']} | {r['share']:g} | {r['seed']} | {c['name']}{mark} | "
                f"{c['verdict']} | {c['acc_drop']:.2f} [{lo:.1f}, {hi:.1f}] ({c['n_acc']}) | "
                f"{e['judge+check']:.2f} | {e['clipped']:.2f} | {e['all']:.2f} | "
                f"{_num(e.get('judge+train'))} | {_num(e.get('fresh'))} | "
                f"{c['real_drop']:.2f} | {asr} | "
                f"{c['real_asr']:.2f} |"
            )
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="blend")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workdir", type=Path, default=Path("/work/proof-models"))
    parser.add_argument("--out", type=Path, help="folder for one JSON per seed")
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--fresh", type=int, default=0, help="also the real drop on this many unused train images"
    )
    parser.add_argument(
        "--train-limit", type=int, default=20000, help="training-split images the model used"
    )
    parser.add_argument("--table", type=Path, help="print the table of the JSONs in this folder")
    args = parser.parse_args()
    if args.table is not None:
        print(table(args.table))
        return
    if args.out is None:
        parser.error("--out DIR is needed to run")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        result = run(args.name, seed, args)
        tag = f"{args.name}-share{args.share:g}-seed{seed}.json"
        (args.out / tag).write_text(json.dumps(result, indent=1))
        print(json.dumps({k: result[k] for k in ("name", "seed", "verdict", "seconds")}))
        for c in result["candidates"]:
            print(
                f"  {c['name']}: held-out drop {c['acc_drop']:.2f} "
                f"{[round(x, 1) for x in c['acc_interval']]}, judge+check "
                f"{c['estimates']['judge+check']:.2f}, real {c['real_drop']:.2f}; "
                f"ASR est {c['estimated_asr']} real {c['real_asr']:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
