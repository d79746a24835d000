"""Repair without knowing the attack: suspect samples, target, ASR estimate, suggestion.

A tiny conv net with a planted BadNets backdoor (and the same net trained clean) is trained in
seconds; the defender's view is 500 samples of its training set and 400 clean samples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from suspect_models import TARGET, analysed_planted, planted

from core.cli import main
from core.data.images import ImageSet, save_images
from core.data.load import load_images
from core.defense.statistics import LayerStatistics, Statistics
from core.errors import BnpError
from core.evidence.activation_clusters import split_target_class
from core.evidence.repair import check_acc_budget, write_suspects
from core.evidence.suggest import configurations, suggest
from core.evidence.suspects import (
    analyse_suspects,
    estimate_asr,
    high_mode,
    otsu_threshold,
    two_modes,
)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def backdoored():
    return analysed_planted()


@pytest.fixture(scope="module")
def clean_model():
    torch.set_num_threads(1)
    p = planted(rate=0.0)
    p.inspection.collect(p.clean, p.train)
    return p


def _precision_recall(found: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    hits = int((found & truth).sum())
    return hits / max(int(found.sum()), 1), hits / max(int(truth.sum()), 1)


# ---- the split ---------------------------------------------------------------------------


def test_two_modes_splits_a_separate_minority_mode():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(450, generator=g), 8 + torch.randn(50, generator=g)])
    high, cut, separation = two_modes(values)
    assert high[450:].all() and not high[:450].any()
    assert 2 < cut < 6 and separation > 4
    assert 2 < otsu_threshold(values) < 6


def test_two_modes_finds_no_separate_mode_in_one_gaussian():
    values = torch.randn(500, generator=torch.Generator().manual_seed(1))
    _high, _cut, separation = two_modes(values)
    assert separation < 2  # what analyse_suspects takes as "no separate mode"


# ---- planted backdoor ----------------------------------------------------------------------


def test_planted_backdoor_samples_and_target_found(backdoored):
    p, _probe, analysis = backdoored
    assert int(p.poisoned.sum()) >= 30  # the defender's slice holds poisoned samples
    precision, recall = _precision_recall(analysis.poisoned, p.poisoned)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert analysis.target == TARGET and analysis.confidence > 0.8
    assert analysis.warnings == []
    # most suspicious first: the top of the order is poisoned
    top = analysis.order()[: int(p.poisoned.sum()) // 2]
    assert p.poisoned[top].all()
    assert analysis.flips is not None and analysis.flips[p.poisoned].float().mean() > 0.5


def test_reason_names_the_suspected_count_the_estimate_rests_on(backdoored):
    """The target's reason and the estimate count the same samples (not "40 suspect samples"
    beside "39 suspected samples" with nothing between)."""
    import re

    p, probe, analysis = backdoored
    n = analysis.n_suspected
    said = re.search(rf"\b{n} (suspect samples form|of them \(|form their own)", analysis.reason)
    assert said, (n, analysis.reason)
    estimate = estimate_asr(probe, analysis, None, p.clean.labels)
    assert estimate.suspected == n and f"{n} suspected samples" in estimate.source()


def test_evidence_neuron_high_mode_holds_the_poisoned_samples(backdoored):
    p, _probe, analysis = backdoored
    layer, channel = analysis.evidence_neurons()[0]
    in_mode = high_mode(p.inspection.train_stats, p.inspection.clean_stats, layer, channel)
    assert in_mode.any() and p.poisoned[in_mode].float().mean() > 0.8


def test_asr_estimate_tracks_the_real_asr(backdoored):
    p, probe, analysis = backdoored
    inspection = p.inspection
    real_before = inspection.evaluate(p.test).asr
    mask = analysis.evidence_mask()
    real_after = inspection.evaluate(p.test, mask=mask).asr
    # the patch is reconstructed from the suspected samples and stamped on clean ones; the
    # suspected samples alone (the dirty-label estimate) track the real ASR here too
    for basis, n, slack in (("auto", None, 10), ("suspected", analysis.n_suspected, 15)):
        before = estimate_asr(probe, analysis, None, p.clean.labels, basis=basis)
        assert before.percent > 90 and before.suspected == analysis.n_suspected
        assert n is None or before.n == n
        assert abs(before.percent - real_before) <= 10
        after = estimate_asr(probe, analysis, mask, p.clean.labels, basis=basis)
        assert abs(after.percent - real_after) <= slack, (basis, after.percent, real_after)
        assert "estimate from" in after.describe()
    assert before.basis == "suspected" and after.basis == "suspected"


def test_suggestion_repairs_within_budget(backdoored):
    p, probe, analysis = backdoored
    steps = []
    s = suggest(
        p.inspection,
        analysis,
        p.train,
        p.clean,
        probe=probe,
        progress=lambda d, t: steps.append((d, t)),
    )
    assert s.repairs and s.pruned > 0 and s.estimate.percent <= 5
    assert s.clean_acc_drop <= 2
    assert s.why.startswith(next(iter(s.methods)).upper()) or "∩" in s.why or "∪" in s.why
    assert steps and steps[-1][0] == steps[-1][1]  # progress ends at 100 %
    real = p.inspection.evaluate(p.test, mask=s.mask)
    assert real.asr < 20  # the suggestion removes the backdoor on the test set
    # the configuration rebuilds the same mask
    assert p.inspection.mask(s.methods, s.combine).count() == s.pruned
    d = s.to_dict()
    for key in ("methods", "combine", "pruned", "clean_acc_drop", "estimated_asr", "why"):
        assert key in d


def test_suggestion_says_plainly_when_nothing_repairs(backdoored):
    p, probe, analysis = backdoored
    s = suggest(p.inspection, analysis, p.train, p.clean, probe=probe, asr_goal=-1.0)
    assert not s.repairs and s.why.startswith("No configuration repairs within the budget")


def test_suggestion_can_be_cancelled(backdoored):
    from core.errors import Cancelled

    p, probe, analysis = backdoored
    with pytest.raises(Cancelled):
        suggest(p.inspection, analysis, p.train, p.clean, probe=probe, cancel=lambda: True)


def test_marks_change_the_suspected_set_and_the_estimate(backdoored):
    p, probe, analysis = backdoored
    first = int(analysis.suspected_index()[0])
    clean_one = int(torch.nonzero(~analysis.poisoned)[0])
    marked = analysis.with_marks({first: False, clean_one: True})
    assert not marked.poisoned[first] and marked.poisoned[clean_one]
    assert int(marked.order()[0]) == clean_one and int(marked.order()[-1]) == first
    assert marked.n_suspected == analysis.n_suspected
    unmarked = marked.with_marks({first: None, clean_one: None})
    assert torch.equal(unmarked.poisoned, analysis.poisoned)
    # every suspected sample marked clean: nothing left to estimate from
    none = analysis.with_marks({int(i): False for i in analysis.suspected_index()})
    assert estimate_asr(probe, none, None, p.clean.labels).percent is None


# ---- activation clusters within the target class ----------------------------------------------


def _feature_stats(features: torch.Tensor) -> Statistics:
    """Statistics whose per-sample means are `features` (one layer; the maxima unused)."""
    f = features.float()
    zeros = torch.zeros(f.shape[1], dtype=torch.float64)
    return Statistics({"bn": LayerStatistics(len(f), zeros, zeros, f, f)}, len(f))


def _clusters_case(shift: float):
    """Suspect set: 300 samples of other labels, 60 clean of the target, 30 poisoned (shifted
    by `shift` along a direction, spread twice as wide); 60 clean reference samples."""
    g = torch.Generator().manual_seed(3)
    d = 12
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    others = torch.randn(300, d, generator=g) + 4
    clean_t = torch.randn(60, d, generator=g)
    poisoned = 2 * torch.randn(30, d, generator=g) + shift * direction
    features = torch.cat([others, clean_t, poisoned])
    labels = torch.cat([torch.randint(1, 10, (300,), generator=g), torch.zeros(90, dtype=int)])
    truth = torch.zeros(390, dtype=torch.bool)
    truth[360:] = True
    reference = torch.cat([torch.randn(60, d, generator=g), torch.randn(240, d, generator=g) + 4])
    ref_labels = torch.cat([torch.zeros(60, dtype=int), torch.randint(1, 10, (240,), generator=g)])
    seeds = torch.zeros(390, dtype=torch.bool)
    seeds[360:366] = True  # the neuron evidence found only 6 of the 30
    return _feature_stats(features), _feature_stats(reference), labels, ref_labels, truth, seeds


def test_clusters_find_the_poisoned_samples_the_neuron_mode_missed():
    train, clean, labels, ref_labels, truth, seeds = _clusters_case(shift=12.0)
    split = split_target_class(train, clean, labels, ref_labels, 0, seeds)
    assert split.accepted, split.reason
    assert torch.equal(split.poisoned, truth)
    assert split.clean_share <= 0.1 and split.seed_kept == 1.0
    assert (split.margin[truth] > split.margin[~truth & (labels == 0)].max()).all()
    assert (split.margin[labels != 0] == 0).all()


def test_clusters_rejected_without_a_separate_cluster():
    # the "poisoned" samples are clean ones of the target class: no cluster of their own
    train, clean, labels, ref_labels, _truth, seeds = _clusters_case(shift=0.0)
    split = split_target_class(train, clean, labels, ref_labels, 0, seeds)
    assert not split.accepted


def test_clusters_need_clean_samples_of_the_target():
    train, clean, labels, ref_labels, _truth, seeds = _clusters_case(shift=12.0)
    split = split_target_class(train, clean, labels, torch.ones_like(ref_labels), 0, seeds)
    assert not split.accepted and not split.poisoned.any()


def test_clusters_recover_the_planted_poisoned_samples_from_a_few_seeds(backdoored):
    """On the planted model's own activations: from 5 seeds of the neuron mode, the clusters
    find the other poisoned samples labelled as the target."""
    p, _probe, analysis = backdoored
    seeds = torch.zeros(len(p.train), dtype=torch.bool)
    seeds[analysis.suspected_index()[:5]] = True
    inspection = p.inspection
    split = split_target_class(
        inspection.train_stats, inspection.clean_stats, p.train.labels, p.clean.labels,
        TARGET, seeds,
    )  # fmt: skip
    assert split.accepted, split.reason
    precision, recall = _precision_recall(split.poisoned, p.poisoned)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert analysis.clusters is not None


# ---- clean model and bad input ---------------------------------------------------------------


def test_clean_model_gets_no_invented_target(clean_model):
    p = clean_model
    analysis = analyse_suspects(p.inspection, p.train, p.clean)
    assert analysis.target is None and analysis.confidence == 0
    assert "no backdoor evidence" in analysis.reason.lower()
    assert not analysis.poisoned.any()
    s = suggest(p.inspection, analysis, p.train, p.clean)
    assert s.pruned == 0 and s.methods == {} and s.why.startswith("Prune nothing")


def test_few_samples_warn_and_lower_confidence(backdoored):
    p, _probe, _analysis = backdoored
    inspection = p.inspection
    few = p.train.subset(torch.arange(40))
    inspection.collect(None, few)
    try:
        analysis = analyse_suspects(inspection, few, p.clean)
        assert any("fewer than 50" in w for w in analysis.warnings)
        assert analysis.confidence <= 40 / 50
    finally:
        inspection.collect(None, p.train)


def test_single_class_suspect_set_names_no_target(backdoored):
    p, _probe, _analysis = backdoored
    inspection = p.inspection
    single = ImageSet(p.train.images, torch.full((len(p.train),), TARGET))
    inspection.collect(None, single)
    try:
        analysis = analyse_suspects(inspection, single, p.clean)
        assert analysis.target is None
        assert any("single class" in w for w in analysis.warnings)
    finally:
        inspection.collect(None, p.train)


def test_suspects_need_the_training_statistics(backdoored):
    p, _probe, _analysis = backdoored
    stats = p.inspection.train_stats
    p.inspection.train_stats = None
    try:
        with pytest.raises(BnpError, match="--train"):
            analyse_suspects(p.inspection, p.train, p.clean)
    finally:
        p.inspection.train_stats = stats


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_acc_budget_must_be_a_number_at_least_zero(bad):
    with pytest.raises(BnpError, match="acc-budget"):
        check_acc_budget(bad)
    assert check_acc_budget(None) == 2.0 and check_acc_budget(0.5) == 0.5


def test_configurations_cover_single_union_and_intersection():
    configs = configurations(["ep", "bnp", "clp"])
    assert (("ep",), "union") in configs and (("ep", "bnp", "clp"), "union") in configs
    assert (("ep", "bnp"), "intersection") in configs
    assert configurations(["clp"]) == [(("clp",), "union")]


# ---- files and the command line ------------------------------------------------------------


def test_image_folder_keeps_file_names_through_subsets(tmp_path):
    from PIL import Image

    for k in range(2):
        (tmp_path / f"c{k}").mkdir()
        for i in range(3):
            Image.fromarray(np.full((4, 4), 40 * i + k, np.uint8)).save(tmp_path / f"c{k}/{i}.png")
    images = load_images(tmp_path)
    assert images.files == [f"c{k}/{i}.png" for k in range(2) for i in range(3)]
    assert images.subset(torch.tensor([4, 0])).files == ["c1/1.png", "c0/0.png"]
    assert images.subset(slice(1, 3)).files == ["c0/1.png", "c0/2.png"]


def test_suspect_list_as_csv_and_json(tmp_path, backdoored):
    _p, _probe, analysis = backdoored
    records = analysis.records()
    write_suspects(tmp_path / "s.csv", records)
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "file,label,score,poisoned" and len(lines) == len(records) + 1
    write_suspects(tmp_path / "s.json", records)
    assert json.loads((tmp_path / "s.json").read_text())["suspect_samples"][0] == records[0]
    with pytest.raises(BnpError):
        write_suspects(tmp_path / "s.txt", records)


DEMO_MODEL = Path(__file__).resolve().parent.parent / "resources/demo/fmnist_resnet20_badnets.pth"


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, backdoored):
    p, _probe, _analysis = backdoored
    root = tmp_path_factory.mktemp("cli")
    save_images(p.train, root / "train")
    save_images(p.clean, root / "clean")
    return root


def test_cli_rejects_bad_input_with_exit_2(cli_files, capsys):
    root = cli_files
    base = ["defend", str(DEMO_MODEL)]
    cases = [
        (["--auto", "--clean", str(root / "clean")], "--train"),
        (
            [
                "--auto",
                "--train",
                str(root / "train"),
                "--clean",
                str(root / "clean"),
                "--acc-budget",
                "-2",
            ],
            "acc-budget",
        ),
        (
            [
                "--auto",
                "--train",
                str(root / "train"),
                "--clean",
                str(root / "clean"),
                "--acc-budget",
                "nan",
            ],
            "acc-budget",
        ),
        (["--clean", str(root / "clean")], "--method"),
    ]
    for extra, needle in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err


def test_anchored_mixture_with_every_row_a_seed():
    """Every row seeded and positive (a CLA model's target class): no math domain error."""
    from core.evidence.activation_clusters import anchored_mixture

    values = torch.tensor([4.0, 5.0, 6.0, 5.5])
    high = anchored_mixture(values, torch.ones(4, dtype=torch.bool))
    assert high.all()
    one = anchored_mixture(torch.tensor([3.0]), torch.tensor([True]))
    assert one.shape == (1,)
