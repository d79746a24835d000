"""Masks: combination rules, overrides, and preview == destructive pruning."""

import torch
from torch.func import functional_call

from core.data.images import ImageSet, InputSpec
from core.defense.evaluation import evaluate
from core.model.architectures import build_model
from core.model.masks import PruneMask


def _flags(**rows):
    return {name: torch.tensor(values, dtype=torch.bool) for name, values in rows.items()}


def test_union_and_intersection():
    a = PruneMask.from_flags(_flags(l1=[1, 0, 0], l2=[0, 1]), zero_beta=False)
    b = PruneMask.from_flags(_flags(l1=[1, 1, 0]), zero_beta=True)
    u = a.union(b)
    assert u.gamma["l1"].tolist() == [True, True, False]
    assert u.gamma["l2"].tolist() == [False, True]
    assert u.beta["l1"].tolist() == [True, True, False]
    i = a.intersection(b)
    assert i.gamma["l1"].tolist() == [True, False, False]
    assert i.gamma["l2"].tolist() == [False, False]
    assert i.beta["l1"].tolist() == [True, False, False]  # β only where pruned
    assert u.count() == 3 and i.count() == 1
    assert u.neurons() == {"l1": [0, 1], "l2": [1]}


def test_overrides():
    m = PruneMask.from_flags(_flags(l1=[1, 0, 0]), zero_beta=True)
    o = m.with_overrides(force_prune=[("l1", 2), ("l2", 0)], keep=[("l1", 0)], channels={"l2": 2})
    assert o.gamma["l1"].tolist() == [False, False, True]
    assert o.beta["l1"].tolist() == [False, False, False]
    assert o.gamma["l2"].tolist() == [True, False]
    assert m.gamma["l1"].tolist() == [True, False, False]  # the original is untouched


def test_preview_equals_destructive_and_leaves_weights_untouched():
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", 4, 3).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.bias.normal_()
                module.running_var.uniform_(0.5, 2)
    images = ImageSet(torch.rand(64, 3, 32, 32), torch.randint(0, 4, (64,)))
    spec = InputSpec(3, (32, 32))
    flags = {"layer1.0.bn1": torch.zeros(16, dtype=torch.bool)}
    flags["layer1.0.bn1"][[1, 5, 7]] = True
    flags["layer3.2.bn2"] = torch.zeros(64, dtype=torch.bool)
    flags["layer3.2.bn2"][::3] = True
    for zero_beta in (False, True):
        mask = PruneMask.from_flags(flags, zero_beta=zero_beta)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        x = spec.prepare(images.images)
        with torch.no_grad():
            preview = functional_call(model, mask.parameters(model), (x,))
            plain = model(x)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        assert not torch.equal(preview, plain)
        pruned = build_model("cifar_resnet20", 4, 3).eval()
        pruned.load_state_dict(model.state_dict())
        mask.apply_(pruned)
        with torch.no_grad():
            assert torch.equal(pruned(x), preview)
        assert (pruned.layer1[0].bn1.weight[[1, 5, 7]] == 0).all()
        assert (pruned.layer1[0].bn1.bias[[1, 5, 7]] == 0).all() == zero_beta
        m_preview = evaluate(model, images, spec, mask=mask)
        m_pruned = evaluate(pruned, images, spec)
        assert m_preview == m_pruned


def test_true_channels_lists_true_entries_and_skips_empty_layers():
    from core.model.masks import true_channels

    flags = {"a": torch.tensor([False, True, True]), "b": torch.zeros(4, dtype=torch.bool)}
    assert true_channels(flags) == {"a": [1, 2]}
    assert PruneMask.from_flags(flags, zero_beta=False).neurons() == {"a": [1, 2]}
