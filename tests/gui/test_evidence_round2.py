"""The evidence in plain sight (issue 20, items 2–4): Suggest's explanation stays in the Suspect
samples panel and goes into the export with the target, the estimated ASR (interval, samples)
and the suspect list; "No backdoor evidence" is said once and never against a high measured ASR;
Suggest is one undo step; the trade-off curve measures the preview's mask. Tiny models only."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from gui_helpers import LONG, analysed, wait_full_preview

from bnp_gui.decisions import capture
from bnp_gui.session import CURVE_SUBSET, PreviewResult


def _suggestion(
    session,
    methods,
    combine="intersection",
    reason="Repairs: because the bounds say so.",
    judged=None,
):
    """A held-out suggestion (`core.evidence.held_out_suggest`) of `methods`, its verdict
    "repairs", its mask `judged` (default: what the session's scores flag at those thresholds)."""

    from core.evidence.held_out_suggest import HeldOutSuggestion
    from core.evidence.repair_search import RepairOutcome
    from core.evidence.suggest import Suggestion
    from core.evidence.suspects import AsrEstimate
    from core.evidence.verdict import REPAIRS, Verdict

    estimate = AsrEstimate(2.0, 120, 0.5, 6.0, target=0)
    chosen = Suggestion(methods, combine, 7, 90.0, 89.0, estimate, True, "in-sample")
    mask = session.inspection.mask(*(judged or (methods, combine)))
    verdict = Verdict(REPAIRS, reason, 0.0, (0.0, 3.1), 120, "stamped", 0.0, (-1.2, 1.2), 200)
    return HeldOutSuggestion(RepairOutcome(verdict, ["prune"], None, mask, chosen))


def test_suggest_is_one_undo_step_named_after_it(qtbot, window, tiny_model):
    s = analysed(qtbot, window, tiny_model, defaults=True, suspects=True)
    stack = window.tools.history.stack
    s.set_threshold("ep", 1.75)  # a step of the analyst's before Suggest
    wait_full_preview(qtbot, s)
    before, steps = capture(s), stack.count()
    # chosen on the selection part's scores: here they flag other neurons than all samples' do
    suggestion = _suggestion(s, {"ep": 2.5, "bnp": 3.5}, judged=({"ep": 1.0}, "union"))
    assert suggestion.mask.count() > 0
    s.suspects._suggested(suggestion)
    assert stack.count() == steps + 1
    assert stack.undoText().startswith("Suggest: EP k=2.5 ∩ BNP k=3.5")
    assert (s.thresholds["ep"], s.thresholds["bnp"], s.combine) == (2.5, 3.5, "intersection")
    assert not s.enabled["clp"]
    assert s.current_mask().neurons() == suggestion.mask.neurons()  # the judged neurons
    stack.undo()
    assert capture(s) == before  # exactly the state before Suggest
    assert stack.undoText() == "EP k = 1.75"
    stack.redo()
    assert s.combine == "intersection" and s.thresholds["bnp"] == 3.5


def test_the_suggestion_stays_in_the_panel(qtbot, window, tiny_model):
    s = analysed(qtbot, window, tiny_model, defaults=True, suspects=True)
    suggestion = _suggestion(s, {"ep": 2.5}, "union")
    why = suggestion.why
    n = suggestion.mask.count()
    assert why.startswith(f"Repairs (held out): prune EP k=2.5 ({n} neuron")
    s.suspects._suggested(suggestion)
    label = window.suspects.suggestion
    assert why in label.text() and "(applied)" in label.text()
    assert label.isVisibleTo(window)
    assert why not in window.statusBar().currentMessage()  # short there: the panel has it
    s.set_threshold("ep", 3.0)
    assert why in label.text() and "not applied now" in label.text()


def _no_evidence(reason="No backdoor evidence: the suspect scores form no separate mode."):
    return types.SimpleNamespace(target=None, reason=reason, n_suspected=0)


def _measured(session, asr: float) -> None:
    from core.defense.evaluation import Metrics

    before = Metrics(acc=90.0, asr=asr, n_clean=100, n_poison=90)
    session.baseline[None] = before
    session._preview_ready(PreviewResult("full", before, before, 0, 0.1))


def test_no_evidence_is_said_once_and_yields_to_a_high_measured_asr(qtbot, window):
    s = window.session
    state = s.suspects
    state.analysis = _no_evidence()
    text = state.trust()
    assert text.count("No backdoor evidence") == 1
    assert "separate mode" in text
    _measured(s, 3.0)  # low: nothing contradicts the suspect samples
    assert state.trust().startswith("No backdoor evidence")
    _measured(s, 22.87)  # a partly repaired model: the trigger still works
    text = state.trust()
    assert "No backdoor evidence" not in text
    assert "22.87 %" in text and "contradicts" in text
    assert state.contradicted()
    assert window.suspects.trust.text() == text  # the panel follows the measurement


def test_export_carries_the_evidence(qtbot, window, tiny_model, tmp_path):
    s = analysed(qtbot, window, tiny_model, defaults=True, suspects=True)
    state = s.suspects
    with qtbot.waitSignal(state.suggestion_changed, timeout=LONG):
        window.suggest_action.trigger()
    wait_full_preview(qtbot, s)
    with qtbot.waitSignal(s.exported, timeout=LONG):
        window.export_to(str(tmp_path / "out"), "seed")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    a = state.analysis
    assert report["target_estimate"]["label"] == a.target
    assert report["target_estimate"]["why"] == a.reason
    assert len(report["suspect_samples"]) == len(a)
    assert report["suggestion"]["why"] == state.suggestion.why
    # the held-out verdict, as `bnp defend --auto` reports it; no in-sample claim
    assert report["suggestion"]["verdict"] == state.suggestion.verdict.verdict
    assert report["suggestion"]["repairs"] == state.suggestion.repairs
    assert "sure" not in (report["suggestion"].get("selection") or {})
    assert report["estimate"].get("held_out") is True  # the exported mask is the suggestion's
    assert report["evidence_trust"] == state.trust()
    assert report["suggestion_applied"] is True
    steps = report["repair_steps"]
    if state.suggestion.methods:
        assert steps and steps[-1].startswith("Suggest")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Evidence without the trigger" in html
    assert "Most suspicious training samples" in html


@pytest.fixture(scope="module")
def planted_analysis():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    try:
        from suspect_models import analysed_planted
    finally:
        sys.path.pop(0)
    return analysed_planted()


def test_the_panel_shows_why_the_target(qtbot, window, planted_analysis):
    from html import escape

    _, probe, analysis = planted_analysis
    state = window.session.suspects
    state.analysis = analysis
    window.suspects.refresh()
    why = window.suspects.why
    assert f"Why target {analysis.target}" in why.text()
    assert escape(analysis.reason) in why.text()
    assert why.isVisibleTo(window)
    state.analysis = None


def test_the_report_explains_an_inferred_target(planted_analysis):
    from bnp_gui.evidence import EvidencePlan, evidence_html, evidence_report

    planted, probe, analysis = planted_analysis
    assert analysis.target is not None
    mask = analysis.evidence_mask()
    plan = EvidencePlan(
        analysis, probe, planted.train, planted.clean, None, False, "trusted", False, ["a step"]
    )
    report = evidence_report(plan, mask)
    assert report["target_estimate"]["label"] == analysis.target
    low, high = report["estimate"]["interval95"]
    assert low <= report["estimated_asr"] <= high
    assert report["estimate"]["n_samples"] > 0
    html = evidence_html(report)
    assert f"Inferred target: {analysis.target}" in html
    assert "95 % interval" in html and "a step" in html
    assert analysis.reason.split(";")[0] in html


def test_trade_off_curve_measures_the_previews_mask(qtbot, window, tiny_model):
    from bnp_gui.trigger_source import measure

    s = analysed(qtbot, window, tiny_model, defaults=True, suspects=True)
    assert s.mask_methods().keys() == {"ep", "bnp"} and s.view_method == "bnp"
    k = s.thresholds["bnp"]
    qtbot.waitUntil(lambda: k in {p for p, _ in s.curves.get("bnp", [])}, timeout=LONG)
    point = dict(s.curves["bnp"])[k]
    expected = measure(
        s.inspection, s.eval_set(), s.trigger, mask=s.display_mask, limit=CURVE_SUBSET
    )
    assert (point.acc, point.asr) == (expected.acc, expected.asr)
    title = window.preview.plot.getPlotItem().titleLabel.text
    assert "EP ∪ BNP" in title and "alone" not in title
    # another decision: the curve measured within the old ones is gone at once
    s.set_combine("intersection")
    assert "bnp" not in s.curves
    s.set_enabled("bnp", False)
    assert "alone" in window.preview.plot.getPlotItem().titleLabel.text
