"""Exports that cannot misstate: the report's numbers are those of the exported file measured on
the full set, figures are complete, the data recorded is the data in use, provenance is there."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from gui_helpers import LONG, analyze, open_data, open_model, wait_full_preview

from bnp_gui.data_roles import DataRoles
from bnp_gui.report import CURVE_PNG, HEATMAP_PNG, REPORT_JSON, sha256_file
from bnp_gui.session import CURVE_KS
from core.data.load import load_images

DEFEND_KEYS = ("method", "threshold", "flagged", "pruned", "scores")
METRIC_KEYS = ("acc_before", "asr_before", "acc_after", "asr_after")


def fresh_metrics(model_file: str, test_dir: str):
    """ACC/ASR of a checkpoint file on the full test set, measured from scratch."""
    from core.defense.inspection import Inspection
    from core.io.checkpoint import load_checkpoint

    inspection = Inspection(load_checkpoint(model_file), device="cpu")
    return inspection.evaluate(load_images(test_dir))


def export(qtbot, window, folder, fmt="seed") -> Path:
    with qtbot.waitSignal(window.session.exported, timeout=LONG) as blocker:
        window.export_to(str(folder), fmt)
    return Path(blocker.args[0])


@pytest.mark.slow
def test_export_right_after_a_threshold_change_reports_the_exported_file(
    qtbot, window, demo, tmp_path
):
    checkpoint, roles = demo
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    analyze(qtbot, window)
    wait_full_preview(qtbot, s)
    old = s.preview
    busy = []
    s.progress.connect(lambda task, done, total, eta: busy.append(task))

    window.thresholds.spins["bnp"].setValue(2.0)  # and export at once, no waiting
    expected = s.current_mask()
    assert expected.count() != old.pruned
    model = export(qtbot, window, tmp_path / "out")
    assert "export" in busy  # the export showed progress

    report = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    for key in (*DEFEND_KEYS, *METRIC_KEYS):
        assert key in report, key
    assert report["pruned"] == expected.count()
    assert report["flagged"] == {k: v for k, v in expected.neurons().items()}
    assert report["thresholds"]["bnp"] == 2.0
    assert report["measured_on"]["n_clean"] == len(load_images(roles.test))  # the full set
    after = fresh_metrics(str(model), roles.test)
    assert report["acc_after"] == pytest.approx(after.acc, abs=1e-9)
    assert report["asr_after"] == pytest.approx(after.asr, abs=1e-9)
    before = fresh_metrics(checkpoint, roles.test)
    assert report["acc_before"] == pytest.approx(before.acc, abs=1e-9)
    assert report["asr_before"] == pytest.approx(before.asr, abs=1e-9)

    prov = report["provenance"]
    assert prov["checkpoint_sha256"] == sha256_file(checkpoint)
    assert prov["model_sha256"] == sha256_file(model)
    assert prov["created_utc"].endswith("+00:00") and "bnp-inspector" in prov["program"]
    assert prov["defend_command"] is None  # EP ∪ BNP: bnp defend takes one method
    assert "one method" in prov["defend_command_missing_because"]


@pytest.mark.slow
def test_single_method_export_records_a_defend_command_that_reproduces_it(
    qtbot, window, demo, tmp_path, capsys
):
    from core.cli import main as bnp

    checkpoint, roles = demo
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    analyze(qtbot, window)
    s.set_enabled("ep", False)
    s.set_threshold("bnp", 2.5)
    export(qtbot, window, tmp_path / "gui")
    report = json.loads((tmp_path / "gui" / REPORT_JSON).read_text())
    command = report["provenance"]["defend_command"]
    assert command and command.startswith("bnp defend ")
    args = shlex.split(command)[1:]
    # the same command, writing elsewhere
    args[args.index("--out") + 1] = str(tmp_path / "cli" / "model.pth")
    args[args.index("--report") + 1] = str(tmp_path / "cli" / "report.json")
    (tmp_path / "cli").mkdir()
    assert bnp(args) == 0
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    for key in METRIC_KEYS:
        assert cli[key] == pytest.approx(report[key], abs=1e-9), key
    assert cli["flagged"] == report["flagged"] and cli["pruned"] == report["pruned"]
    assert cli["method"] == report["method"] == "bnp" and cli["threshold"] == 2.5


def test_failed_open_data_is_not_recorded_as_the_data_in_use(qtbot, window, tiny_model, tmp_path):
    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    window.open_data(DataRoles(test=str(tmp_path / "no-such-folder")))
    qtbot.waitUntil(lambda: window.banner.level == "error" and window.banner.isVisible())
    assert s.roles == roles
    export(qtbot, window, tmp_path / "out")
    report = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    assert report["data"]["test"] == roles.test
    assert report["measured_on"]["path"] == roles.test


def test_export_cancels_previews_and_renders_complete_figures(
    qtbot, window, tiny_model, tmp_path, monkeypatch
):
    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    wait_full_preview(qtbot, s)
    s.select_neuron((s.layers[2][0], 1))
    seen = {}

    def record(plot, path):
        name = Path(path).name
        seen[name] = {
            "selection": window.heatmap.selection_mark.isVisible(),
            "curve": len(s.curves.get(s.view_method, [])),
            "points": len(window.preview.acc_curve.getData()[0]),
        }
        Path(path).write_bytes(b"png")

    monkeypatch.setattr(window, "save_plot_png", record)
    s.set_threshold("clp", 1.5)
    s.request_preview(immediate=True)
    assert s.is_busy("preview")
    window.export_to(str(tmp_path / "out"))
    assert not s.is_busy("preview") and not s.is_busy("curve")  # cancelled, not waited for
    qtbot.waitUntil(lambda: HEATMAP_PNG in seen and CURVE_PNG in seen, timeout=LONG)
    assert seen[HEATMAP_PNG]["selection"] is False
    assert seen[CURVE_PNG]["curve"] == len(CURVE_KS) == seen[CURVE_PNG]["points"]
    assert window.heatmap.selection_mark.isVisible()  # back after the picture
    wait_full_preview(qtbot, s)  # the cancelled preview comes back on its own
