"""A suggested prune configuration chosen without the trigger and without test labels.

Among the configurations the window offers (one method, or several combined by union or
intersection, at a shared threshold k), the suggestion is the one pruning the fewest neurons whose
*estimated* ASR (`core.evidence.suspects`) is low enough while the accuracy on the clean labelled
samples drops at most `acc_budget` points. "Low enough" is asked of the estimate's 95 % upper bound
(Wilson, from the n samples it rests on: stamped clean samples where a trigger was reconstructed,
else suspected ones): at most `asr_goal`. Only when no configuration meets that does a point
estimate ≤ `asr_goal` count, and the explanation calls the repair uncertain. These are the numbers
of the samples that chose the configuration, so they are optimistic: the held-out verdict on a
repair is `core.evidence.verdict`'s (`core.evidence.repair_search` runs this search on a selection
part and judges it on the rest). The search uses that pruning more neurons (a smaller k) lowers the
ASR and the accuracy: per configuration, a bisection over k finds the largest k whose estimate is
low enough, then one accuracy check decides. When no configuration repairs within the budget, the
suggestion says so and names the configuration with the lowest estimated ASR that stays within it.

Evaluations are kept cheap without changing the answer: masks are cached by the neurons they
prune (many k give the same mask), the unpruned model's predictions come from the statistics
pass, a mask that surely misses the goal is rejected after a first chunk of suspected samples,
a clean-accuracy count stops once the budget is surely exceeded, a configuration is searched
only over the k that prune no more than the best found so far, and, with no repair, a
configuration is searched for its lowest estimate within budget only when the largest k that
would match the best estimate so far stays within the budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from core.data.images import ImageSet
from core.defense.inspection import METHOD_NAMES, METHODS, build_mask
from core.defense.statistics import CancelCheck, Progress
from core.errors import BnpError, Cancelled
from core.evidence.suspects import (
    AsrEstimate,
    MaskProbe,
    SuspectAnalysis,
    asr_from_predictions,
    asr_from_stamped,
    make_probe,
    reconstruction,
)
from core.model.masks import PruneMask

ACC_BUDGET = 2.0  # points of clean accuracy the repair may cost
ASR_GOAL = 5.0  # estimated ASR (%) that counts as repaired
K_GRID = tuple(x / 4 for x in range(4, 25))  # 1.0, 1.25, ..., 6.0
SCREEN_CHUNK = 16  # suspected samples looked at before a hopeless mask is rejected
# suspected samples screened before the budget is looked at where the estimate is undecided
PRESCREEN = 48
ACC_CHUNK = 64  # clean samples counted between checks whether the budget is surely exceeded


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
    sure: bool = False  # repairs, and the estimate's 95 % upper bound says so too

    @property
    def clean_acc_drop(self) -> float | None:
        """Clean accuracy the suggestion costs, in points (None: not measured)."""
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
            "n_suspected": self.estimate.suspected,
            "estimate_basis": self.estimate.source(),
            "estimated_asr_upper95": None
            if self.estimate.percent is None
            else round(upper_bound(self.estimate.percent, self.estimate.n), 2),
            "sure": self.sure,
        }


def describe(methods: Mapping[str, float], combine: str) -> str:
    """'EP k=3 ∪ BNP k=3' style name of a configuration."""
    if not methods:
        return "no pruning"
    sign = " ∪ " if combine == "union" else " ∩ "
    return sign.join(f"{METHOD_NAMES[m]} k={k:g}" for m, k in methods.items())


def upper_bound(percent: float, n: int) -> float:
    """95 % Wilson upper bound (%) of an estimated share `percent` of `n` samples, the share
    taken as estimated (after the target-class correction, not rounded to whole samples)."""
    if n <= 0:
        return 100.0
    z, p = 1.96, min(max(percent / 100, 0.0), 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * min(1.0, centre + half)


class _Search:
    """Cached estimated ASR and clean accuracy of masks (keyed by the pruned neurons)."""

    def __init__(
        self, probe, analysis, clean_labels, goal, budget, cancel, progress, total, unpruned
    ):
        self.probe, self.analysis, self.goal, self.budget = probe, analysis, goal, budget
        self.clean_labels = clean_labels
        self.cancel, self.progress, self.total = cancel, progress, total
        self.index = analysis.suspected_index()
        self.target = analysis.target
        self.unpruned = dict(unpruned)  # set name → the unpruned model's predictions
        # the estimate's basis: clean samples stamped with a reconstructed trigger where one
        # passes validation, else the suspected samples (`core.evidence.suspects.estimate_asr`)
        self.stamped = None
        self.set_name = "train"
        if self.target is not None:
            found = reconstruction(probe, analysis, clean_labels, cancel, unpruned.get("clean"))
            if found.accepted:
                self.stamped, self.set_name = found, found.name
                self.index = torch.arange(found.n)
                self.unpruned[found.name] = found.before
        self.asr_cache: dict[tuple, AsrEstimate] = {}
        self.rejected: dict[tuple, tuple[float, AsrEstimate]] = {}  # screened out: goal, bound
        self.partial: dict[tuple, list[torch.Tensor]] = {}  # predictions of a first few rows
        self.acc_cache: dict[tuple, float] = {}
        self.verdicts: list[tuple[frozenset, bool]] = []  # pruned set, within the budget
        self.steps = 0
        self.target_rows = (
            torch.nonzero(clean_labels == self.target).flatten()
            if clean_labels is not None and self.target is not None and self.stamped is None
            else torch.zeros(0, dtype=torch.long)
        )
        self.prior = (
            len(self.target_rows) / len(clean_labels)
            if clean_labels is not None and self.stamped is None
            else 0
        )
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

    def predict(self, name: str, mask: PruneMask, rows: torch.Tensor) -> torch.Tensor:
        """Predictions of `rows` of one probe set; the unpruned model's from the statistics."""
        known = self.unpruned.get(name)
        if known is not None and mask.count() == 0:
            return known[rows]
        return self.probe.predict(name, mask, index=rows, cancel=self.cancel)

    def asr(
        self,
        mask: PruneMask,
        screen: bool = False,
        goal: float | None = None,
        first: int | None = None,
    ) -> AsrEstimate | None:
        """Estimated ASR of `mask`. With `screen`, a mask that surely misses `goal` (default:
        the search's) is rejected after a first chunk of samples (the chunks then double): its
        estimate is then only a lower bound, above that goal. With `first`, no more than about
        that many samples are looked at: None where they neither reject the mask nor are all
        of them (the predictions made are kept for the next call)."""
        goal = self.goal if goal is None else goal
        key = self.key(mask)
        if key in self.asr_cache:
            return self.asr_cache[key]
        if screen and key in self.rejected and goal <= self.rejected[key][0]:
            return self.rejected[key][1]
        if key not in self.partial:
            self.tick()
        n = len(self.index)
        # with the correction the raw share may exceed the goal by at most the prior
        allowed = n * (goal / 100 * (1 - self.prior) + self.prior) if screen else None
        preds = self.partial.pop(key, [])
        done = sum(len(p) for p in preds)
        hits = sum(int((p == self.target).sum()) for p in preds)
        while True:
            if allowed is not None and hits > allowed + 1e-9:
                self.partial[key] = preds  # a later call with a higher goal goes on from here
                estimate = AsrEstimate(100.0 * hits / n, n, target=self.target)
                if self.stamped is not None:
                    estimate.basis, estimate.n_suspected = "stamped", self.stamped.n_suspected
                self.rejected[key] = (goal, estimate)
                return estimate
            if done >= n:
                break
            if first is not None and done >= first:
                self.partial[key] = preds
                return None
            size = max(SCREEN_CHUNK, done) if screen else n - done
            pred = self.predict(self.set_name, mask, self.index[done : done + size])
            preds.append(pred)
            done += len(pred)
            hits += int((pred == self.target).sum())
        pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
        if self.stamped is not None:
            self.asr_cache[key] = asr_from_stamped(pred, self.target, self.stamped.n_suspected)
            return self.asr_cache[key]
        recall = None
        if len(self.target_rows):
            clean_pred = self.predict("clean", mask, self.target_rows)
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
        step = min(ACC_CHUNK, self.probe.batch_size)
        for start in range(0, n, step):
            rows = torch.arange(start, min(start + step, n))
            pred = self.predict("clean", mask, rows)
            errors += int((pred != self.clean_labels[rows]).sum())
            if allowed_errors is not None and errors > allowed_errors + 1e-9:
                break
        acc = 100.0 * (n - errors) / n
        self.acc_cache[key] = acc
        return acc

    def within_budget(self, acc: float) -> bool:
        return self.acc_before is None or acc >= self.acc_before - self.budget - 1e-9

    def fits(self, mask: PruneMask) -> bool:
        """Whether the clean accuracy of `mask` stays within the budget. Answered without a
        forward pass where an earlier verdict decides it: a mask pruning a subset of one within
        the budget is too, one pruning a superset of one over it is over too (the assumption
        the bisections over k rest on, applied across configurations)."""
        known = self.known_fit(mask)
        if known is not None:
            return known
        verdict = self.within_budget(self.accuracy(mask))
        self.verdicts.append((self._pruned(mask), verdict))
        return verdict

    def known_fit(self, mask: PruneMask) -> bool | None:
        """`fits(mask)` where counted or implied already, else None."""
        key = self.key(mask)
        if key in self.acc_cache:
            return self.within_budget(self.acc_cache[key])
        pruned = self._pruned(mask)
        for other, verdict in self.verdicts:
            if verdict and pruned <= other or not verdict and other <= pruned:
                return verdict
        return None

    @staticmethod
    def _pruned(mask: PruneMask) -> frozenset:
        return frozenset(
            (part, name, int(c))
            for part, flags in (("gamma", mask.gamma), ("beta", mask.beta))
            for name, f in flags.items()
            for c in torch.nonzero(f).flatten().tolist()
        )

    def repaired(self, estimate: AsrEstimate) -> bool:
        """The point estimate is at most the goal."""
        return estimate.percent is not None and estimate.percent <= self.goal + 1e-9

    def sure(self, estimate: AsrEstimate) -> bool:
        """The estimate's 95 % upper bound is at most the goal."""
        if not self.repaired(estimate):
            return False
        return upper_bound(estimate.percent, estimate.n) <= self.goal + 1e-9


