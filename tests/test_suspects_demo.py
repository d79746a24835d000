"""`bnp defend --auto` end to end on the bundled demo: which suspect samples are poisoned
(`train_poisoned/poisoned.npy` is the ground truth a defender would not have), the target,
and a suggestion whose estimated ASR is low."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.demo import DEMO_CHECKPOINT

DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def test_quarter(tmp_path_factory):
    """Every 4th image of the demo's test set (500, every class): the ACC/ASR measurements
    here are before/after comparisons, and each pass over the test set is a few seconds of CPU
    (the suspect and clean sets the --auto search reads are the demo's own, whole)."""
    folder = tmp_path_factory.mktemp("demo-test") / "test"
    folder.mkdir()
    for name in ("data.npy", "labels.npy"):
        np.save(folder / name, np.load(DEMO / "test" / name)[::4])
    shutil.copy(DEMO / "test" / "class_names.txt", folder / "class_names.txt")
    return folder


@pytest.fixture(scope="module")
def auto_report(tmp_path_factory, test_quarter):
    out = tmp_path_factory.mktemp("auto")
    argv = ["defend", str(DEMO / "fmnist_resnet20_badnets.pth"), "--auto"]
    argv += ["--train", str(DEMO / "train_poisoned"), "--clean", str(DEMO / "clean")]
    argv += ["--test", str(test_quarter), "--device", "cpu"]
    argv += ["--report", str(out / "r.json"), "--suspects", str(out / "s.csv")]
    argv += ["--out", str(out / "repaired.pth")]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    (out / "stdout.txt").write_text(printed.getvalue())
    return json.loads((out / "r.json").read_text()), out


def test_demo_suspects_match_the_poisoned_samples(auto_report):
    report, _out = auto_report
    truth = np.load(DEMO / "train_poisoned" / "poisoned.npy")
    samples = report["suspect_samples"]
    assert sorted(s["file"] for s in samples) == list(range(len(truth)))  # every sample, once
    scores = [s["score"] for s in samples]
    assert scores == sorted(scores, reverse=True)  # most suspicious first
    found = {s["file"] for s in samples if s["poisoned"]}
    poisoned = set(np.nonzero(truth)[0].tolist())
    precision = len(found & poisoned) / len(found)
    recall = len(found & poisoned) / len(poisoned)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


def test_demo_target_and_suggestion(auto_report):
    report, out = auto_report
    assert report["target_estimate"]["label"] == 0  # the demo's target (resources/demo/README.md)
    assert report["target_estimate"]["confidence"] > 0.8
    s = report["suggestion"]
    assert s["repairs"] and s["estimated_asr"] <= 5 and s["clean_acc_drop"] <= 2
    # "repairs" is the held-out verdict: both upper bounds hold on samples that did not select
    assert s["verdict"] == "repairs" and s["asr_interval"][1] <= 5
    assert s["acc_drop_interval"][1] <= 2 and s["steps"][0].startswith("prune ")
    assert s["asr_samples"] > 0 and s["acc_samples"] == s["holdout"]["clean_judge"]
    assert s["pruned"] == report["pruned"] > 0 and s["why"]
    assert set(s["methods"]) <= {"ep", "bnp", "clp"} and s["combine"] in ("union", "intersection")
    assert report["estimated_asr"] <= 5 and report["estimated_asr_before"] > 90
    # the demo's patch is read off the suspected samples and the estimate rests on it
    rebuilt = report["trigger_reconstruction"]
    assert rebuilt["used"] and 0 < rebuilt["values"] <= 9 * 3, rebuilt
    assert report["estimate"]["basis"] == "stamped"
    assert "stamped with a trigger reconstructed from" in report["estimate"]["describe"]
    assert "stamped with a trigger reconstructed from" in s["why"]
    # the real ASR used the inferred target and says so; the repair holds on the test set
    assert report["asr_target"] == {"label": 0, "source": "inferred from the suspect samples"}
    assert report["asr_before"] > 90 and report["asr_after"] < 15
    assert report["acc_after"] >= report["acc_before"] - 3
    rows = list(csv.DictReader((out / "s.csv").open()))
    assert len(rows) == 500 and rows[0]["poisoned"] == "True"


def test_auto_prints_its_configuration_in_the_table_and_layers_in_data_flow_order(auto_report):
    report, out = auto_report
    s = report["suggestion"]
    lines = (out / "stdout.txt").read_text().splitlines()
    auto_row = next(i for i, line in enumerate(lines) if line.startswith("auto "))
    assert lines[auto_row + 1] == f"  auto = {'; '.join(s['steps'])}"  # what was applied
    assert lines[auto_row + 2].startswith(f"  verdict: {s['verdict']} — ")
    listed = [line.split(":")[0].strip() for line in lines[auto_row + 3 :]]
    assert listed == list(report["flagged"])  # the report's order, which is the model's
    flow = ["bn1"] + [f"layer{a}.{b}.bn{c}" for a in (1, 2, 3) for b in range(3) for c in (1, 2)]
    ranks = [flow.index(name) for name in listed if name in flow]
    assert len(ranks) >= 2 and ranks == sorted(ranks)  # ResNet-20's BatchNorms, forward order


def test_demo_repaired_model_reloads_with_its_numbers(auto_report, test_quarter):
    """The exported file is the repaired model (pruning and any recovery): reopened, it gives
    the ACC/ASR the report measured after the repair, and it says which steps made it."""
    from core.data.load import load_images
    from core.defense.inspection import Inspection
    from core.io.checkpoint import load_checkpoint

    report, out = auto_report
    reopened = Inspection(load_checkpoint(out / "repaired.pth"), device="cpu")
    assert reopened.ckpt.metadata.extra["repair"] == report["suggestion"]["steps"]
    metrics = reopened.evaluate(load_images(test_quarter), target=0)
    assert metrics.acc == pytest.approx(report["acc_after"])
    assert metrics.asr == pytest.approx(report["asr_after"])


def test_defend_without_auto_reports_suspects_and_estimate(tmp_path, tmp_path_factory):
    """On the planted stand-in of the demo (tests/planted_demo.py, same layout, target 0): the
    report's fields do not depend on the model's size, and the bundled demo runs above."""
    import planted_demo

    planted = planted_demo.shared(tmp_path_factory)
    argv = ["defend", str(planted / DEMO_CHECKPOINT), "--method", "ep"]
    argv += ["--train", str(planted / "train_poisoned"), "--clean", str(planted / "clean")]
    argv += ["--device", "cpu", "--report", str(tmp_path / "r.json")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    suspects = len(np.load(planted / "train_poisoned" / "poisoned.npy"))
    assert len(report["suspect_samples"]) == suspects and report["target_estimate"]["label"] == 0
    assert 0 <= report["estimated_asr"] <= 100 and "suggestion" not in report
    assert report["estimate"]["is_estimate"] is True
