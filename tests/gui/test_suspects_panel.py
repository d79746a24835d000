"""Suspect samples in the window: the gallery, the highlight from a neuron click, marks, Suggest."""

from __future__ import annotations

import os

import torch
from gui_helpers import LONG, analysed
from PySide6.QtCore import Qt

from bnp_gui.panels.suspects import THUMB
from core.defense.inspection import METHODS


def _analysed(qtbot, window, demo):
    s = analysed(qtbot, window, demo, suspects=True)
    qtbot.waitUntil(lambda: s.suspects.estimate is not None, timeout=LONG)
    return s


def test_gallery_shows_the_most_suspicious_samples(qtbot, window, demo):
    s = _analysed(qtbot, window, demo)
    panel = window.suspects
    a = s.suspects.analysis
    if not os.environ.get("BNP_GUI_TEST_MODEL"):
        assert a.target == 0  # the planted stand-in's backdoor is found, as the demo's
    gallery = panel.gallery
    assert gallery.count() == min(60, len(a))
    assert gallery.iconSize().width() >= THUMB  # large enough to see a 3×3 patch
    first = gallery.item(0)
    index = int(first.data(Qt.UserRole))
    order = [int(i) for i in a.order()]  # most suspicious first...
    high = s.suspects.highlight
    if high is not None:  # ...after the high mode of the neuron the analysis ended on
        order = [i for i in order if high[i]] + [i for i in order if not high[i]]
    assert index == order[0]
    assert f"label {int(a.labels[index])}" in first.text() and "score" in first.toolTip()
    assert s.suspects.file_of(index) in first.toolTip()
    assert not first.icon().isNull()
    if a.target is not None:  # the demo: the target and how far to trust the numbers
        assert f"{a.n_suspected} suspected samples" in panel.trust.text()
        e = s.suspects.estimate
        assert e.source() in panel.trust.text()  # the basis, said once, in the trust line
        assert panel.estimate.text().startswith("<b>Estimated ASR</b>")
        assert e.source() in panel.estimate.toolTip()
        assert window.preview.value("ASR est.", "after").startswith("≈")


def test_clicking_a_neuron_highlights_its_high_mode(qtbot, window, demo):
    s = _analysed(qtbot, window, demo)
    a = s.suspects.analysis
    neurons = a.evidence_neurons()
    if not neurons:  # tiny stand-in without a backdoor: any neuron
        neurons = [(s.layers[-1][0], 0)]
    neuron = neurons[0]
    with qtbot.waitSignal(s.suspects.highlight_changed, timeout=LONG):
        s.select_neuron(neuron)
    highlight = s.suspects.highlight
    assert highlight is not None and highlight.shape == (len(a),)
    shown = window.suspects.shown_indices()
    n_high = int(highlight.sum())
    assert [bool(highlight[i]) for i in shown[: min(n_high, len(shown))]] == [True] * min(
        n_high, len(shown)
    )  # the neuron's high mode comes first
    if n_high:
        colour = window.suspects.gallery.item(0).background().color()
        assert colour.red() == 255 and colour.green() == 225  # the highlight colour
    s.select_neuron(None)
    qtbot.waitUntil(lambda: s.suspects.highlight is None, timeout=LONG)


def test_marking_samples_updates_the_estimate(qtbot, window, demo):
    s = _analysed(qtbot, window, demo)
    state = s.suspects
    a = state.analysis
    panel = window.suspects
    suspected = a.suspected_index().tolist()
    if not suspected:  # no backdoor evidence: mark the top sample poisoned instead
        panel.gallery.item(0).setSelected(True)
        panel.mark_poisoned.click()
        assert state.analysis.marks and state.analysis.n_suspected == 1
        return
    # mark every suspected sample clean: nothing is left to estimate from
    for i in range(panel.gallery.count()):
        item = panel.gallery.item(i)
        item.setSelected(int(item.data(Qt.UserRole)) in suspected)
    with qtbot.waitSignal(state.estimate_changed, timeout=LONG):
        panel.mark_clean.click()
    shown = set(panel.shown_indices())
    assert all(not state.analysis.poisoned[i] for i in shown & set(suspected))
    if set(suspected) <= shown:
        assert state.estimate.percent is None
        assert panel.estimate.text().startswith("<i>No ASR estimate")
    # unmark: the estimate comes back
    for i in range(panel.gallery.count()):
        panel.gallery.item(i).setSelected(True)
    with qtbot.waitSignal(state.estimate_changed, timeout=LONG):
        panel.unmark.click()
    assert torch.equal(state.analysis.poisoned, a.poisoned)
    assert state.estimate.percent is not None


