"""The window's Suggest judged on held-out samples (`core.evidence.held_out_suggest`): the
pruning the selection part chose, and a verdict that never rests on the samples that chose it —
the case issue 17 opened with (an in-sample estimate of 0, "sure", on a model whose real ASR was
8.3 %)."""

from __future__ import annotations

import pytest
import torch
from suspect_models import TARGET, analysed_planted

from core.evidence.held_out_suggest import suggest_held_out
from core.evidence.repair_search import search_repair, subset
from core.evidence.suggest import describe, suggest
from core.evidence.verdict import REPAIRS, lowest_bound


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def backdoored():
    return analysed_planted()


def _few_clean(p, n: int):
    """The planted model with only `n` of its clean samples (a probe over them)."""
    from core.evidence.suspects import make_probe

    clean = subset(p.clean, torch.arange(n))
    return clean, make_probe(p.inspection, p.train, clean)


def test_held_out_suggestion_is_the_search_without_recovery(backdoored):
    p, probe, analysis = backdoored
    s = suggest_held_out(p.inspection, analysis, p.train, p.clean, probe=probe)
    out = search_repair(p.inspection, analysis, p.train, p.clean, probe=probe, recovery=False)
    assert s.outcome.to_dict() | {"why": s.why} == s.to_dict()
    assert s.to_dict()["verdict"] == out.to_dict()["verdict"]
    assert [c.name for c in s.outcome.candidates] == [c.name for c in out.candidates]
    assert s.repairs == (s.verdict.verdict == REPAIRS)
    assert s.pruned == s.outcome.mask.count()
    assert s.why.startswith(f"{s.verdict.verdict.capitalize()} (held out)")
    if s.pruned:  # the thresholds are the selection part's suggestion
        assert s.methods == out.suggestion.methods and s.combine == out.suggestion.combine
        assert describe(s.methods, s.combine) in s.why
    else:
        assert s.methods == {} and "nothing pruned" in s.why
    v = s.verdict
    if v.estimate is not None:  # the held-out estimate, its interval and its samples
        assert f"{v.estimate:.1f} % [{v.interval[0]:.1f}, {v.interval[1]:.1f}]" in s.why
        assert f"from {v.n} " in s.why and f"from {v.n_acc} clean samples" in s.why
    d = s.to_dict()
    assert "sure" not in d["selection"] and "repairs" not in d["selection"]
    assert d["selection"]["in_sample"] is True and d["sure"] == s.repairs


def test_an_in_sample_repair_is_not_a_held_out_repair(backdoored):
    """Few clean samples: the in-sample search calls its pruning a repair from its point
    estimate (≤ 5 % on the samples that chose it), but half of those samples cannot bound the
    ASR below 5 %: the window's Suggest says "unverified" (or "does not repair"), never
    "repairs"."""
    p, _, analysis = backdoored
    clean, probe = _few_clean(p, 100)
    in_sample = suggest(p.inspection, analysis, p.train, clean, probe=probe)
    assert in_sample.repairs and in_sample.estimate.percent <= 5.0
    held = suggest_held_out(p.inspection, analysis, p.train, clean, probe=probe)
    v = held.verdict
    assert v.n < 74 and lowest_bound(v.n, 1.96) > 5.0  # no held-out bound can reach the goal
    assert not held.repairs and v.verdict != REPAIRS
    assert not held.why.lower().startswith("repairs")
    assert "Repairs" not in held.why and not held.to_dict()["repairs"]
    assert held.to_dict()["sure"] is False
    assert v.n_acc == len(held.outcome.holdout.clean_judge) < len(clean)
    assert analysis.target == TARGET
