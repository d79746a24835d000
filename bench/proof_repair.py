"""Does the repair hold? `bnp defend --auto --out` on the proof models, the EXPORTED model tested.

    python bench/proof_repair.py [NAME ...] [--workdir /work/proof-models] [--threads 1]
        [--eval-limit 10000] [--no-oracle] [--defend-args "--no-recovery"] [--out FILE.md]
    python bench/proof_repair.py --table [--out FILE.md]   # the table of the runs saved earlier

NAME: `demo` (the bundled model) or a model of `bench/proof_models.py` in --workdir (default:
every model found there, and the demo). Per model, the engine runs as an analyst runs it, with
only the defender's data (500 clean held-out images, 500 images of the poisoned training set):

    python -m core.cli defend CKPT --auto --train TRAIN --clean CLEAN --out REPAIRED.pth
        --report R.json

and this script then loads the exported REPAIRED.pth and measures its clean accuracy and ASR on
the full Fashion-MNIST test set (10 000 images; the demo: its bundled 2 000) with the true
trigger and target from the original checkpoint (the engine never sees them). The clean model
has no trigger: its ASR is measured with the BadNets 3×3 patch and target 0, for reference.
Printed per model: real ACC/ASR before and after, the verdict and held-out estimates the report
claims (ASR and accuracy drop, interval, samples), the steps applied, suspect precision/recall
against the known poisoned set, the wall time of the `bnp defend` run, and the oracle: the
smallest pruning configuration with test ASR ≤ 5 % within 2 points of ACC, found with the
trigger (what a defender does not have). A claim of "repairs" with a real ASR above 5 % or a
real accuracy drop above 2 points is flagged FALSE REPAIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from core.attack.train import make_trigger  # noqa: E402
from core.data.images import ImageSet, save_images  # noqa: E402
from core.data.load import load_images  # noqa: E402
from core.defense.evaluation import sample_subset  # noqa: E402
from core.defense.inspection import Inspection  # noqa: E402
from core.evidence.suggest import describe  # noqa: E402
from core.io.checkpoint import load_checkpoint  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
DEMO = ROOT / "resources" / "demo"
ASR_GOAL, ACC_BUDGET = 5.0, 2.0
ORDER = (
    "demo",
    "badnets-40k",
    "blend",
    "vgg-blend",
    "cla",
    "random-checker-t3",
    "noise-blend-t7",
    "clean",
)


def defender_dirs(name: str, workdir: Path) -> tuple[Path, Path, Path, torch.Tensor]:
    """(checkpoint, --train folder, --clean folder, which --train samples are poisoned)."""
    if name == "demo":
        import numpy as np

        poisoned = torch.from_numpy(np.load(DEMO / "train_poisoned" / "poisoned.npy"))
        ckpt = DEMO / "fmnist_resnet20_badnets.pth"
        return ckpt, DEMO / "train_poisoned", DEMO / "clean", poisoned
    ckpt = workdir / f"{name}.pth"
    data = torch.load(workdir / f"{name}.data.pt", weights_only=True)
    folder = workdir / f"{name}_defender"
    train_dir, clean_dir = folder / "train", folder / "clean"
    if not (train_dir / "data.npy").exists():
        save_images(ImageSet(data["train_images"], data["train_labels"]), train_dir)
        save_images(ImageSet(data["clean_images"], data["clean_labels"]), clean_dir)
    return ckpt, train_dir, clean_dir, data["poisoned"]


def run_defend(ckpt: Path, train: Path, clean: Path, out: Path, report: Path, args) -> float:
    """`bnp defend --auto` as a separate process, as an analyst runs it; returns its wall time."""
    command = [
        sys.executable, "-m", "core.cli", "defend", str(ckpt), "--auto", "--train", str(train),
        "--clean", str(clean), "--out", str(out), "--report", str(report), "--device", "cpu",
        *shlex.split(args.defend_args),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads))
    print("$ " + shlex.join(command[1:]), file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"bnp defend failed ({done.returncode}):\n{done.stderr[-3000:]}")
    (report.parent / f"{report.stem}.log").write_text(done.stderr + done.stdout)
    return seconds


def claim(report: dict) -> dict:
    """The suggestion's claims, from the held-out contract or (before it) today's fields."""
    s = report.get("suggestion") or {}
    verdict = s.get("verdict")
    if verdict is None:  # the suggestion before held-out verdicts
        verdict = "repairs" if s.get("repairs") else "does not repair"
    estimate = report.get("estimate") or {}
    interval = s.get("asr_interval", estimate.get("interval95"))
    steps = s.get("steps")
    if steps is None:
        steps = (
            [f"pruning: {describe(s.get('methods') or {}, s.get('combine', 'union'))}"]
            if s.get("pruned")
            else []
        )
    return {
        "verdict": verdict,
        "reason": s.get("reason", s.get("why", "")),
        "steps": list(steps),
        "pruned": s.get("pruned"),
        "estimated_asr": s.get("estimated_asr", report.get("estimated_asr")),
        "asr_interval": interval,
        "asr_samples": s.get("asr_samples", estimate.get("n_samples")),
        "acc_drop_estimate": s.get("acc_drop_estimate", s.get("clean_acc_drop")),
        "acc_drop_interval": s.get("acc_drop_interval"),
        "acc_samples": s.get("acc_samples"),  # today: the same clean samples as BNP's
        "target": (report.get("target_estimate") or {}).get("label"),
    }


def suspects(report: dict, truth: torch.Tensor) -> tuple[int, float, float]:
    """(suspected, precision, recall) of the report's suspect list against the poisoned set."""
    records = report.get("suspect_samples") or []
    found = torch.zeros(len(truth), dtype=torch.bool)
    for r in records:
        if r.get("poisoned"):
            index = r["file"]
            if isinstance(index, str):  # a file name: data.npy sets give the index
                index = int(index.split(":")[-1].split("[")[-1].rstrip("]"))
            found[int(index)] = True
    hits = int((found & truth).sum())
    precision = hits / int(found.sum()) if found.any() else float("nan")
    recall = hits / int(truth.sum()) if truth.any() else float("nan")
    return int(found.sum()), precision, recall


