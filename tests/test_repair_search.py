"""Repair beyond pruning on the tiny planted model: the recovery (`core.evidence.recovery`) and
the search that judges candidates on held-out samples (`core.evidence.repair_search`), and `bnp
defend --auto` exporting the repaired model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from suspect_models import TARGET, TRIGGER, analysed_planted

from core.cli import main
from core.defense.evaluation import evaluate
from core.errors import Cancelled
from core.evidence.recovery import RecoveryData, _sgd_step, recover
from core.evidence.repair_search import Candidate, _fallback, search_repair
from core.evidence.verdict import FAILS, REPAIRS, UNVERIFIED, Verdict
from core.io.checkpoint import load_checkpoint
from core.io.export import export_model, session_metadata
from core.model.masks import PruneMask


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def backdoored():
    return analysed_planted()


def _data(probe, analysis, clean):
    return RecoveryData(
        probe.inputs["clean"],
        clean.labels,
        TARGET,
        unlearn_x=probe.inputs["train"][analysis.suspected_index()],
    )


def _some_mask(inspection) -> PruneMask:
    layer = inspection.layers[1]
    flags = torch.zeros(layer.channels, dtype=torch.bool)
    flags[[0, 5, 9]] = True
    return PruneMask.from_flags({layer.name: flags}, zero_beta=True)


# ---- the recovery ------------------------------------------------------------------------------


def test_recovery_is_deterministic_and_keeps_the_pruned_neurons(backdoored):
    p, probe, analysis = backdoored
    model, mask = p.inspection.model, _some_mask(p.inspection)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    data = _data(probe, analysis, p.clean)
    first = recover(model, mask, data, epochs=2, seed=0)
    again = recover(model, mask, data, epochs=2, seed=0)
    other = recover(model, mask, data, epochs=2, seed=1)
    a, b, c = (r.model.state_dict() for r in (first, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed: the same weights
    assert any(not torch.equal(a[k], c[k]) for k in a)  # another seed: others
    assert any(not torch.equal(a[k], original[k]) for k in a)  # it trained
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # a copy
    ((name, flags),) = mask.gamma.items()
    bn = dict(first.model.named_modules())[name]
    assert torch.all(bn.weight[flags] == 0) and torch.all(bn.bias[flags] == 0)
    assert torch.any(bn.weight[~flags] != 0)
    assert first.epochs == first.epochs_run == 2 and first.n_unlearn == analysis.n_suspected
    assert first.describe().startswith("recovery: 2 epochs, unlearning")


def test_recovery_unlearns_the_suspected_samples(backdoored):
    p, probe, analysis = backdoored
    rows = analysis.suspected_index()
    x = probe.inputs["train"][rows]
    before = (p.inspection.model(x).argmax(1) == TARGET).float().mean()
    data = _data(probe, analysis, p.clean)
    result = recover(p.inspection.model, None, data, epochs=3, lr=0.01)
    with torch.no_grad():
        after = (result.model(x).argmax(1) == TARGET).float().mean()
    assert before > 0.8 and after < before / 2


def test_recovery_stops_early_on_its_check_and_can_be_cancelled(backdoored):
    p, probe, analysis = backdoored
    data = _data(probe, analysis, p.clean)
    calls = []

    def check(net):
        calls.append(1)
        return (0.0, 90.0)  # at the goal within the budget from the first epoch

    result = recover(p.inspection.model, None, data, check=check, acc_reference=90.0, epochs=5)
    assert result.epochs == result.epochs_run == 1 and len(calls) == 2  # epoch 0 and 1
    with pytest.raises(Cancelled):
        recover(p.inspection.model, None, data, epochs=2, cancel=lambda: True)
    seen = []
    recover(p.inspection.model, None, data, epochs=1, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and all(d <= t for d, t in seen)


# ---- the search --------------------------------------------------------------------------------


def test_recovery_step_is_torch_sgd_with_momentum():
    """The written-out step (no torch.optim: its first use imports torch._dynamo) makes the
    very update of torch.optim.SGD(lr, momentum=0.9), step after step."""
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    theirs.load_state_dict(ours.state_dict())
    start = [p.detach().clone() for p in ours.parameters()]
    opt = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
    params, buffers = list(ours.parameters()), [None] * 4
    for step in range(4):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
        for net in (ours, theirs):
            net.zero_grad(set_to_none=True)
            net(x).square().sum().backward()
        _sgd_step(params, buffers, 0.01)
        opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not any(torch.equal(a, b) for a, b in zip(start, ours.parameters(), strict=True))


def test_search_judges_on_samples_that_did_not_select(backdoored):
    p, probe, analysis = backdoored
    out = search_repair(p.inspection, analysis, p.train, p.clean, probe=probe, recovery=False)
    h = out.holdout
    assert set(h.suspected_select.tolist()).isdisjoint(h.suspected_judge.tolist())
    assert set(h.clean_select.tolist()).isdisjoint(h.clean_judge.tolist())
    assert sorted(h.suspected_select.tolist() + h.suspected_judge.tolist()) == sorted(
        analysis.suspected_index().tolist()
    )
    # the pruning was chosen from the selection part only ...
    assert out.suggestion.estimate.suspected == len(h.suspected_select)
    assert out.suggestion.clean_acc_before is not None
    # ... and is judged on the rest: the stamped judging set comes from the judging clean
    # samples outside the target class, or the estimate rests on the judging suspected ones
    v = out.verdict
    judged_clean = p.clean.labels[h.clean_judge]
    assert v.n in (int((judged_clean != TARGET).sum()), len(h.suspected_judge))
    assert v.n_acc == len(h.clean_judge)
    assert [c.name for c in out.candidates] == ["pruning"]
    assert out.steps == [] or out.steps[0].startswith("prune ")
    d = out.to_dict()
    for key in (
        "verdict",
        "reason",
        "steps",
        "estimated_asr",
        "asr_interval",
        "asr_samples",
        "acc_drop_estimate",
        "acc_drop_interval",
        "acc_samples",
    ):
        assert key in d
    assert d["verdict"] in ("repairs", "does not repair", "unverified")
    again = search_repair(p.inspection, analysis, p.train, p.clean, probe=probe, recovery=False)
    assert again.to_dict() == d  # deterministic


def test_search_tries_recovery_when_pruning_does_not_hold(backdoored):
    p, probe, analysis = backdoored
    out = search_repair(
        p.inspection,
        analysis,
        p.train,
        p.clean,
        probe=probe,
        asr_goal=-1.0,
        recovery_options={"epochs": 1},
    )
    names = [c.name for c in out.candidates]
    assert names == ["pruning", "pruning + recovery", "recovery"]  # nothing reaches −1 %
    assert out.verdict.verdict != REPAIRS
    assert all(c.verdict.confidence > 98 for c in out.candidates)  # three looks: Bonferroni
    if out.applied is not None:
        assert out.steps == next(c.steps for c in out.candidates if c.name == out.applied)


def test_search_without_a_target_changes_nothing(backdoored):
    p, probe, analysis = backdoored
    none = replace(analysis, target=None, reason="No backdoor evidence.")
    out = search_repair(p.inspection, none, p.train, p.clean, probe=probe)
    assert out.verdict.verdict == UNVERIFIED and out.steps == [] and out.mask.count() == 0
    assert out.model is p.inspection.model and "Nothing changed" in out.verdict.reason


def test_search_can_be_cancelled(backdoored):
    p, probe, analysis = backdoored
    with pytest.raises(Cancelled):
        search_repair(p.inspection, analysis, p.train, p.clean, probe=probe, cancel=lambda: True)


# ---- the command line --------------------------------------------------------------------------


def _npy(folder, images: torch.Tensor, labels: torch.Tensor):
    folder.mkdir()
    np.save(folder / "data.npy", images.permute(0, 2, 3, 1).numpy())
    np.save(folder / "labels.npy", labels.numpy())
    return folder


def test_cli_exports_the_repaired_model_that_reloads_with_its_numbers(backdoored, tmp_path):
    p, _probe, _analysis = backdoored
    ckpt = tmp_path / "tiny.pt"
    export_model(
        p.inspection.model, ckpt, fmt="torchscript", metadata=session_metadata(p.inspection)
    )
    train = _npy(tmp_path / "train", p.train.images, p.train.labels)
    clean = _npy(tmp_path / "clean", p.clean.images, p.clean.labels)
    test = _npy(tmp_path / "test", p.test.images, p.test.labels)
    out, report = tmp_path / "repaired.pt", tmp_path / "r.json"
    argv = [
        "defend",
        str(ckpt),
        "--auto",
        "--train",
        str(train),
        "--clean",
        str(clean),
        "--test",
        str(test),
        "--device",
        "cpu",
        "--out",
        str(out),
        "--format",
        "torchscript",
        "--report",
        str(report),
    ]
    assert main(argv) == 0
    r = json.loads(report.read_text())
    s = r["suggestion"]
    assert s["verdict"] in ("repairs", "does not repair", "unverified") and s["reason"]
    assert s["asr_samples"] > 0 and s["acc_samples"] == s["holdout"]["clean_judge"]
    lo, hi = s["asr_interval"]
    assert lo <= s["estimated_asr"] <= hi
    assert r["pruned"] == s["pruned"] and isinstance(s["steps"], list)
    reopened = load_checkpoint(out)
    assert reopened.metadata.extra.get("repair") == s["steps"]
    again = evaluate(reopened.model, p.test, p.inspection.spec, trigger=TRIGGER, target=TARGET)
    assert again.acc == pytest.approx(r["acc_after"]) and again.asr == pytest.approx(r["asr_after"])
    if s["steps"]:
        assert (r["acc_after"], r["asr_after"]) != (r["acc_before"], r["asr_before"])


def test_cli_argument_errors_for_the_repair_flags(tmp_path, capsys):
    ckpt = str(tmp_path / "missing.pth")
    assert main(["defend", ckpt, "--method", "ep", "--no-recovery"]) == 2
    assert "--no-recovery only applies to --auto" in capsys.readouterr().err
    assert main(["defend", ckpt, "--auto", "--seed", "-1"]) == 2
    assert "--seed must be ≥ 0" in capsys.readouterr().err


def _candidate(name: str, verdict: str, estimate: float, interval, drop: float) -> Candidate:
    v = Verdict(verdict, "", estimate, interval, 30, "suspected", drop, (drop - 1, drop + 1), 250)
    return Candidate(name, [name], torch.nn.Identity(), PruneMask(), v)


def test_fallback_applies_only_a_change_shown_to_lower_the_asr():
    unchanged = Verdict(UNVERIFIED, "", 100.0, (81.8, 100.0), 28, "suspected", 0.0, (0, 0), 250)
    useless = _candidate("pruning", FAILS, 100.0, (81.8, 100.0), 0.0)  # the noise-blend case
    assert _fallback([useless], 2.0, unchanged) is None  # nothing changed rather than this
    helps = _candidate("pruning + recovery", UNVERIFIED, 0.0, (0.0, 18.0), 0.5)
    assert _fallback([useless, helps], 2.0, unchanged) is helps
    costly = _candidate("recovery", UNVERIFIED, 0.0, (0.0, 9.0), 2.5)  # over the budget
    assert _fallback([costly], 2.0, unchanged) is None
    lower = _candidate("recovery", FAILS, 40.0, (30.0, 52.0), 0.0)
    assert _fallback([lower, helps], 2.0, unchanged) is helps  # unverified before failed
    assert _fallback([lower], 2.0, unchanged) is lower  # shown lower, though not a repair


def test_the_judging_samples_choose_no_neuron(backdoored, monkeypatch):
    """The statistics the suggestion's scores come from are collected on the selection part
    only: BNP's on the selection clean samples, EP's on the training set without the held-out
    suspected samples (issue 17: no sample that selected a configuration also measures it)."""
    import core.evidence.repair_search as rs

    seen = []
    real = rs.suggest

    def spy(inspection, analysis, train, clean, **kwargs):
        seen.append(
            (inspection.clean_stats.n_samples, inspection.train_stats.n_samples, len(clean))
        )
        return real(inspection, analysis, train, clean, **kwargs)

    monkeypatch.setattr(rs, "suggest", spy)
    p, probe, analysis = backdoored
    inspection, train, clean = p.inspection, p.train, p.clean
    outcome = rs.search_repair(
        inspection, analysis, train, clean, probe=probe, recovery=False, seed=0
    )
    holdout = outcome.holdout
    kept = len(train) - len(holdout.suspected_judge)
    assert seen == [(len(holdout.clean_select), kept, len(holdout.clean_select))]
    assert len(holdout.suspected_judge) > 0
    # the inspection the caller holds keeps its statistics of all samples
    assert inspection.clean_stats.n_samples == len(clean)
    assert inspection.train_stats.n_samples == len(train)


def test_selection_statistics_come_from_the_rows_not_a_second_pass(backdoored, monkeypatch):
    """The selection part's statistics are taken from the per-sample rows of the pass already
    made (no forward pass), and score the neurons as a pass over the selection part does."""
    import core.evidence.repair_search as rs
    from core.defense import inspection as inspection_module

    p, _probe, analysis = backdoored
    inspection, train, clean = p.inspection, p.train, p.clean
    holdout = rs.Holdout.split(analysis.suspected_index(), clean.labels, 0)
    clean_sel = rs.subset(clean, holdout.clean_select)
    passes = []
    real_collect = inspection_module.collect_statistics

    def counting(*args, **kwargs):
        passes.append(len(args[1]))
        return real_collect(*args, **kwargs)

    monkeypatch.setattr(inspection_module, "collect_statistics", counting)
    taken = rs.selection_inspection(inspection, train, clean_sel, holdout)
    assert passes == []
    view = inspection.without_statistics()  # statistics without per-sample rows: collected
    for attr in ("clean_stats", "train_stats"):
        stats = getattr(inspection, attr)
        rowless = {name: replace(s, m2s=None) for name, s in stats.layers.items()}
        setattr(view, attr, type(stats)(rowless, stats.n_samples, stats.predictions))
    collected = rs.selection_inspection(view, train, clean_sel, holdout)
    kept = len(train) - len(holdout.suspected_judge)
    assert passes == [len(clean_sel), kept]
    for method in ("bnp", "ep"):
        a, b = taken.scores(method), collected.scores(method)
        for name in a:
            assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6, equal_nan=True)
        chosen = taken.method_mask(method, 1.5).neurons()
        assert chosen == collected.method_mask(method, 1.5).neurons()
    assert inspection.clean_stats.n_samples == len(clean)  # the caller's statistics stay


def test_recovery_trains_on_unsuspected_training_samples_and_never_on_judging_ones(backdoored):
    """Beside the selection clean samples, the recovery distils training samples nobody
    suspected (they judge nothing): never a suspected one of either part, at most
    UNSUSPECTED_PER_CLEAN per clean sample, the same rows for the same seed."""
    import core.evidence.repair_search as rs
    from core.evidence.verdict import Holdout

    p, probe, analysis = backdoored
    holdout = Holdout.split(analysis.suspected_index(), p.clean.labels, 0)
    rows = rs.unsuspected_rows(len(p.train), holdout, 0, limit=10_000)
    suspected = set(analysis.suspected_index().tolist())
    assert len(rows) == len(p.train) - len(suspected) > 0
    assert suspected.isdisjoint(rows.tolist())
    few = rs.unsuspected_rows(len(p.train), holdout, 0, limit=5)
    assert len(few) == 5 and set(few.tolist()) <= set(rows.tolist())
    assert torch.equal(few, rs.unsuspected_rows(len(p.train), holdout, 0, limit=5))
    assert not torch.equal(few, rs.unsuspected_rows(len(p.train), holdout, 1, limit=5))

    data, _check, _ref = rs._recovery_parts(
        probe, p.clean, holdout, TARGET, None, p.inspection.model, 0, None, p.train
    )
    n_clean = len(data.clean_x) - data.n_unsuspected
    assert 0 < data.n_unsuspected <= rs.UNSUSPECTED_PER_CLEAN * n_clean
    train_x = probe.inputs["train"]
    tail = data.clean_x[n_clean:]  # the unsuspected rows follow the clean ones
    for row in tail:
        matches = (train_x == row).flatten(1).all(1).nonzero().flatten().tolist()
        assert matches and suspected.isdisjoint(matches)
    judged = probe.inputs["clean"][holdout.clean_judge]
    assert not any((judged == row).flatten(1).all(1).any() for row in data.clean_x)
    assert (
        "unsuspected training samples"
        in recover(p.inspection.model, None, data, epochs=1).describe()
    )
    # with a reconstructed trigger, only the clean samples are stamped (not the unsuspected)
    from core.evidence.reconstruct import TriggerPixels

    shape = probe.inputs["clean"].shape[1:]
    pixels = torch.zeros(shape, dtype=torch.bool)
    pixels[:, -3:, -3:] = True
    trigger = TriggerPixels(pixels, torch.ones(shape))
    stamped, _check, _ref = rs._recovery_parts(
        probe, p.clean, holdout, TARGET, trigger, p.inspection.model, 0, None, p.train
    )
    clean_y = stamped.clean_y[:n_clean]
    assert stamped.n_unsuspected == data.n_unsuspected
    assert stamped.n_stamped == int((clean_y != TARGET).sum()) > 0
    assert len(stamped.stamped_soft) == stamped.n_stamped
