"""Held-out verdicts (`core.evidence.verdict`): the bounds, the three verdicts on small synthetic
cases, and a split whose selecting and judging parts never share a sample."""

from __future__ import annotations

import pytest
import torch

from core.evidence.verdict import (
    FAILS,
    REPAIRS,
    UNVERIFIED,
    Holdout,
    judge,
    lowest_bound,
    paired_drop,
    shown_drop,
    split_rows,
    stratified_split,
    wilson,
    z_for,
)

TARGET = 3


def _asr_pred(n: int, hits: int) -> torch.Tensor:
    """`n` predictions, `hits` of them the target."""
    pred = torch.zeros(n, dtype=torch.long)
    pred[:hits] = TARGET
    return pred


def _clean(n: int, lost: int = 0, won: int = 0, wrong_both: int = 0):
    """Labels and the predictions before/after: `lost` right before and wrong after, `won` the
    reverse, `wrong_both` wrong in both; the rest right in both."""
    labels = torch.arange(n) % 10
    before, after = labels.clone(), labels.clone()
    wrong = (labels + 1) % 10
    after[:lost] = wrong[:lost]
    before[lost : lost + won] = wrong[lost : lost + won]
    rows = slice(lost + won, lost + won + wrong_both)
    before[rows], after[rows] = wrong[rows], wrong[rows]
    return before, after, labels


# ---- the bounds ------------------------------------------------------------------------------


def test_wilson_matches_the_formula_and_zero_hits_bound():
    z = 1.96
    for n in (10, 22, 49, 200):
        assert wilson(0, n, z)[1] == pytest.approx(100 * z * z / (n + z * z))
        assert lowest_bound(n) == wilson(0, n)[1]
    lo, hi = wilson(5, 100)
    assert lo < 5 < hi and wilson(0, 0) == (0.0, 100.0)


def test_bonferroni_z_grows_with_the_looks():
    assert z_for(1) == pytest.approx(1.959964, abs=1e-5)
    assert z_for(3) > z_for(2) > z_for(1)


def test_paired_drop_counts_only_changed_predictions():
    before, after, labels = _clean(200, lost=6, won=2, wrong_both=30)
    drop, lo, hi = paired_drop(before == labels, after == labels)
    assert drop == pytest.approx(100 * 4 / 200)
    assert lo < drop < hi
    # the samples wrong in both do not widen it
    before2, after2, labels2 = _clean(200, lost=6, won=2)
    assert paired_drop(before2 == labels2, after2 == labels2)[1:] == pytest.approx((lo, hi))
    # nothing changed: no drop, and none possible
    same = labels == labels
    assert paired_drop(same, same) == (0.0, 0.0, 0.0)
    # all changes are losses: the lower bound is above 0
    _, lo, _ = paired_drop(*(x == labels for x in _clean(200, lost=10)[:2]))
    assert lo > 0


def test_a_gain_is_reported_only_as_far_as_the_interval_shows_it():
    assert shown_drop(1.6, 3.8) == 1.6  # a cost: as measured
    assert shown_drop(-2.83, 0.4) == 0.0  # blend, seed 0: a gain the bound does not show
    assert shown_drop(-5.0, -1.5) == -1.5  # a gain the bound shows: its smallest value
    assert shown_drop(0.0, 0.0) == 0.0
    # never further from a real drop ≥ 0 than the measured estimate
    for raw, hi in ((-2.83, 0.4), (-0.8, 0.8), (-5.0, -1.5), (1.2, 4.6)):
        for real in (0.0, 0.54, 2.0, 3.0):
            assert abs(shown_drop(raw, hi) - real) <= abs(raw - real) + 1e-12


def test_the_reported_drop_leaves_the_verdict_and_its_bounds_as_they_are():
    """7 more held-out samples right after the repair than before (blend, seed 0): reported as
    no cost, the measured gain beside it; the bounds — and so the verdict — are the paired
    interval's, unchanged."""
    before, after, labels = _clean(247, lost=5, won=12)
    raw, lo, hi = paired_drop(before == labels, after == labels)
    assert raw < 0 <= hi
    v = judge(_asr_pred(300, 0), TARGET, "stamped", before, after, labels)
    assert v.acc_drop == 0.0 and v.acc_drop_raw == pytest.approx(raw)
    assert v.acc_interval == pytest.approx((lo, hi)) and v.verdict == REPAIRS
    d = v.to_dict()
    assert d["acc_drop_estimate"] == 0.0 and d["acc_drop_raw"] == round(raw, 2)
    assert f"a gain of {-raw:.1f} measured" in v.describe()
    # a gain the interval shows: reported as its bound, still a gain
    before, after, labels = _clean(247, won=12)
    v = judge(_asr_pred(300, 0), TARGET, "stamped", before, after, labels)
    assert v.acc_interval[1] < 0 and v.acc_drop == pytest.approx(v.acc_interval[1])
    assert v.acc_drop_raw < v.acc_drop < 0 and v.verdict == REPAIRS
    # a cost: as measured, no note
    before, after, labels = _clean(247, lost=12, won=5)
    v = judge(_asr_pred(300, 0), TARGET, "stamped", before, after, labels)
    assert v.acc_drop == v.acc_drop_raw > 0 and "gain" not in v.describe()
    # the verdict never depends on the reported drop: a wide interval stays unverified
    before, after, labels = _clean(247, lost=10, won=14)
    v = judge(_asr_pred(300, 0), TARGET, "stamped", before, after, labels)
    assert v.acc_drop == 0.0 and v.acc_interval[1] > 2 and v.verdict == UNVERIFIED


