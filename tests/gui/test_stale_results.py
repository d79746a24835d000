"""Results belong to the model they were computed with: Analyze pressed while another checkpoint
loads analyses that checkpoint, and loading (tracing) a model never breaks the forward passes
other workers run meanwhile."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch
from gui_helpers import LONG, open_data, open_model, wait_full_preview


@pytest.fixture(scope="module")
def second_model(tiny_model, tmp_path_factory):
    """The tiny model with other BatchNorm statistics: other BNP scores, other flags."""
    from core.attack.train import save_checkpoint
    from core.defense.inspection import checkpoint_trigger
    from core.io.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_model[0])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in ckpt.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.add_(torch.randn(shape, generator=generator))
                module.running_var.mul_(torch.rand(shape, generator=generator) * 3 + 0.2)
    path = tmp_path_factory.mktemp("second") / "other_resnet20.pth"
    return str(save_checkpoint(path, ckpt.model, checkpoint_trigger(ckpt), ckpt.metadata))


def test_analyze_while_loading_analyses_the_new_model(qtbot, window, tiny_model, second_model):
    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    first = s.inspection
    # hold a collection on the first model until the second one is loaded
    gate = threading.Event()
    real_collect = first.collect

    def held_collect(*args, **kwargs):
        gate.wait(LONG / 1000)
        return real_collect(*args, **kwargs)

    first.collect = held_collect
    try:
        with qtbot.waitSignal(s.checkpoint_changed, timeout=LONG):
            window.open_checkpoint(second_model)
            window.analyze_action.trigger()  # while the second checkpoint is loading
        assert s.inspection is not first
    finally:
        gate.set()
    qtbot.waitUntil(lambda: s.available("bnp") and not s.is_busy("collect"), timeout=LONG)
    qtbot.wait(300)  # anything the first model's collection still delivers arrives now
    own = s.inspection.scores("bnp")  # BnpError if the second model was never analysed
    for layer, scores in s.scores["bnp"].items():
        assert torch.equal(scores, own[layer]), layer
    engine_mask = s.inspection.mask(s.mask_methods(), s.combine)
    assert s.total_pruned() == engine_mask.count()


def test_loading_never_breaks_forward_passes_of_other_workers(
    qtbot, window, tiny_model, second_model, monkeypatch, caplog
):
    """torch.fx patches nn.Module.__call__ process-wide while it traces: a preview running
    then would fail with "module is not installed as a submodule"."""
    checkpoint, roles = tiny_model
    s = window.session
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    wait_full_preview(qtbot, s)

    tracing, preview_started = threading.Event(), threading.Event()
    real_call_module = torch.fx.Tracer.call_module
    real_evaluate = type(s.inspection).evaluate

    def slow_call_module(self, *args, **kwargs):
        if not tracing.is_set():  # pause the trace once, with the patch in force
            tracing.set()
            # a preview that is not held back starts within milliseconds (well under a second
            # on a loaded machine); once started, its forward pass runs during this pause
            if preview_started.wait(2):
                time.sleep(1.0)
        return real_call_module(self, *args, **kwargs)

    def noted_evaluate(self, *args, **kwargs):
        preview_started.set()
        return real_evaluate(self, *args, **kwargs)

    monkeypatch.setattr(torch.fx.Tracer, "call_module", slow_call_module)
    # a second model of the same build reuses the first one's trace; a new architecture is
    # traced while it loads, the race this test is about: trace every model here
    monkeypatch.setattr("core.model.graph._build_key", lambda model: None)
    monkeypatch.setattr(type(s.inspection), "evaluate", noted_evaluate)
    errors = []
    s.message.connect(lambda level, text: errors.append(text) if level == "error" else None)
    caplog.set_level(logging.ERROR)
    with qtbot.waitSignal(s.checkpoint_changed, timeout=LONG):
        window.open_checkpoint(second_model)
        qtbot.waitUntil(tracing.is_set, timeout=LONG)
        s.request_preview(immediate=True)  # the first model's preview, during the trace
    wait_full_preview(qtbot, s)
    logged = [r.getMessage() for r in caplog.records]
    assert not any("submodule" in text for text in errors + logged), errors + logged
    assert errors == []
