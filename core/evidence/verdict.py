"""Held-out verdicts on a repair: chosen on one part of the defender's data, judged on another.

A repair chosen on some samples and measured on the same ones looks better than it is (the
search picked what happens to work on them). So the suspected poisoned samples and the clean
labelled samples are each split, seeded and deterministically, into a *selection* part — the
search, the recovery's training and its early stopping see only that — and a *judging* part
that nothing saw before the verdict (`Holdout`). The clean split is stratified by label, so that
both parts keep the classes' shares; the stamped set of a reconstructed trigger is made from the
judging clean samples alone.

The verdict (`judge`) rests on bounds, never on a point estimate alone:

- **repairs**: the held-out ASR's upper confidence bound (Wilson) is at most the goal *and* the
  upper bound of the held-out clean-accuracy drop — paired: the unpruned and the repaired model
  on the same held-out clean samples (`paired_drop`) — is within
  the budget (conditional on the samples whose correctness changed, McNemar's view). The drop
  reported is the paired estimate where it is a cost; a gain only as far as the interval
  shows one (`shown_drop`: 0 while the upper bound is ≥ 0), the measured value beside it;
- **does not repair**: a lower bound says it fails (ASR's lower bound above the goal, or the
  drop's lower bound above the budget);
- **unverified**: neither, with the reason — too few held-out samples for any bound that low
  ("only 22 held-out suspected samples: the 95 % bound cannot go below 14.9 %"), or an interval
  that straddles the goal or the budget.

Where several candidates are judged on the same held-out samples, the caller asks for a
Bonferroni-adjusted confidence (`z_for`), so that the chance of any false "repairs" among them
stays at most 2.5 % (one-sided).

What the split does not cover, said plainly: the neuron scores (BNP's clean statistics, the
suspect analysis) are computed once from every sample, without labels; the choice among
configurations, the recovery's training and its stopping use the selection part only.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from statistics import NormalDist

import torch

from core.errors import BnpError

ASR_GOAL = 5.0  # held-out ASR bound (%) that counts as repaired
ACC_BUDGET = 2.0  # points of clean accuracy the repair may cost
JUDGE_SHARE = 0.5  # share of each set kept for judging
ONE_SIDED = 0.025  # error of one bound (a two-sided 95 % interval)

REPAIRS, FAILS, UNVERIFIED = "repairs", "does not repair", "unverified"


def z_for(looks: int = 1, error: float = ONE_SIDED) -> float:
    """The normal quantile of one bound when `looks` candidates are judged on the same
    samples (Bonferroni): 1.96 for one look, about 2.39 for three."""
    return NormalDist().inv_cdf(1 - error / max(1, looks))


def confidence_of(z: float) -> float:
    """Two-sided confidence (%) of a bound at `z` (95 for 1.96)."""
    return 100 * (2 * NormalDist().cdf(z) - 1)


def wilson(hits: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson interval (%) of `hits` successes in `n` trials; (0, 100) without samples."""
    if n <= 0:
        return 0.0, 100.0
    p = min(max(hits / n, 0.0), 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def lowest_bound(n: int, z: float = 1.96) -> float:
    """The lowest upper bound (%) `n` samples can give: that of zero hits."""
    return wilson(0, n, z)[1]


def paired_drop(
    before_correct: torch.Tensor, after_correct: torch.Tensor, z: float = 1.96
) -> tuple[float, float, float]:
    """The accuracy drop (points) from `before` to `after` on the same samples: estimate and
    interval. Conditional on the m samples whose correctness changed (McNemar's view): of
    those, l were lost; the drop is (2·π − 1)·m/n with π the share lost, bounded by Wilson's
    interval of l in m. No changed prediction gives [0, 0]."""
    before, after = before_correct.bool(), after_correct.bool()
    n = len(before)
    if n == 0:
        return 0.0, -100.0, 100.0
    lost = int((before & ~after).sum())  # right before, wrong after
    won = int((~before & after).sum())
    m = lost + won
    estimate = 100 * (lost - won) / n
    if m == 0:
        return estimate, 0.0, 0.0
    lo, hi = wilson(lost, m, z)
    return estimate, (2 * lo / 100 - 1) * 100 * m / n, (2 * hi / 100 - 1) * 100 * m / n


def shown_drop(estimate: float, upper: float) -> float:
    """The accuracy drop (points) to report from a paired `estimate` and its `upper` bound: a
    cost as measured; a gain (a negative drop) only as far as the interval shows one — 0 while
    the upper bound is ≥ 0, else that bound (the smallest gain the samples show). A repair is
    not expected to raise clean accuracy: on blend, across seeds, every held-out "gain" (up to
    2.8 points) was a cost on the full test set. Where the real drop is ≥ 0 this is never
    further from it than the raw estimate; the bounds, and so the verdict, do not change."""
    if estimate >= 0:
        return estimate
    return min(0.0, upper)


# ---- the split --------------------------------------------------------------------------------


def split_rows(rows: torch.Tensor, seed: int, salt: str, share: float = JUDGE_SHARE):
    """`rows` split into (select, judge) at random, `share` of them (rounded down) judged;
    the same seed and salt give the same split."""
    rows = torch.as_tensor(rows, dtype=torch.long).flatten()
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(salt.encode()))
    order = rows[torch.randperm(len(rows), generator=g)]
    n_judge = int(len(rows) * share)
    judge, select = order[:n_judge], order[n_judge:]
    return select.sort().values, judge.sort().values


