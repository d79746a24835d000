"""How long the repair takes on the demo model, beside one statistics pass (issue 17's targets).

    python bench/bench_repair.py [--threads 2] [--rounds 2]

One statistics pass = `Inspection.collect` over the demo's clean (500) and suspect (500) samples.
The repair = suspect analysis + `core.evidence.repair_search.search_repair` (the held-out split, the
pruning suggested on the selection part, the recovery fine-tunings, the verdicts), as
`bnp defend --auto` runs it. Four searches are timed in alternating rounds with the statistics
pass: pruning alone (`--no-recovery`), pruning alone finding no repair, the default search, and
a search that finds no repair (the goal set below 0 %, so that nothing repairs: the pruning
search falls back to the lowest estimate within the budget, and every candidate is built and
judged: the worst case). Each process pays its one-time start-up costs in its first search.
Printed: medians, the ratios to the statistics pass (of the wall time, and of this process's
CPU time, which other jobs on a shared machine disturb less), the whole pipeline (statistics +
repair) against the 60 s target, the cost of one recovery epoch, and the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.demo import load_demo  # noqa: E402
from core.evidence.repair_search import search_repair  # noqa: E402
from core.evidence.suspects import analyse_suspects, make_probe  # noqa: E402

SEARCHES = {
    "pruning only": dict(recovery=False),
    "pruning only, no repair": dict(recovery=False, asr_goal=-1.0),
    "default": dict(),
    "no repair (worst case)": dict(asr_goal=-1.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo = load_demo("cpu")
    inspection = demo.inspection
    inspection.collect(demo.clean, demo.train)  # warm-up
    stats_times: list[float] = []
    stats_cpu: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in SEARCHES}
    cpu: dict[str, list[float]] = {name: [] for name in SEARCHES}
    outcomes = {}
    cpu_start = time.process_time()
    for _ in range(args.rounds):
        for name, options in SEARCHES.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            inspection.collect(demo.clean, demo.train)
            stats_times.append(time.perf_counter() - start)
            stats_cpu.append(time.process_time() - start_cpu)
            start, start_cpu = time.perf_counter(), time.process_time()
            probe = make_probe(inspection, demo.train, demo.clean)
            analysis = analyse_suspects(inspection, demo.train, demo.clean, probe=probe)
            outcomes[name] = search_repair(
                inspection, analysis, demo.train, demo.clean, probe=probe, **options
            )
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    stats_s = statistics.median(stats_times)
    print(f"threads             {args.threads}")
    print(f"load average        {os.getloadavg()[0]:.1f} (1 min, at the end)")
    print(f"cpu time            {time.process_time() - cpu_start:.1f} s in all (this process)")
    stats_c = statistics.median(stats_cpu)
    print(f"statistics pass     {stats_s:6.2f} s  (1000 samples; rounds {_fmt(stats_times)})")
    print(f"{'':<20}{stats_c:6.2f} s of CPU time (this process's threads together)")
    for name, values in times.items():
        t = statistics.median(values)
        out = outcomes[name]
        print(
            f"{name:<24}{t:6.2f} s  = {t / stats_s:5.2f} × a statistics pass; statistics + "
            f"repair {stats_s + t:6.2f} s (target ≤ 60 s); rounds {_fmt(values)}"
        )
        epochs = sum(c.recovery.epochs_run for c in out.candidates if c.recovery is not None)
        print(
            f"{'':<24}verdict: {out.verdict.verdict}; steps: {out.steps or ['none']}; "
            f"recovery epochs run: {epochs}"
        )
        print(f"{'':<24}{out.verdict.describe()}")
        c = statistics.median(cpu[name])
        print(
            f"{'':<24}CPU time {c:6.2f} s = {c / stats_c:5.2f} × a statistics pass's "
            "(less sensitive to other processes than the wall time)"
        )
    # the two no-repair searches share their pruning search: the rest is the recoveries
    worst, prune = "no repair (worst case)", "pruning only, no repair"
    epochs = sum(c.recovery.epochs_run for c in outcomes[worst].candidates if c.recovery)
    if epochs:
        per = (statistics.median(times[worst]) - statistics.median(times[prune])) / epochs
        print(
            f"recovery epoch      {per:6.2f} s  = {per / stats_s:5.2f} × a statistics pass "
            f"(the worst case less pruning only, no repair, over its {epochs} epochs)"
        )


def _fmt(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


if __name__ == "__main__":
    main()
