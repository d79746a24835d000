"""A suggested prune configuration chosen without the trigger and without test labels.

Among the configurations the window offers (one method, or several combined by union or
intersection, at a shared threshold k), the suggestion is the one pruning the fewest neurons
whose *estimated* ASR (`core.suspects`) is at most `asr_goal` while the accuracy on the clean
labelled samples drops at most `acc_budget` points. The search uses that pruning more neurons
(a smaller k) lowers the ASR and the accuracy: per configuration, a bisection over k finds the
largest k whose estimated ASR is low enough, then one accuracy check decides. When no
configuration repairs within the budget, the suggestion says so and names the configuration
with the lowest estimated ASR that stays within it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from core.data import ImageSet
from core.errors import BnpError, Cancelled
from core.inspection import METHOD_NAMES, METHODS, build_mask
from core.masks import PruneMask
from core.statistics import CancelCheck, Progress
from core.suspects import (
    AsrEstimate,
    MaskProbe,
    SuspectAnalysis,
    asr_from_predictions,
    make_probe,
)

ACC_BUDGET = 2.0  # points of clean accuracy the repair may cost
ASR_GOAL = 5.0  # estimated ASR (%) that counts as repaired
K_GRID = tuple(x / 4 for x in range(4, 25))  # 1.0, 1.25, ..., 6.0
SCREEN_CHUNK = 16  # suspected samples looked at before a hopeless mask is rejected


def configurations(methods: Sequence[str]) -> list[tuple[tuple[str, ...], str]]:
    """Pairs by intersection, single methods, then unions of the available methods."""
    methods = [m for m in METHODS if m in methods]
    singles = [((m,), "union") for m in methods]
    groups = [tuple(m for m in methods if m != left_out) for left_out in reversed(methods)] + [
        tuple(methods)
    ]
    groups = [g for g in dict.fromkeys(groups) if len(g) >= 2]
    # intersections prune least: found first, they let the search skip larger masks
    return (
        [(g, "intersection") for g in groups if len(g) == 2]
        + singles
        + [(g, "union") for g in groups]
    )


@dataclass
class Suggestion:
    """The configuration to prune with, its clean-accuracy cost and estimated ASR, and why."""

    methods: dict[str, float]
    combine: str
    pruned: int
    clean_acc_before: float | None
    clean_acc: float | None
    estimate: AsrEstimate
    repairs: bool  # estimated ASR ≤ goal within the budget
    why: str
    acc_budget: float = ACC_BUDGET
    asr_goal: float = ASR_GOAL
    tried: int = 0  # masks evaluated
    mask: PruneMask = field(default_factory=PruneMask, repr=False)

    @property
    def clean_acc_drop(self) -> float | None:
        if self.clean_acc is None or self.clean_acc_before is None:
            return None
        return self.clean_acc_before - self.clean_acc

    def to_dict(self) -> dict:
        """The report's `suggestion` entry."""
        drop = self.clean_acc_drop
        return {
            "methods": dict(self.methods),
            "combine": self.combine,
            "pruned": self.pruned,
            "clean_acc_drop": None if drop is None else round(drop, 2),
            "estimated_asr": None
            if self.estimate.percent is None
            else round(self.estimate.percent, 2),
            "repairs": self.repairs,
            "why": self.why,
            "clean_acc_before": self.clean_acc_before,
            "clean_acc_after": self.clean_acc,
            "acc_budget": self.acc_budget,
            "asr_goal": self.asr_goal,
            "n_suspected": self.estimate.n,
        }


def describe(methods: Mapping[str, float], combine: str) -> str:
    """'EP k=3 ∪ BNP k=3' style name of a configuration."""
    if not methods:
        return "no pruning"
    sign = " ∪ " if combine == "union" else " ∩ "
    return sign.join(f"{METHOD_NAMES[m]} k={k:g}" for m, k in methods.items())