def stratified_split(
    labels: torch.Tensor,
    seed: int,
    share: float = JUDGE_SHARE,
    salt: str = "clean",
    rows: torch.Tensor | None = None,
):
    """`rows` (default: every index of `labels`) split into (select, judge), each class split
    on its own (the judging part gets `share` of each class, rounded down)."""
    rows = torch.arange(len(labels)) if rows is None else torch.as_tensor(rows).flatten()
    select, judge = [], []
    of_rows = labels[rows]
    for label in torch.unique(of_rows).tolist():
        s, j = split_rows(rows[of_rows == label], seed, f"{salt}-{label}", share)
        select.append(s)
        judge.append(j)
    empty = torch.zeros(0, dtype=torch.long)
    return (
        torch.cat(select).sort().values if select else empty,
        torch.cat(judge).sort().values if judge else empty,
    )


@dataclass
class Holdout:
    """Which suspected samples (rows of the suspect set) and which clean samples select a
    repair, and which judge it; the two parts of each are disjoint."""

    suspected_select: torch.Tensor
    suspected_judge: torch.Tensor
    clean_select: torch.Tensor
    clean_judge: torch.Tensor
    seed: int = 0

    @classmethod
    def split(
        cls,
        suspected: torch.Tensor,
        clean_labels: torch.Tensor,
        seed: int = 0,
        share: float = JUDGE_SHARE,
    ) -> Holdout:
        """Split the suspected rows at random and the clean samples by class."""
        if not 0 < share < 1:
            raise BnpError(f"The judged share must lie strictly between 0 and 1, got {share}.")
        s_select, s_judge = split_rows(suspected, seed, "suspected", share)
        c_select, c_judge = stratified_split(clean_labels, seed, share)
        return cls(s_select, s_judge, c_select, c_judge, seed)

    def to_dict(self) -> dict:
        """The split's seed and the size of each part (the report's `holdout`)."""
        return {
            "seed": self.seed,
            "suspected_select": len(self.suspected_select),
            "suspected_judge": len(self.suspected_judge),
            "clean_select": len(self.clean_select),
            "clean_judge": len(self.clean_judge),
        }


# ---- the verdict ------------------------------------------------------------------------------


