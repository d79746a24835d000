"""`bnp demo` end to end on the bundled asset: the report, the figure, and a real repair."""

import functools
import json
import shutil

import numpy as np
import pytest

import core.demo
from core.cli import main

METHODS = ("ep", "bnp", "clp")
STEP = 4  # every 4th test image


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    """`bnp demo` on the bundled checkpoint, clean and suspect sets, and every 4th image of its
    test set (500, every class): its five passes over the test set (before, EP, BNP, CLP,
    EP ∪ BNP) are most of its CPU, and every assertion below is a before/after comparison."""
    root = tmp_path_factory.mktemp("demo-root")
    demo = core.demo.DEMO_DIR
    for name in (core.demo.DEMO_CHECKPOINT, "clean", "train_poisoned"):
        (root / name).symlink_to(demo / name)
    (root / "test").mkdir()
    for name in ("data.npy", "labels.npy"):
        np.save(root / "test" / name, np.load(demo / "test" / name)[::STEP])
    shutil.copy(demo / "test" / "class_names.txt", root / "test" / "class_names.txt")
    out = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core.demo, "load_demo", functools.partial(core.demo.load_demo, root=root))
        assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_demo_report_has_every_method(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    assert report["acc_before"] >= 85.0  # a usable classifier
    assert report["asr_before"] >= 90.0  # with a working backdoor
    for method in METHODS:
        entry = report[method]
        assert entry["method"] == method and entry["threshold"] == 3.0
        for key in ("acc_before", "asr_before", "acc_after", "asr_after", "flagged", "scores"):
            assert key in entry
        assert entry["acc_before"] == report["acc_before"]
        assert sum(len(v) for v in entry["flagged"].values()) == entry["pruned"]
        assert entry["scores"]["bn1"] and len(entry["scores"]["layer3.2.bn2"]) == 64


def test_demo_repairs_the_backdoor(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    best = min(report[m]["asr_after"] for m in METHODS)
    assert best < report["asr_before"] / 2  # at least one defense removes most of the backdoor
    repaired = [m for m in METHODS if report[m]["asr_after"] == best][0]
    assert report[repaired]["acc_after"] > report["acc_before"] - 15


def test_demo_reports_the_windows_ep_bnp_union(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    union = report["ep_bnp_union"]
    assert union["methods"] == ["ep", "bnp"] and union["combine"] == "union"
    for layer in set(report["ep"]["flagged"]) | set(report["bnp"]["flagged"]):
        either = set(report["ep"]["flagged"].get(layer, [])) | set(
            report["bnp"]["flagged"].get(layer, [])
        )
        assert set(union["flagged"].get(layer, [])) == either, layer
    assert union["pruned"] == sum(len(v) for v in union["flagged"].values())


def test_demo_figure_is_a_png(demo_out):
    data = (demo_out / "figure.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
