"""The Repair step in the window: found on a worker with progress, shown with its held-out
numbers, applied to the model's weights, and undone."""

from __future__ import annotations

import functools

import torch
from gui_helpers import LONG, analyze, open_data, open_model


def _analysed(qtbot, window, demo):
    checkpoint, roles = demo
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    analyze(qtbot, window)
    qtbot.waitUntil(lambda: s.suspects.analysis is not None, timeout=LONG)
    return s


def test_repair_apply_and_undo(qtbot, window, demo, monkeypatch):
    import core.repair_search
    from core.recovery import recover

    # one epoch per recovery: what is checked here is the window's flow, not the recovery
    monkeypatch.setattr(core.repair_search, "recover", functools.partial(recover, epochs=1))
    s = _analysed(qtbot, window, demo)
    panel = window.repair
    assert panel.repair_button.isEnabled() and not panel.apply_button.isEnabled()
    panel.repair()
    assert panel.cancel_button.isEnabled()  # running: cancel offered
    qtbot.waitUntil(lambda: panel.outcome is not None, timeout=LONG)
    qtbot.waitUntil(lambda: not s.runner.is_running("repair"), timeout=LONG)
    outcome = panel.outcome
    assert panel.progress.value() == 1000
    assert outcome.verdict.verdict.capitalize() in panel.verdict.text()
    if s.suspects.analysis.target is None:  # a stand-in without a backdoor: nothing to apply
        assert not panel.apply_button.isEnabled()
        return
    assert "Estimated ASR" in panel.details.text() and "before" in panel.details.text()
    assert f"{outcome.verdict.n} samples" in panel.details.text()
    if not outcome.steps:
        assert not panel.apply_button.isEnabled()
        return
    original = {k: v.clone() for k, v in s.inspection.model.state_dict().items()}
    panel.apply()
    qtbot.waitUntil(lambda: panel.undo_button.isEnabled(), timeout=LONG)
    weights = s.inspection.model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in outcome.model.state_dict().items())
    assert s.total_pruned() == outcome.mask.count()
    panel.undo()
    qtbot.waitUntil(lambda: not panel.undo_button.isEnabled(), timeout=LONG)
    qtbot.waitUntil(lambda: not s.runner.is_running("repair"), timeout=LONG)
    weights = s.inspection.model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in original.items())


def test_repair_can_be_cancelled(qtbot, window, demo):
    s = _analysed(qtbot, window, demo)
    panel = window.repair
    panel.repair()
    panel.cancel()
    assert not s.runner.is_running("repair") and panel.outcome is None
    assert panel.repair_button.isEnabled()