def unpruned_predictions(inspection, train: ImageSet, clean: ImageSet) -> dict:
    """The unpruned model's predictions of both sets, as the statistics pass recorded them
    (only where that pass saw sets of these sizes; otherwise the probe computes them)."""
    out = {}
    for name, stats, data in (
        ("train", inspection.train_stats, train),
        ("clean", inspection.clean_stats, clean),
    ):
        known = getattr(stats, "predictions", None)
        if known is not None and data is not None and len(known) == len(data):
            out[name] = known
    return out


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
    reuse_statistics: bool = True,
    unpruned: Mapping[str, torch.Tensor] | None = None,
) -> Suggestion:
    """The smallest pruning (method, k, combination) whose estimated ASR's 95 % upper bound is
    ≤ `asr_goal` while the clean accuracy drops at most `acc_budget` points (see the module
    docstring); says so plainly when none does. `reuse_statistics`: take the
    unpruned model's predictions from the statistics pass (False: compute them again);
    `unpruned`: those predictions per probe set ("train", "clean") where the caller knows
    them for sets the statistics pass saw in another shape (a held-out split's part)."""
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
    if not reuse_statistics:
        unpruned = {}
    elif unpruned is None:
        unpruned = unpruned_predictions(inspection, train, clean)
    search = _Search(
        probe, analysis, clean.labels, asr_goal, acc_budget, cancel, progress, total, unpruned
    )
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
    built: dict[tuple, tuple[dict[str, float], PruneMask]] = {}

    def mask_of(config, k) -> tuple[dict[str, float], PruneMask]:
        if (config, k) not in built:
            names, combine = config
            chosen = {m: k for m in names}
            built[config, k] = chosen, build_mask(scores, chosen, combine, channels=channels)
        return built[config, k]

    best = _smallest(search, configs, ks, mask_of, search.sure)
    sure = best is not None
    if best is None:  # no estimate is low enough to be sure: a point estimate ≤ goal, said so
        best = _smallest(search, configs, ks, mask_of, search.repaired)
    if progress is not None:
        progress(total, total)
    if best is not None:
        pruned, _neg, chosen, combine, mask, estimate, acc = best
        drop = search.acc_before - acc
        bound = upper_bound(estimate.percent, estimate.n)
        why = (
            f"{describe(chosen, combine)} is the smallest pruning ({pruned} neurons) whose "
            f"estimated ASR is {estimate.percent:.1f} % (≤ {asr_goal:g} %, from "
            f"{estimate.source()}"
            + (
                f", 95 % upper bound {bound:.1f} %"
                if sure
                else f"; but its 95 % upper bound, {bound:.1f} %, is above the goal — the "
                "repair is uncertain"
            )
            + f") {_cost(drop)} (budget {acc_budget:g})."
        )
        return Suggestion(
            chosen, combine, pruned, search.acc_before, acc, estimate, True, why,
            acc_budget, asr_goal, search.steps, mask, sure,
        )  # fmt: skip
    fallback = _best_fallback(search, configs, ks, mask_of)
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


