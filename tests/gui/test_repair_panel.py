"""The Repair step in the window: found on a worker with progress, shown with its held-out
numbers, applied to the model's weights, and undone."""

from __future__ import annotations

import functools

import torch
from gui_helpers import LONG, analysed, open_model


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

    def weights(model=None):  # under the engine's lock: a running preview swaps masked
        # parameters in (torch.func.functional_call), and outcome.model may be the session's
        with s.runner.engine_lock:
            model = s.inspection.model if model is None else model
            return {k: v.clone() for k, v in model.state_dict().items()}

    original = weights()
    errors = []
    s.message.connect(lambda level, text: errors.append(text) if level == "error" else None)
    panel.apply()
    qtbot.waitUntil(lambda: not s.runner.is_running("repair"), timeout=LONG)
    qtbot.waitUntil(lambda: panel.undo_button.isEnabled(), timeout=LONG)
    assert not errors
    applied, repaired = weights(), weights(outcome.model)
    assert all(torch.equal(applied[k], v) for k, v in repaired.items())
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


def test_apply_never_copies_a_running_preview_s_masked_weights(qtbot, window, tiny_model):
    """A pruning-only repair's model is the session's own: Apply must read it on the engine's
    lane, not while a forward pass (functional_call) has masked parameters swapped in."""
    import threading
    from types import SimpleNamespace

    from core.model.masks import PruneMask

    open_model(qtbot, window, tiny_model[0])
    s, panel = window.session, window.repair
    model = s.inspection.model
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    kept = bn.weight.detach().clone()
    panel.outcome = SimpleNamespace(
        model=model, mask=PruneMask(), suggestion=None, steps=["prune (test)"]
    )
    swapped, release = threading.Event(), threading.Event()

    def preview_like():  # what functional_call does for a masked forward pass, under the lock
        with s.runner.engine_lock:
            with torch.no_grad():
                bn.weight.zero_()
            swapped.set()
            release.wait(timeout=LONG / 1000)
            with torch.no_grad():
                bn.weight.copy_(kept)

    worker = threading.Thread(target=preview_like)
    worker.start()
    assert swapped.wait(timeout=LONG / 1000)
    panel.apply()  # the window's thread, while the zeros are in
    release.set()
    worker.join()
    qtbot.waitUntil(lambda: not s.runner.is_running("repair"), timeout=LONG)
    qtbot.waitUntil(lambda: panel.undo_button.isEnabled(), timeout=LONG)
    with s.runner.engine_lock:
        assert torch.equal(bn.weight, kept)
