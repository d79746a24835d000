"""The suggestion's search: the shortcuts give what the plain search gives, and the choice rule.

The search shortcuts (unpruned predictions from the statistics pass, masks cached by their
neurons, a configuration searched only below the best count so far, the no-repair search stopped
by each configuration's lowest estimate) are checked two ways: against exhaustive search over
random monotone tables of (neurons, estimate, accuracy) per k, and on the tiny planted model
against the same search with the statistics' predictions not reused and against a brute-force
pass over every configuration and k.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from suspect_models import analysed_planted

from core.defense.inspection import build_mask
from core.evidence.suggest import (
    _best_fallback,
    _cost,
    _Search,
    _smallest,
    configurations,
    suggest,
    upper_bound,
)
from core.evidence.suspects import AsrEstimate, estimate_asr
from core.model.masks import PruneMask


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def backdoored():
    return analysed_planted()


# ---- the bound -----------------------------------------------------------------------------


def test_upper_bound_is_wilsons_and_rises_with_the_estimate():
    z = 1.96
    for n in (10, 49, 73, 200):
        assert upper_bound(0.0, n) == pytest.approx(100 * z * z / (n + z * z))
        values = [upper_bound(p, n) for p in (0.0, 0.5, 1, 2, 5, 20, 100)]
        assert values == sorted(values) and len(set(values)) == len(values)
    assert upper_bound(3.0, 0) == 100.0


def test_an_estimate_of_zero_from_few_samples_is_not_sure():
    """The rule that an estimate of 0 from fewer than 74 samples counts as sure is gone (issue
    17: 0 of 45 suspected samples, "sure", was 8.3 % on the test set): sure means the 95 %
    upper bound itself is at most the goal, which 0 of 49 samples (7.3 %) is not."""
    search = _Search.__new__(_Search)
    search.goal = 5.0
    assert not search.sure(AsrEstimate(0.0, 49))
    n = math.ceil(1.96**2 * (1 - 0.05) / 0.05)  # the fewest samples whose 0 is ≤ 5 %
    assert search.sure(AsrEstimate(0.0, n + 1)) and not search.sure(AsrEstimate(0.0, n - 2))
    assert not search.sure(AsrEstimate(6.0, 10_000))


# ---- shortcuts against exhaustive search on monotone tables ----------------------------------


class _FakeMask:
    def __init__(self, count: int, key: tuple):
        self._count, self.key = count, key

    def count(self) -> int:
        return self._count


class _FakeSearch:
    """What `_smallest` and `_best_fallback` ask of a search, read from a table."""

    def __init__(self, table, goal, budget, acc_before):
        self.table, self.goal, self.budget, self.acc_before = table, goal, budget, acc_before
        self.asked = 0
        self.acc_cache = {}

    @staticmethod
    def key(mask):
        return mask.key

    def asr(self, mask, screen=False, goal=None, first=None):
        self.asked += 1
        estimate = self.table[mask.key][1]
        if first is not None and estimate.percent <= (self.goal if goal is None else goal):
            return None  # a few samples do not reject it: undecided, as a screen leaves it
        return estimate

    def accuracy(self, mask, stop=True):
        if mask.key not in self.acc_cache:
            self.asked += 1
            self.acc_cache[mask.key] = self.table[mask.key][2]
        return self.acc_cache[mask.key]

    def within_budget(self, acc):
        return acc >= self.acc_before - self.budget - 1e-9

    def fits(self, mask):  # table masks are not neuron sets: no verdict carries over
        return self.within_budget(self.accuracy(mask))

    def known_fit(self, mask):
        known = self.acc_cache.get(mask.key)
        return None if known is None else self.within_budget(known)

    def repaired(self, estimate):
        return estimate.percent <= self.goal + 1e-9


def _monotone_table(rng: random.Random, configs, ks):
    """Per configuration and k: neurons rising, estimate and accuracy falling as k falls."""
    table = {}
    for config in configs:
        count = rng.randint(0, 3)
        asr = rng.uniform(0, 40)
        acc = 90 - rng.uniform(0, 1.5)
        for k in reversed(ks):  # from the largest k (fewest neurons) down
            table[config, k] = (count, AsrEstimate(asr, 50), acc)
            grow = rng.choice((0, 1, 1, 2, 5))
            if grow:  # masks are nested: the same count is the same mask
                count += grow
                asr = max(0.0, asr - rng.choice((0, 0, 1, 3, 8)))
                acc -= rng.choice((0, 0, 0.1, 0.3, 1.0))
    return table


def test_smallest_and_fallback_match_exhaustive_search_on_monotone_tables():
    configs = configurations(["ep", "bnp", "clp"])
    ks = [1 + x / 4 for x in range(12)]
    rng = random.Random(0)
    cut_work = 0
    for _ in range(400):
        table = _monotone_table(rng, configs, ks)

        def mask_of(config, k, table=table):
            return {m: k for m in config[0]}, _FakeMask(table[config, k][0], (config, k))

        fake = _FakeSearch(table, goal=5.0, budget=2.0, acc_before=90.0)
        # exhaustive: every configuration and k
        within = [
            (c, k) for (c, k), (n, _e, acc) in table.items() if n > 0 and fake.within_budget(acc)
        ]
        repairs = [(c, k) for c, k in within if table[c, k][1].percent <= 5.0]
        found = _smallest(fake, configs, ks, mask_of, fake.repaired)
        if not repairs:
            assert found is None
        else:
            want = min(table[ck][0] for ck in repairs)
            assert found is not None and found[0] == want
            best_acc = max(table[ck][2] for ck in repairs if table[ck][0] == want)
            assert found[6] == best_acc
        fake.asked = 0  # the accuracies _smallest counted stay known, as in the search
        fallback = _best_fallback(fake, configs, ks, mask_of)
        cut_work += fake.asked
        # exhaustive, as the plain search defined it: per configuration its smallest k within
        # budget; the lowest estimate, then fewer neurons, then the earlier configuration
        plain = []
        for position, c in enumerate(configs):
            ok = [k for k in ks if (c, k) in within]
            if ok:
                k = min(ok)
                plain.append((table[c, k][1].percent, table[c, k][0], position, c, k))
        if not plain:
            assert fallback is None
        else:
            _p, _n, _pos, c, k = min(plain)
            assert fallback is not None
            assert fallback[1] == c[1] and fallback[0] == {m: k for m in c[0]}
    assert cut_work > 0


def test_an_accuracy_gain_is_not_called_a_negative_cost():
    assert _cost(-0.2) == "while the clean accuracy rises 0.2 points"
    assert _cost(1.25) == "at a clean-accuracy cost of 1.2 points"
    assert _cost(-0.04) == "at a clean-accuracy cost of 0.0 points"  # no "-0.0"


def test_budget_verdicts_carry_over_to_nested_masks():
    search = _Search.__new__(_Search)  # only the accuracy bookkeeping, with a counted table
    search.acc_cache, search.verdicts, search.acc_before, search.budget = {}, [], 90.0, 2.0
    counted = []

    def mask(gamma, beta=()):
        flags = {"l": torch.tensor([i in gamma for i in range(6)])}
        zero = {"l": torch.tensor([i in beta for i in range(6)])} if beta else {}
        return PruneMask(flags, zero)

    accuracy = {(0, 1, 2): 89.0, (4,): 80.0}

    def count(m, stop=True):
        pruned = tuple(torch.nonzero(m.gamma["l"]).flatten().tolist())
        counted.append(pruned)
        return search.acc_cache.setdefault(search.key(m), accuracy.get(pruned, 85.0))

    search.accuracy = count
    assert search.fits(mask({0, 1, 2})) is True
    assert search.fits(mask({0, 2})) is True  # prunes less than one within budget
    assert search.fits(mask({4})) is False
    assert search.fits(mask({3, 4})) is False  # prunes more than one over budget
    assert counted == [(0, 1, 2), (4,)]
    assert search.known_fit(mask({0, 1, 2}, beta={1})) is None  # zeroes β too: not implied
    assert search.fits(mask({3})) is False and counted[-1] == (3,)  # unrelated: counted (85)


# ---- on a trained model ------------------------------------------------------------------------


def _key(mask):
    return sorted((name, tuple(c)) for name, c in mask.neurons().items())


def test_statistics_pass_records_the_unpruned_predictions(backdoored):
    p, probe, _analysis = backdoored
    for name, stats in (("train", p.inspection.train_stats), ("clean", p.inspection.clean_stats)):
        assert stats.predictions is not None and len(stats.predictions) == stats.n_samples
        assert torch.equal(stats.predictions, probe.predict(name, None))


def test_a_screen_stopped_after_a_few_samples_goes_on_where_it_stopped(backdoored):
    p, probe, analysis = backdoored
    assert len(analysis.suspected_index()) > 16
    mask = p.inspection.method_mask("clp", 3.0)
    assert mask.count() > 0

    def search():
        return _Search(probe, analysis, p.clean.labels, 5.0, 2.0, None, None, 10, {})

    fresh = search()
    whole = fresh.asr(mask)
    resumed = search()
    before = probe.forwards
    # a goal no hit can miss: only the first 16 samples are looked at, then left undecided
    assert resumed.asr(mask, screen=True, goal=100.0, first=16) is None
    assert probe.forwards - before == 16
    again = resumed.asr(mask)
    # no sample predicted twice: the estimated set, and the clean samples of the target
    # where the estimate is corrected by them
    assert probe.forwards - before == len(resumed.index) + len(resumed.target_rows)
    assert again.percent == whole.percent and again.n == whole.n


def test_reused_predictions_give_the_same_suggestion(backdoored):
    p, probe, analysis = backdoored
    fast = suggest(p.inspection, analysis, p.train, p.clean, probe=probe)
    forwards = probe.forwards
    plain = suggest(p.inspection, analysis, p.train, p.clean, probe=probe, reuse_statistics=False)
    assert probe.forwards > forwards  # the plain one ran the unpruned model again
    assert (fast.methods, fast.combine, fast.pruned) == (plain.methods, plain.combine, plain.pruned)
    assert _key(fast.mask) == _key(plain.mask) and fast.why == plain.why
    assert fast.clean_acc_before == plain.clean_acc_before


def test_suggestion_is_the_brute_force_choice(backdoored):
    """Every configuration at every k, evaluated in full: the suggestion is the smallest sure
    repair within budget (ties: the higher accuracy), or, with none, the smallest repair."""
    p, probe, analysis = backdoored
    inspection = p.inspection
    ks = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
    s = suggest(inspection, analysis, p.train, p.clean, probe=probe, ks=ks)
    methods = [m for m in ("ep", "bnp", "clp") if inspection.available(m)]
    scores = {m: inspection.scores(m) for m in methods}
    before = float((probe.predict("clean", None) == p.clean.labels).double().mean()) * 100
    rows = []
    for names, combine in configurations(methods):
        for k in ks:
            mask = build_mask(scores, {m: k for m in names}, combine, channels=inspection.channels)
            if mask.count() == 0:
                continue
            acc = float((probe.predict("clean", mask) == p.clean.labels).double().mean()) * 100
            if acc < before - 2.0 - 1e-9:
                continue
            e = estimate_asr(probe, analysis, mask, p.clean.labels)
            sure = e.percent <= 5.0 + 1e-9 and upper_bound(e.percent, e.n) <= 5.0 + 1e-9
            rows.append((e.percent <= 5.0 + 1e-9, sure, mask.count(), -acc, _key(mask)))
    sure_rows = sorted(r[2:] for r in rows if r[1])
    point_rows = sorted(r[2:] for r in rows if r[0])
    assert s.repairs and point_rows  # the planted backdoor can be repaired
    want = sure_rows[0] if sure_rows else point_rows[0]
    assert (s.pruned, _key(s.mask)) == (want[0], want[2])
    assert s.sure == bool(sure_rows)
    assert s.to_dict()["sure"] == s.sure


def test_an_uncertain_repair_is_said_to_be_so(backdoored, monkeypatch):
    """Where no estimate is low enough to be sure, the smallest point-estimate repair is
    suggested, and the explanation says it is uncertain; where one is, it says the bound."""
    import core.evidence.suggest

    p, probe, analysis = backdoored
    monkeypatch.setattr(core.evidence.suggest, "upper_bound", lambda percent, n: 100.0)
    s = suggest(p.inspection, analysis, p.train, p.clean, probe=probe)
    assert s.repairs and not s.sure and "uncertain" in s.why
    assert s.estimate.percent <= 5 and s.to_dict()["estimated_asr_upper95"] > 0
    monkeypatch.setattr(core.evidence.suggest, "upper_bound", lambda percent, n: 0.0)
    sure = suggest(p.inspection, analysis, p.train, p.clean, probe=probe)
    assert sure.repairs and sure.sure and "uncertain" not in sure.why
    assert "95 % upper bound" in sure.why
    # any point-estimate repair is sure under that bound: the same (smallest) choice
    assert (sure.methods, sure.combine, sure.pruned) == (s.methods, s.combine, s.pruned)