def _smallest(search: _Search, configs, ks, mask_of, good_enough):
    """The fewest-neuron mask (ties: the higher clean accuracy) that is `good_enough` and within
    the budget, as (pruned, -acc, chosen, combine, mask, estimate, acc); None if there is none.
    Per configuration only the k whose masks prune no more than the best so far are searched:
    the most pruning of them first (if it is not good enough, none is), then a bisection for
    the largest k that still is."""
    best: tuple | None = None
    for config in configs:
        if mask_of(config, ks[0])[1].count() == 0:
            continue
        if best is not None and mask_of(config, ks[-1])[1].count() > best[0]:
            continue  # even its smallest pruning is larger than the best so far
        start = 0  # the smallest k pruning no more than the best so far (counts fall with k)
        if best is not None:
            lo, hi = -1, len(ks) - 1  # ks[hi] prunes ≤ best; ks[lo] (or below) more
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if mask_of(config, ks[mid])[1].count() <= best[0]:
                    hi = mid
                else:
                    lo = mid
            start = hi
        start_mask = mask_of(config, ks[start])[1]
        if start_mask.count() == 0 or not good_enough(search.asr(start_mask, screen=True)):
            continue
        # bisection: the largest k (fewest neurons) whose estimate is still good enough
        good, bad = start, len(ks)  # ks[good] is; ks[bad] (or beyond) is not
        while bad - good > 1:
            mid = (good + bad) // 2
            mask = mask_of(config, ks[mid])[1]
            if mask.count() > 0 and good_enough(search.asr(mask, screen=True)):
                good = mid
            else:
                bad = mid
        chosen, mask = mask_of(config, ks[good])
        if not search.fits(mask):
            continue
        acc = search.accuracy(mask, stop=False)
        if not search.within_budget(acc):  # an implied verdict the count contradicts
            continue
        candidate = (mask.count(), -acc, chosen, config[1], mask, search.asr(mask), acc)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    return best