@dataclass
class Verdict:
    """A held-out verdict: the ASR estimate and the accuracy drop, each with its interval and
    the samples it rests on, and the one-sentence reason."""

    verdict: str  # REPAIRS, FAILS or UNVERIFIED
    reason: str
    estimate: float | None  # held-out ASR (%)
    interval: tuple[float, float] | None
    n: int  # held-out samples the ASR rests on
    basis: str  # "stamped", "suspected" or "none"
    acc_drop: float | None  # points: a cost; a gain only as far as the interval shows one
    acc_interval: tuple[float, float] | None
    n_acc: int
    acc_before: float | None = None  # held-out clean accuracy (%), unpruned
    acc_after: float | None = None
    confidence: float = 95.0  # two-sided confidence (%) of each interval
    goal: float = ASR_GOAL
    budget: float = ACC_BUDGET
    acc_drop_raw: float | None = None  # the paired estimate as measured (`shown_drop`)

    @property
    def repairs(self) -> bool:
        """Whether the verdict is "repairs"."""
        return self.verdict == REPAIRS

    def describe(self) -> str:
        """E.g. 'held-out ASR 0.9 % [0.2, 3.1] from 225 stamped samples'."""
        if self.estimate is None:
            return "no held-out ASR estimate (no backdoor evidence)"
        lo, hi = self.interval
        what = "stamped clean samples" if self.basis == "stamped" else "suspected samples"
        return (
            f"held-out ASR {self.estimate:.1f} % [{lo:.1f}, {hi:.1f}] from {self.n} {what}, "
            f"accuracy drop {self.acc_drop:.1f} points "
            f"[{self.acc_interval[0]:.1f}, {self.acc_interval[1]:.1f}] from {self.n_acc} "
            f"clean samples{self.gain_note()}"
        )

    def gain_note(self) -> str:
        """Where a measured gain is not reported as a negative cost, says so."""
        raw = self.acc_drop_raw
        if raw is None or self.acc_drop is None or raw >= self.acc_drop - 1e-9:
            return ""
        if self.acc_drop >= 0:
            return f" (a gain of {-raw:.1f} measured, which the interval does not show: no cost)"
        return f" (a gain of {-raw:.1f} measured; the interval shows at least {-self.acc_drop:.1f})"

    def to_dict(self) -> dict:
        """The verdict in the report (`suggestion`'s contract keys, rounded)."""

        def r(v):
            return None if v is None else round(float(v), 2)

        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "estimated_asr": r(self.estimate),
            "asr_interval": None if self.interval is None else [r(v) for v in self.interval],
            "asr_samples": self.n,
            "asr_basis": self.basis,
            "acc_drop_estimate": r(self.acc_drop),
            "acc_drop_raw": r(self.acc_drop_raw),
            "acc_drop_interval": None
            if self.acc_interval is None
            else [r(v) for v in self.acc_interval],
            "acc_samples": self.n_acc,
            "held_out_acc_before": r(self.acc_before),
            "held_out_acc_after": r(self.acc_after),
            "confidence": round(self.confidence, 1),
        }


def asr_interval(
    pred: torch.Tensor,
    target: int,
    z: float = 1.96,
    prior: float = 0.0,
    recall: float | None = None,
) -> tuple[float, tuple[float, float]]:
    """ASR estimate (%) and interval from held-out predictions: the share classified as the
    target; for suspected samples corrected (estimate and both bounds alike) for the share
    `prior` of them that were of the target class, classified as such as often as clean
    target samples are (`recall`) — `core.evidence.suspects.asr_from_predictions`'s correction."""
    n = len(pred)
    hits = int((pred == target).sum())
    lo, hi = wilson(hits, n, z)
    values = [100 * hits / n if n else 0.0, lo, hi]
    if recall is not None and 0 < prior < 1:
        values = [min(max((v - 100 * prior * recall) / (1 - prior), 0.0), 100.0) for v in values]
    return values[0], (values[1], values[2])


