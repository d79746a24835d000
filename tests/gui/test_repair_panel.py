"""The Repair step in the window: found on a worker with progress, shown with its held-out
numbers, applied to the model's weights, and undone."""

from __future__ import annotations

import functools

import torch
from gui_helpers import LONG, analysed


def test_repair_apply_and_undo(qtbot, window, demo, monkeypatch):
    import core.evidence.repair_search
    from core.evidence.recovery import recover

    # one epoch per recovery: what is checked here is the window's flow, not the recovery
    monkeypatch.setattr(
        core.evidence.repair_search, "recover", functools.partial(recover, epochs=1)
    )
    s = analysed(qtbot, window, demo, suspects=True)
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

    def weights():  # under the engine's lock: a running preview swaps masked parameters in
        with s.runner.engine_lock:
            return {k: v.clone() for k, v in s.inspection.model.state_dict().items()}

    original = weights()
    errors = []
    s.message.connect(lambda level, text: errors.append(text) if level == "error" else None)
    panel.apply()
    qtbot.waitUntil(lambda: not s.runner.is_running("repair"), timeout=LONG)
    qtbot.waitUntil(lambda: panel.undo_button.isEnabled(), timeout=LONG)
    assert not errors
    applied = weights()
    assert all(torch.equal(applied[k], v) for k, v in outcome.model.state_dict().items())
    assert s.total_pruned() == outcome.mask.count()
    panel.undo()
    qtbot.waitUntil(lambda: not panel.undo_button.isEnabled(), timeout=LONG)
    qtbot.waitUntil(lambda: not s.runner.is_running("repair"), timeout=LONG)
    restored = weights()
    assert all(torch.equal(restored[k], v) for k, v in original.items()) and not errors


def test_repair_can_be_cancelled(qtbot, window, demo):
    s = analysed(qtbot, window, demo, suspects=True)
    panel = window.repair
    panel.repair()
    panel.cancel()
    assert not s.runner.is_running("repair") and panel.outcome is None
    assert panel.repair_button.isEnabled()