def analyse(name: str, args) -> dict:
    cache = args.workdir / "results" / f"{name}.json"
    ckpt, train_dir, clean_dir, truth = defender_dirs(name, args.workdir)
    if name == "demo":
        test = load_images(DEMO / "test")
    else:
        test = sample_subset(load_images(FMNIST, split="test"), args.eval_limit)
    original = Inspection(load_checkpoint(ckpt), device="cpu")
    trigger, target = original.trigger, original.target
    if trigger is None:  # the clean model: a reference trigger
        trigger = make_trigger("badnets", channels=1, image_size=(28, 28), size=3, seed=0)
        target = 0
    attack = dict(trigger=trigger, target=target)
    before = original.evaluate(test, **attack)

    out_dir = args.workdir / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    repaired_file, report_file = out_dir / f"{name}.repaired.pth", out_dir / f"{name}.report.json"
    seconds = run_defend(ckpt, train_dir, clean_dir, repaired_file, report_file, args)
    report = json.loads(report_file.read_text())
    claimed = claim(report)
    repaired = Inspection(load_checkpoint(repaired_file), device="cpu")
    after = repaired.evaluate(test, **attack)
    found, precision, recall = suspects(report, truth)

    best = None
    if not args.no_oracle and before.asr is not None and before.asr > ASR_GOAL:
        from proof_suggest import oracle

        train = load_images(train_dir)
        clean = load_images(clean_dir)
        original.collect(clean, train)
        hit = oracle(original, sample_subset(test, 1000), before.acc)
        if hit is not None:
            chosen, combine, mask = hit
            m = original.evaluate(test, mask=mask, **attack)
            best = {
                "config": describe(chosen, combine),
                "pruned": mask.count(),
                "acc": m.acc,
                "asr": m.asr,
            }
    drop = before.acc - after.acc
    false_repair = claimed["verdict"] == "repairs" and (
        (after.asr is not None and after.asr > ASR_GOAL) or drop > ACC_BUDGET
    )
    result = {
        "name": name,
        "test_images": len(test),
        "target": target,
        "acc_before": before.acc,
        "asr_before": before.asr,
        "acc_after": after.acc,
        "asr_after": after.asr,
        "real_drop": drop,
        "claim": claimed,
        "seconds": seconds,
        "suspected": found,
        "poisoned": int(truth.sum()),
        "precision": precision,
        "recall": recall,
        "oracle": best,
        "oracle_run": not args.no_oracle,
        "false_repair": false_repair,
        "defend_args": args.defend_args,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
    }
    cache.write_text(json.dumps(result, indent=1))
    return result