def _best_fallback(search: _Search, configs, ks, mask_of):
    """No repair: the lowest estimated ASR within the budget (ties: fewer neurons, then the
    earlier configuration), as (chosen, combine, mask, estimate, acc); None if nothing fits.
    Per configuration that is its smallest k within the budget (the estimate falls as more is
    pruned). Once a best is known, a configuration is searched only if the largest k whose
    estimate is no higher than the best's stays within the budget; if it does not, every k
    that would do as well prunes more and costs more accuracy. Accuracy is counted in full
    only for the winner (a verdict implied by another mask is checked there)."""
    found_all = []  # (percent, pruned, position, chosen, combine, mask, estimate)
    for position, config in enumerate(configs):
        if mask_of(config, ks[0])[1].count() == 0:
            continue
        best = min(found_all, key=lambda c: c[:3], default=None)
        if best is not None and not _may_beat(search, config, ks, mask_of, best[0], best[1]):
            continue
        found = _lowest_within_budget(search, config, ks, mask_of)
        if found is not None:
            chosen, mask, estimate = found
            found_all.append(
                (estimate.percent, mask.count(), position, chosen, config[1], mask, estimate)
            )
    for candidate in sorted(found_all, key=lambda c: c[:3]):
        acc = search.accuracy(candidate[5], stop=False)
        if search.within_budget(acc):
            return candidate[3], candidate[4], candidate[5], candidate[6], acc
    return None


