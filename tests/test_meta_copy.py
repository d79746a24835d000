"""The model `load_detected` gives is a copy of one `meta` template per build, and its fx trace
is reused for the next model of the same build: both must be what a fresh build gives."""

from __future__ import annotations

import pytest
import torch

from core.model import graph
from core.model.architectures import _meta_template, build_model, load_detected
from core.model.detect import detect_architecture


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "densenet121"])
def test_a_template_copy_computes_as_a_fresh_build(arch):
    torch.manual_seed(0)
    fresh = build_model(arch, 7, 3).eval()
    state = fresh.state_dict()
    model = load_detected(detect_architecture(state, arch), state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    template = _meta_template(arch, 7, 3)
    assert all(t.is_meta for t in (*template.parameters(), *template.buffers()))
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def test_the_reused_trace_is_the_fresh_one(monkeypatch):
    state = build_model("resnet18", 10, 3).state_dict()
    detection = detect_architecture(state)
    first = graph.discover_layers(load_detected(detection, state))
    traced = []
    real = graph._traced_pairs
    monkeypatch.setattr(graph, "_traced_pairs", lambda m: traced.append(m) or real(m))
    second = graph.discover_layers(load_detected(detection, state))
    assert not traced  # the second model of the same build was not traced again
    assert second.layers == first.layers and second.skipped == first.skipped
    other = build_model("resnet18", 10, 3)  # not built by load_detected: traced
    assert graph.discover_layers(other).layers == first.layers and traced