def _num(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _interval(pair) -> str:
    if not pair:
        return ""
    lo, hi = pair
    return f" [{_num(lo, 1) if lo is not None else '…'}, {_num(hi, 1)}]"


def row(r: dict) -> str:
    c = r["claim"]
    est_asr = "-" if c["estimated_asr"] is None else f"{c['estimated_asr']:.1f}"
    est_asr += _interval(c["asr_interval"]) + (f" ({c['asr_samples']})" if c["asr_samples"] else "")
    est_drop = "-" if c["acc_drop_estimate"] is None else f"{c['acc_drop_estimate']:.2f}"
    est_drop += _interval(c["acc_drop_interval"]) + (
        f" ({c['acc_samples']})" if c["acc_samples"] else ""
    )
    if r["oracle"] is not None:
        o = r["oracle"]
        oracle = f"{o['config']} ({o['pruned']}): {o['acc']:.2f} / {o['asr']:.2f}"
    elif not r["oracle_run"]:
        oracle = "not run"
    elif r["asr_before"] is None or r["asr_before"] <= ASR_GOAL:
        oracle = "nothing to remove"
    else:
        oracle = "no pruning repairs within 2 points"
    verdict = c["verdict"] + (" **FALSE REPAIR**" if r["false_repair"] else "")
    if r["asr_before"] is not None and r["asr_before"] <= ASR_GOAL:
        goal = "left as is" if not c["steps"] else "changed"
    else:
        held = r["asr_after"] is not None and r["asr_after"] <= ASR_GOAL
        goal = "yes" if held and r["real_drop"] <= ACC_BUDGET else "no"
    return (
        f"| {r['name']} | {_num(r['acc_before'])} / {_num(r['asr_before'])} | "
        f"{_num(r['acc_after'])} / {_num(r['asr_after'])} | {goal} | {verdict} | {est_asr} | "
        f"{est_drop} | {r['real_drop']:.2f} | {'; '.join(c['steps']) or 'none'} | {oracle} | "
        f"{r['seconds']:.0f} s |"
    )


HEADER = [
    "| model | before: ACC / ASR % | after: ACC / ASR % | real repair | claimed verdict "
    "| est. ASR % [interval] (n) "
    "| est. ACC drop [interval] (n) | real drop | steps | oracle (pruned): ACC / ASR | time |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--workdir", type=Path, default=Path("/work/proof-models"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-limit", type=int, default=10000)
    parser.add_argument("--no-oracle", action="store_true")
    parser.add_argument("--defend-args", default="", help="more `bnp defend` options")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    parser.add_argument(
        "--table", action="store_true", help="only print the table of the results saved earlier"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.names or [
        n for n in ORDER if n == "demo" or (args.workdir / f"{n}.data.pt").exists()
    ]
    results = []
    for name in names:
        cache = args.workdir / "results" / f"{name}.json"
        if args.table and not cache.exists():
            continue
        r = json.loads(cache.read_text()) if args.table else analyse(name, args)
        results.append(r)
        print("\n".join(HEADER[:1] + [row(r)]), flush=True)
        print(
            f"  {name}: suspected {r['suspected']} of 500 (poisoned {r['poisoned']}), precision "
            f"{r['precision']:.2f} recall {r['recall']:.2f}; target claimed "
            f"{r['claim']['target']} (true {r['target']}); why: {r['claim']['reason']}",
            flush=True,
        )
    text = "\n".join(HEADER + [row(r) for r in results]) + "\n"
    bad = [r["name"] for r in results if r["false_repair"]]
    if bad:
        text += f"\nFALSE REPAIR on: {', '.join(bad)}\n"
    print("\n" + text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