def _may_beat(search: _Search, config, ks, mask_of, percent: float, pruned: int) -> bool:
    """Whether the configuration's smallest k within budget can have a lower estimate than
    `percent`, or the same with fewer neurons than `pruned`: whether some k has an estimate
    below `percent` and stays within the budget, or an estimate ≤ `percent`, fewer neurons
    than `pruned` and stays within (no estimate is below 0 %: a best at 0 % can only be tied).
    """
    if percent > 1e-9 and _some_k(search, config, ks, mask_of, percent, strict=True):
        return True
    return _some_k(search, config, ks, mask_of, percent, fewer_than=pruned)


def _some_k(
    search: _Search, config, ks, mask_of, bar: float, strict: bool = False, fewer_than=None
) -> bool:
    """Whether some k's (non-empty) mask has an estimate ≤ `bar` (with `strict`: < `bar`),
    prunes fewer than `fewer_than` neurons (where given) and stays within the budget.

    The estimates rise with k (less is pruned) and the accuracy with it, so the k with a low
    enough estimate are the lowest ones and those within the budget the highest ones: one
    bisection closes in on where the two could meet. At each k the budget is looked at first
    where an earlier count implies it (no forward pass); else the estimate, screened against
    `bar` (a hopeless mask is rejected after a few samples), and where PRESCREEN samples leave
    it undecided the accuracy (a mask over the budget stops being counted early) before the
    rest of the estimate."""

    def low(index: int) -> bool:
        mask = mask_of(config, ks[index])[1]
        estimate = search.asr(mask, screen=True, goal=bar)
        if estimate.percent is None:
            return False
        return estimate.percent < bar - 1e-9 if strict else estimate.percent <= bar + 1e-9

    lo, hi = 0, len(ks) - 1  # a k that does both lies in ks[lo..hi], if any does
    while hi >= 0 and mask_of(config, ks[hi])[1].count() == 0:
        hi -= 1
    if fewer_than is not None:
        while lo <= hi and mask_of(config, ks[lo])[1].count() >= fewer_than:
            lo += 1
    while lo <= hi:
        mid = (lo + hi) // 2
        mask = mask_of(config, ks[mid])[1]
        fits = search.known_fit(mask)
        if fits is None and search.asr(mask, screen=True, goal=bar, first=PRESCREEN) is None:
            fits = search.fits(mask)  # undecided after a few samples: the budget first
        if fits is False:
            lo = mid + 1  # it and every lower k cost too much
            continue
        if not low(mid):
            hi = mid - 1  # its estimate and every higher k's are too high
            continue
        if fits or search.fits(mask):
            return True
        lo = mid + 1
    return False


def _lowest_within_budget(search: _Search, config, ks, mask_of):
    """Per configuration, the smallest k whose clean accuracy stays within the budget
    (bisection, started from the accuracies already counted), with its estimate; None where
    even its largest k costs too much."""
    hi = len(ks) - 1  # the largest k that prunes anything
    while hi >= 0 and mask_of(config, ks[hi])[1].count() == 0:
        hi -= 1
    if hi < 0:
        return None
    lo = -1  # ks[hi] within budget (checked or implied below); ks[lo] (or beyond) not
    for index in range(hi + 1):  # what earlier steps already know narrows the bisection
        known = search.known_fit(mask_of(config, ks[index])[1])
        if known is None:
            continue
        if known:
            hi = index
            break
        lo = index
    # the most pruning k still open first: where it stays within the budget, so does every
    # higher k (intersections, searched first, mostly do), and no bisection is needed
    top = hi
    if hi - lo > 1:
        if search.fits(mask_of(config, ks[lo + 1])[1]):
            hi = lo + 1
        else:
            lo += 1
    # then bisect: a mid within the budget implies ks[hi] is (it prunes a subset), so ks[hi]
    # is counted only where every mid costs too much
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if search.fits(mask_of(config, ks[mid])[1]):
            hi = mid
        else:
            lo = mid
    if hi == top and not search.fits(mask_of(config, ks[top])[1]):
        return None
    chosen, mask = mask_of(config, ks[hi])
    return chosen, mask, search.asr(mask)


def _cost(drop: float) -> str:
    """The clean-accuracy change in words: a cost, or (pruning can help) a gain."""
    if round(drop, 1) < 0:
        return f"while the clean accuracy rises {-drop:.1f} points"
    return f"at a clean-accuracy cost of {max(drop, 0.0):.1f} points"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text