class _Search:
    """Cached estimated ASR and clean accuracy of masks (keyed by the pruned neurons)."""

    def __init__(self, probe, analysis, clean_labels, goal, budget, cancel, progress, total):
        self.probe, self.analysis, self.goal, self.budget = probe, analysis, goal, budget
        self.clean_labels = clean_labels
        self.cancel, self.progress, self.total = cancel, progress, total
        self.index = analysis.suspected_index()
        self.target = analysis.target
        self.asr_cache: dict[tuple, AsrEstimate] = {}
        self.rejected: dict[tuple, AsrEstimate] = {}  # screened out: a lower bound only
        self.acc_cache: dict[tuple, float] = {}
        self.steps = 0
        self.target_rows = (
            torch.nonzero(clean_labels == self.target).flatten()
            if clean_labels is not None and self.target is not None
            else torch.zeros(0, dtype=torch.long)
        )
        self.prior = len(self.target_rows) / len(clean_labels) if clean_labels is not None else 0
        self.acc_before = (
            self.accuracy(PruneMask(), stop=False) if clean_labels is not None else None
        )

    @staticmethod
    def key(mask: PruneMask) -> tuple:
        return tuple(sorted((name, tuple(c)) for name, c in mask.neurons().items())) + tuple(
            sorted((n, tuple(torch.nonzero(b).flatten().tolist())) for n, b in mask.beta.items())
        )

    def tick(self) -> None:
        self.steps += 1
        if self.cancel is not None and self.cancel():
            raise Cancelled("Suggestion cancelled.")
        if self.progress is not None:
            self.progress(min(self.steps, self.total - 1), self.total)

    def asr(self, mask: PruneMask, screen: bool = False) -> AsrEstimate:
        """Estimated ASR of `mask`. With `screen`, a mask that surely misses the goal is
        rejected after a first chunk of samples (its estimate then only says "above")."""
        key = self.key(mask)
        if key in self.asr_cache:
            return self.asr_cache[key]
        if screen and key in self.rejected:
            return self.rejected[key]
        self.tick()
        n = len(self.index)
        # with the correction the raw share may exceed the goal by at most the prior
        allowed = n * (self.goal / 100 * (1 - self.prior) + self.prior) if screen else None
        preds, hits = [], 0
        for start in range(0, n, SCREEN_CHUNK if screen else max(n, 1)):
            rows = self.index[start : start + (SCREEN_CHUNK if screen else n)]
            pred = self.probe.predict("train", mask, index=rows, cancel=self.cancel)
            preds.append(pred)
            hits += int((pred == self.target).sum())
            if allowed is not None and hits > allowed + 1e-9:
                self.rejected[key] = AsrEstimate(100.0 * hits / n, n, target=self.target)
                return self.rejected[key]
        pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
        recall = None
        if len(self.target_rows):
            clean_pred = self.probe.predict(
                "clean", mask, index=self.target_rows, cancel=self.cancel
            )
            recall = float((clean_pred == self.target).double().mean())
        self.asr_cache[key] = asr_from_predictions(pred, self.target, self.prior, recall)
        return self.asr_cache[key]

    def accuracy(self, mask: PruneMask, stop: bool = True) -> float:
        """Clean accuracy (%); with `stop`, counting ends once the budget is surely exceeded
        (the value returned is then an upper bound, already below the allowed accuracy)."""
        key = self.key(mask)
        if key in self.acc_cache:
            return self.acc_cache[key]
        self.tick()
        x = self.probe.inputs["clean"]
        n = len(x)
        allowed_errors = None
        if stop and self.acc_before is not None:
            allowed_errors = n * (100 - self.acc_before + self.budget) / 100
        errors = 0
        step = self.probe.batch_size
        for start in range(0, n, step):
            rows = torch.arange(start, min(start + step, n))
            pred = self.probe.predict("clean", mask, index=rows, cancel=self.cancel)
            errors += int((pred != self.clean_labels[rows]).sum())
            if allowed_errors is not None and errors > allowed_errors + 1e-9:
                break
        acc = 100.0 * (n - errors) / n
        self.acc_cache[key] = acc
        return acc

    def within_budget(self, acc: float) -> bool:
        return self.acc_before is None or acc >= self.acc_before - self.budget - 1e-9

    def repaired(self, estimate: AsrEstimate) -> bool:
        return estimate.percent is not None and estimate.percent <= self.goal + 1e-9