def judge(
    asr_pred: torch.Tensor | None,
    target: int | None,
    basis: str,
    clean_before: torch.Tensor,
    clean_after: torch.Tensor,
    clean_labels: torch.Tensor,
    *,
    goal: float = ASR_GOAL,
    budget: float = ACC_BUDGET,
    z: float = 1.96,
    prior: float = 0.0,
    recall: float | None = None,
) -> Verdict:
    """The verdict on one repaired model from its held-out predictions: `asr_pred` of the
    judging stamped (or suspected) samples, `clean_before`/`clean_after` of the judging clean
    samples by the unpruned and the repaired model."""
    what = "stamped clean samples" if basis == "stamped" else "suspected samples"
    n_acc = len(clean_labels)
    before_ok = clean_before == clean_labels
    after_ok = clean_after == clean_labels
    raw, d_lo, d_hi = paired_drop(before_ok, after_ok, z)
    drop = shown_drop(raw, d_hi)  # the bounds, not this, decide the verdict
    acc_before = 100 * float(before_ok.double().mean()) if n_acc else None
    acc_after = 100 * float(after_ok.double().mean()) if n_acc else None
    conf = confidence_of(z)
    common = dict(
        acc_drop=drop,
        acc_drop_raw=raw,
        acc_interval=(d_lo, d_hi),
        n_acc=n_acc,
        acc_before=acc_before,
        acc_after=acc_after,
        confidence=conf,
        goal=goal,
        budget=budget,
    )
    if target is None or asr_pred is None:
        return Verdict(
            UNVERIFIED,
            "No backdoor evidence: there is nothing to repair, and no held-out estimate of an ASR.",
            None,
            None,
            0,
            "none",
            **common,
        )
    n = len(asr_pred)
    estimate, (lo, hi) = asr_interval(asr_pred, target, z, prior, recall)
    cl = f"{conf:.0f} %"
    asr_text = f"held-out ASR {estimate:.1f} % [{lo:.1f}, {hi:.1f}] from {n} {what}"
    drop_text = f"accuracy drop {drop:.1f} [{d_lo:.1f}, {d_hi:.1f}] points on {n_acc} clean samples"
    args = (estimate, (lo, hi), n, basis)
    if n_acc == 0:
        return Verdict(
            UNVERIFIED,
            "No held-out clean samples: the accuracy cost cannot be bounded.",
            *args,
            **common,
        )
    if lo > goal + 1e-9:
        return Verdict(
            FAILS,
            f"Does not repair: the {asr_text} is above the {goal:g} % goal "
            f"even at its {cl} lower bound.",
            *args,
            **common,
        )
    if d_lo > budget + 1e-9:
        return Verdict(
            FAILS,
            f"Does not repair within the budget: the {drop_text} exceed "
            f"{budget:g} points even at the {cl} lower bound.",
            *args,
            **common,
        )
    if hi <= goal + 1e-9 and d_hi <= budget + 1e-9:
        return Verdict(
            REPAIRS,
            f"Repairs: the {asr_text} is within the {goal:g} % goal at its "
            f"{cl} upper bound, and the {drop_text} stay within the {budget:g}-point "
            "budget.",
            *args,
            **common,
        )
    floor = lowest_bound(n, z)
    if recall is not None and 0 < prior < 1:  # the same correction as the bounds
        floor = min(max((floor - 100 * prior * recall) / (1 - prior), 0.0), 100.0)
    if hi > goal + 1e-9 and floor > goal + 1e-9:
        why = (
            f"only {n} held-out {what}: the {cl} bound cannot go below {floor:.1f} % "
            f"(estimate {estimate:.1f} %)"
        )
    elif hi > goal + 1e-9:
        why = f"the {asr_text} straddles the {goal:g} % goal"
    else:
        why = f"the {drop_text} straddle the {budget:g}-point budget"
    return Verdict(UNVERIFIED, f"Unverified: {why}.", *args, **common)