def test_suggest_sets_the_thresholds_and_says_why(qtbot, window, demo):
    s = _analysed(qtbot, window, demo)
    state = s.suspects
    with qtbot.waitSignal(state.suggestion_changed, timeout=LONG):
        window.suggest_action.trigger()
    suggestion = state.suggestion
    assert suggestion is not None and suggestion.why
    v = suggestion.verdict  # judged on held-out samples: the verdict comes first
    assert suggestion.why.startswith(f"{v.verdict.capitalize()} (held out)")
    assert suggestion.repairs == (v.verdict == "repairs")
    for method in METHODS:
        assert s.enabled[method] == (method in suggestion.methods)
        if method in suggestion.methods:
            assert s.thresholds[method] == suggestion.methods[method]
    if suggestion.methods:
        assert s.combine == suggestion.combine
    assert s.total_pruned() == suggestion.pruned
    # the session prunes exactly the neurons the held-out verdict judged (the thresholds were
    # chosen on the selection part's scores; overrides cover where all samples' scores differ)
    assert s.current_mask().neurons() == suggestion.mask.neurons()
    from html import escape

    assert escape(suggestion.why) in window.suspects.suggestion.text()  # stays there
    if not suggestion.repairs:
        assert suggestion.why in window.banner.text()
    if state.analysis.target is not None and v.estimate is not None:
        # the held-out estimate, its interval and the samples it rests on, in the panel
        assert f"{v.estimate:.1f} % [{v.interval[0]:.1f}, {v.interval[1]:.1f}]" in suggestion.why
        assert f"from {v.n} " in suggestion.why
        assert v.n_acc == len(suggestion.outcome.holdout.clean_judge)


def test_suggest_never_claims_a_repair_the_held_out_samples_do_not_show(qtbot, window, demo):
    """Issue 17's false "repaired": the planted stand-in's suggestion repairs by its own samples'
    estimate, but its 48 held-out clean samples cannot bound the ASR below 5 %: the window says
    so and claims nothing more (a user-supplied model: the same rule, whatever its verdict)."""
    from core.evidence.suggest import suggest
    from core.evidence.verdict import REPAIRS, lowest_bound

    s = _analysed(qtbot, window, demo)
    state = s.suspects
    messages = []
    s.message.connect(lambda level, text: messages.append((level, text)))
    with qtbot.waitSignal(state.suggestion_changed, timeout=LONG):
        window.suggest_action.trigger()
    qtbot.waitUntil(lambda: not s.is_busy("suggest"), timeout=LONG)
    held = state.suggestion
    v = held.verdict
    shown = window.suspects.suggestion.text() + window.banner.text()
    shown += " ".join(text for _, text in messages)
    if v.verdict != REPAIRS:
        assert not held.repairs and "Repairs" not in shown and "repairs on held-out" not in shown
        assert any(level == "warning" and held.why in text for level, text in messages)
    else:
        assert v.interval[1] <= 5.0 and v.acc_interval[1] <= state.acc_budget
    if os.environ.get("BNP_GUI_TEST_MODEL") or state.analysis.target is None:
        return
    # the planted stand-in: the in-sample search on the same data claims a repair...
    with s.runner.engine_lock:
        in_sample = suggest(
            s.inspection, state.analysis, state.train, s.data["clean"], probe=state.probe
        )
    assert in_sample.repairs
    # ...which its held-out half cannot confirm, and the window does not claim
    assert lowest_bound(v.n) > 5.0 and v.verdict != REPAIRS


def test_threshold_curve_gets_the_estimated_asr(qtbot, window, demo):
    s = _analysed(qtbot, window, demo)
    if s.suspects.analysis.target is None:
        return  # no backdoor evidence: no estimate to draw
    qtbot.waitUntil(lambda: s.view_method in s.suspects.curves, timeout=LONG)
    xs, ys = window.preview.est_curve.getData()
    assert len(xs) == len(s.suspects.curves[s.view_method]) > 0
    assert all(0 <= y <= 100 for y in ys)
    assert max(ys) > min(ys)  # pruning more lowers the estimated ASR


def test_suspect_list_exports_with_marks(qtbot, window, demo, tmp_path):
    import csv

    s = _analysed(qtbot, window, demo)
    panel = window.suspects
    panel.gallery.item(0).setSelected(True)
    first = int(panel.gallery.item(0).data(Qt.UserRole))
    panel.mark_clean.click()
    panel.export_list(str(tmp_path / "s.csv"))
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert len(rows) == len(s.suspects.analysis)
    assert rows[-1]["poisoned"] == "False"  # the sample marked clean is listed last
    assert rows[-1]["file"] == (s.data["train"].files or {first: str(first)})[first]
    panel.export_list(str(tmp_path / "bad.txt"))
    assert "Cannot export" in window.banner.text()
