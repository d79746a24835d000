"""How long the suggestion takes on the demo model after the analysis, beside one statistics pass.

    python bench/bench_suggest.py [--threads 2] [--rounds 3]

One statistics pass = `Inspection.collect` over the demo's clean (500) and suspect (500) samples,
what the window's Analyze runs. The suggestion = suspect analysis (scores, split, target) +
`core.evidence.suggest.suggest` with its probe, everything that follows the analysis. Rounds
alternate the two; the medians and their ratio are printed (target: suggestion ≤ 5 s on 2 cores),
with the machine's load average, since other jobs slow both.
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
from core.evidence.suggest import suggest  # noqa: E402
from core.evidence.suspects import analyse_suspects, make_probe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo = load_demo("cpu")
    inspection = demo.inspection
    inspection.collect(demo.clean, demo.train)  # warm-up
    stats_times, suggest_times = [], []
    result = None
    for _ in range(args.rounds):
        start = time.perf_counter()
        inspection.collect(demo.clean, demo.train)
        stats_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        probe = make_probe(inspection, demo.train, demo.clean)
        analysis = analyse_suspects(inspection, demo.train, demo.clean, probe=probe)
        result = suggest(inspection, analysis, demo.train, demo.clean, probe=probe)
        suggest_times.append(time.perf_counter() - start)
    stats_s, suggest_s = statistics.median(stats_times), statistics.median(suggest_times)
    print(f"threads             {args.threads}")
    print(f"load average        {os.getloadavg()[0]:.1f} (1 min, at the end)")
    print(f"statistics pass     {stats_s:6.2f} s  (1000 samples; rounds {_fmt(stats_times)})")
    print(f"suggestion          {suggest_s:6.2f} s  (rounds {_fmt(suggest_times)}; target ≤ 5 s)")
    print(f"ratio               {suggest_s / stats_s:6.2f} × one statistics pass")
    print(f"masks evaluated     {result.tried}, forward passes {probe.forwards} samples")
    print(f"suggestion          {result.why}")


def _fmt(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


if __name__ == "__main__":
    main()