# ---- the verdicts ------------------------------------------------------------------------------


def test_repairs_only_when_both_bounds_hold():
    before, after, labels = _clean(300, lost=1, won=1)
    v = judge(_asr_pred(300, 1), TARGET, "stamped", before, after, labels)
    assert v.verdict == REPAIRS and v.repairs
    assert v.interval[1] <= 5 and v.acc_interval[1] <= 2
    assert (v.n, v.n_acc) == (300, 300)
    d = v.to_dict()
    assert d["verdict"] == "repairs" and d["asr_samples"] == 300 and d["acc_samples"] == 300
    assert d["asr_interval"][0] <= d["estimated_asr"] <= d["asr_interval"][1]
    assert d["acc_drop_interval"][0] <= d["acc_drop_estimate"] <= d["acc_drop_interval"][1]


def test_an_estimate_of_zero_from_few_samples_is_unverified_not_sure():
    """The rule removed: 0 of 45 suspected samples once counted as a sure repair; its bound,
    7.9 %, cannot show ≤ 5 %. Held out, 22 samples: the bound cannot go below 15 %."""
    before, after, labels = _clean(300)
    v = judge(_asr_pred(22, 0), TARGET, "suspected", before, after, labels)
    assert v.verdict == UNVERIFIED and v.estimate == 0.0
    assert "only 22 held-out suspected samples" in v.reason
    assert f"cannot go below {lowest_bound(22):.1f} %" in v.reason
    assert judge(_asr_pred(45, 0), TARGET, "suspected", before, after, labels).verdict == UNVERIFIED


def test_a_straddling_interval_is_unverified():
    before, after, labels = _clean(300)
    v = judge(_asr_pred(224, 7), TARGET, "stamped", before, after, labels)  # 3.1 %
    assert v.estimate < 5 < v.interval[1] and v.verdict == UNVERIFIED
    assert "straddles the 5 % goal" in v.reason


def test_does_not_repair_when_a_lower_bound_says_so():
    before, after, labels = _clean(300, lost=1)
    v = judge(_asr_pred(200, 40), TARGET, "stamped", before, after, labels)  # 20 %
    assert v.verdict == FAILS and v.interval[0] > 5 and "lower bound" in v.reason
    before, after, labels = _clean(300, lost=30)  # 10 points lost
    v = judge(_asr_pred(300, 0), TARGET, "stamped", before, after, labels)
    assert v.verdict == FAILS and v.acc_interval[0] > 2 and "budget" in v.reason


def test_accuracy_that_cannot_be_bounded_within_the_budget_is_unverified():
    before, after, labels = _clean(250, lost=12, won=8)  # 1.6 points, too wide to bound
    v = judge(_asr_pred(300, 0), TARGET, "stamped", before, after, labels)
    assert v.acc_drop <= 2 < v.acc_interval[1] and v.verdict == UNVERIFIED
    assert "straddle the 2-point budget" in v.reason


def test_the_target_class_correction_applies_to_the_bounds_too():
    before, after, labels = _clean(300)
    plain = judge(_asr_pred(100, 10), TARGET, "suspected", before, after, labels)
    fixed = judge(
        _asr_pred(100, 10), TARGET, "suspected", before, after, labels, prior=0.1, recall=0.9
    )
    assert fixed.estimate == pytest.approx((10 - 9) / 0.9)
    assert fixed.interval[1] < plain.interval[1] and fixed.interval[0] <= plain.interval[0]


def test_no_target_is_unverified_and_says_why():
    before, after, labels = _clean(50)
    v = judge(None, None, "none", before, after, labels)
    assert v.verdict == UNVERIFIED and v.estimate is None and "No backdoor evidence" in v.reason


def test_a_stricter_confidence_is_harder_to_pass():
    before, after, labels = _clean(300)
    pred = _asr_pred(150, 2)
    assert judge(pred, TARGET, "stamped", before, after, labels).verdict == REPAIRS
    strict = judge(pred, TARGET, "stamped", before, after, labels, z=z_for(3))
    assert strict.verdict == UNVERIFIED and strict.confidence > 98


# ---- the split -------------------------------------------------------------------------------


def test_split_is_disjoint_complete_and_seeded():
    rows = torch.arange(100, 150)
    select, judged = split_rows(rows, seed=0, salt="suspected")
    assert set(select.tolist()).isdisjoint(judged.tolist())
    assert sorted(select.tolist() + judged.tolist()) == rows.tolist()
    assert len(judged) == 25
    again = split_rows(rows, seed=0, salt="suspected")
    assert torch.equal(select, again[0]) and torch.equal(judged, again[1])
    other = split_rows(rows, seed=1, salt="suspected")
    assert not torch.equal(judged, other[1])


def test_clean_split_is_stratified_and_holdout_parts_never_overlap():
    labels = torch.arange(500) % 10
    select, judged = stratified_split(labels, seed=3)
    assert set(select.tolist()).isdisjoint(judged.tolist()) and len(select) + len(judged) == 500
    for k in range(10):
        assert int((labels[judged] == k).sum()) == 25
    h = Holdout.split(torch.tensor([4, 9, 17, 30, 31, 40, 41]), labels, seed=3)
    assert set(h.suspected_select.tolist()).isdisjoint(h.suspected_judge.tolist())
    assert set(h.clean_select.tolist()).isdisjoint(h.clean_judge.tolist())
    assert h.to_dict()["suspected_judge"] == 3 and h.to_dict()["clean_judge"] == 250
    with pytest.raises(Exception, match="strictly between"):
        Holdout.split(torch.arange(5), labels, share=1.0)