def suggest(
    inspection,
    analysis: SuspectAnalysis,
    train: ImageSet,
    clean: ImageSet,
    *,
    acc_budget: float = ACC_BUDGET,
    asr_goal: float = ASR_GOAL,
    methods: Sequence[str] | None = None,
    ks: Sequence[float] = K_GRID,
    probe: MaskProbe | None = None,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> Suggestion:
    """The smallest pruning (method, k, combination) whose estimated ASR is ≤ `asr_goal` while
    the clean accuracy drops at most `acc_budget` points; says so plainly when none does."""
    if clean is None or len(clean) == 0:
        raise BnpError("A suggestion needs clean labelled samples to check accuracy: pass --clean.")
    if not (acc_budget >= 0) or acc_budget != acc_budget or acc_budget == float("inf"):
        raise BnpError(f"The accuracy budget must be a number ≥ 0, got {acc_budget}.")
    available = [m for m in METHODS if inspection.available(m)]
    if methods is not None:
        available = [m for m in available if m in methods]
    ks = sorted(set(float(k) for k in ks))
    if probe is None:
        probe = make_probe(inspection, train, clean)
    elif "clean" not in probe.inputs:
        probe.add("clean", clean.images)
    configs = configurations(available)
    total = max(2, len(configs) * (len(ks).bit_length() + 2) + 2)
    search = _Search(probe, analysis, clean.labels, asr_goal, acc_budget, cancel, progress, total)
    none_estimate = search.asr(PruneMask()) if analysis.target is not None else AsrEstimate(None, 0)
    if analysis.target is None:
        if progress is not None:
            progress(total, total)
        return Suggestion(
            {},
            "union",
            0,
            search.acc_before,
            search.acc_before,
            none_estimate,
            True,
            f"Prune nothing: {_lower_first(analysis.reason)}",
            acc_budget,
            asr_goal,
            search.steps,
        )
    scores = {m: inspection.scores(m) for m in available}
    channels = inspection.channels

    def mask_of(config, k) -> tuple[dict[str, float], PruneMask]:
        names, combine = config
        chosen = {m: k for m in names}
        return chosen, build_mask(scores, chosen, combine, channels=channels)

    best: tuple | None = None  # (pruned, -acc, chosen, combine, mask, estimate, acc)
    for config in configs:
        # most pruning first: if even the smallest k does not repair, this configuration can't
        lo_chosen, lo_mask = mask_of(config, ks[0])
        if lo_mask.count() == 0:
            continue
        if best is not None and mask_of(config, ks[-1])[1].count() >= best[0]:
            continue  # even its smallest pruning is no smaller than the best so far
        if not search.repaired(search.asr(lo_mask, screen=True)):
            continue
        # bisection: the largest k (fewest neurons) whose estimate still repairs
        good, bad = 0, len(ks)  # ks[good] repairs; ks[bad] (or beyond) does not
        while bad - good > 1:
            mid = (good + bad) // 2
            _chosen, mask = mask_of(config, ks[mid])
            if best is not None and mask.count() > best[0]:
                good = mid  # larger than the best so far anyway: look at larger k only
                continue
            if mask.count() > 0 and search.repaired(search.asr(mask, screen=True)):
                good = mid
            else:
                bad = mid
        chosen, mask = mask_of(config, ks[good])
        if best is not None and mask.count() > best[0]:
            continue
        acc = search.accuracy(mask)
        if not search.within_budget(acc):
            continue
        candidate = (mask.count(), -acc, chosen, config[1], mask, search.asr(mask), acc)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    if progress is not None:
        progress(total, total)
    if best is not None:
        pruned, _neg, chosen, combine, mask, estimate, acc = best
        drop = search.acc_before - acc
        why = (
            f"{describe(chosen, combine)} is the smallest pruning ({pruned} neurons) whose "
            f"estimated ASR is {estimate.percent:.1f} % (≤ {asr_goal:g} %, from "
            f"{estimate.n} suspected samples) at a clean-accuracy cost of {drop:.1f} points "
            f"(budget {acc_budget:g})."
        )
        return Suggestion(
            chosen, combine, pruned, search.acc_before, acc, estimate, True, why,
            acc_budget, asr_goal, search.steps, mask,
        )  # fmt: skip
    fallback = None  # no repair: the lowest estimated ASR within the budget, looked for now
    for config in configs:
        fallback = _consider_fallback(search, fallback, config, ks, mask_of)
    if fallback is None:
        why = (
            f"No configuration repairs within the budget: every candidate pruning costs more "
            f"than {acc_budget:g} points of clean accuracy; nothing pruned (estimated ASR "
            f"stays {none_estimate.percent:.1f} %)."
        )
        return Suggestion(
            {}, "union", 0, search.acc_before, search.acc_before, none_estimate, False, why,
            acc_budget, asr_goal, search.steps,
        )  # fmt: skip
    chosen, combine, mask, estimate, acc = fallback
    why = (
        f"No configuration repairs within the budget: the best within {acc_budget:g} points, "
        f"{describe(chosen, combine)}, leaves an estimated ASR of {estimate.percent:.1f} % "
        f"(goal ≤ {asr_goal:g} %) — not a repair."
    )
    return Suggestion(
        chosen, combine, mask.count(), search.acc_before, acc, estimate, False, why,
        acc_budget, asr_goal, search.steps, mask,
    )  # fmt: skip


def _consider_fallback(search: _Search, fallback, config, ks, mask_of):
    """Keep the lowest estimated ASR among masks within the budget: per configuration, the
    smallest k whose clean accuracy stays within it (bisection)."""
    hi = len(ks) - 1  # the largest k that prunes anything
    while hi >= 0 and mask_of(config, ks[hi])[1].count() == 0:
        hi -= 1
    if hi < 0:
        return fallback
    lo = -1  # ks[hi] within budget (checked below); ks[lo] (or beyond) not
    chosen, mask = mask_of(config, ks[hi])
    if not search.within_budget(search.accuracy(mask)):
        return fallback
    while hi - lo > 1:
        mid = (lo + hi) // 2
        _c, m = mask_of(config, ks[mid])
        if search.within_budget(search.accuracy(m)):
            hi = mid
        else:
            lo = mid
    chosen, mask = mask_of(config, ks[hi])
    estimate = search.asr(mask)
    acc = search.accuracy(mask)
    if fallback is None or (estimate.percent, mask.count()) < (
        fallback[3].percent,
        fallback[2].count(),
    ):
        return (chosen, config[1], mask, estimate, acc)
    return fallback


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text
