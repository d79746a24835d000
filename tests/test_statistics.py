"""The one-pass statistics: exact against a direct computation, and mergeable across shards."""

import pytest
import torch
from torch import nn

from core.data.images import ImageSet, InputSpec
from core.defense.statistics import collect_statistics
from core.errors import BnpError, Cancelled
from core.model.graph import neuron_graph


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))).mean((2, 3))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = TwoLayer().eval()
    images = ImageSet(torch.rand(37, 3, 8, 8), torch.zeros(37, dtype=torch.long))
    spec = InputSpec(3, (8, 8))
    layers = neuron_graph(model)
    return model, images, spec, layers


def direct_preactivations(model, x):
    z1 = model.conv1(x)
    z2 = model.conv2(torch.relu(model.bn1(z1)))
    return {"bn1": z1, "bn2": z2}


def test_statistics_equal_direct_computation(setup):
    model, images, spec, layers = setup
    stats = collect_statistics(model, images, spec, layers, batch_size=10)
    with torch.no_grad():
        direct = direct_preactivations(model, images.images)
    for name, z in direct.items():
        s = stats.layers[name]
        flat = z.transpose(0, 1).reshape(z.shape[1], -1).double()
        assert s.count == flat.shape[1]
        assert torch.allclose(s.mean, flat.mean(1), atol=1e-6)
        assert torch.allclose(s.var, flat.var(1, unbiased=True), rtol=1e-5)
        assert torch.equal(s.maxima, z.amax((2, 3)))
        assert torch.allclose(s.means, z.mean((2, 3)), atol=1e-6)
    assert stats.n_samples == 37


def test_shard_merge_equals_one_pass(setup):
    model, images, spec, layers = setup
    whole = collect_statistics(model, images, spec, layers, batch_size=8)
    # same batch boundaries: the merge must reproduce the one pass to float64 rounding
    a = collect_statistics(model, images.subset(slice(0, 16)), spec, layers, batch_size=8)
    b = collect_statistics(model, images.subset(slice(16, 37)), spec, layers, batch_size=8)
    # other boundaries: per-batch float32 sums differ in their last bits only
    c = collect_statistics(model, images.subset(slice(0, 13)), spec, layers, batch_size=5)
    d = collect_statistics(model, images.subset(slice(13, 37)), spec, layers, batch_size=7)
    for merged, tol in ((a.merge(b), 1e-12), (c.merge(d), 1e-6)):
        assert merged.n_samples == whole.n_samples
        for name, s in whole.layers.items():
            m = merged.layers[name]
            assert m.count == s.count
            assert torch.allclose(m.mean, s.mean, rtol=tol, atol=tol)
            assert torch.allclose(m.m2, s.m2, rtol=tol)
            assert torch.equal(m.maxima, s.maxima)


def test_subset_equals_a_pass_over_those_samples(setup):
    model, images, spec, layers = setup
    whole = collect_statistics(model, images, spec, layers, batch_size=8)
    rows = torch.tensor([0, 3, 4, 9, 17, 18, 30, 36])
    alone = collect_statistics(model, images.subset(rows), spec, layers, batch_size=3)
    part = whole.subset(rows)
    assert part.n_samples == len(rows) and torch.equal(part.predictions, alone.predictions)
    for name, s in alone.layers.items():
        p = part.layers[name]
        assert p.count == s.count
        assert torch.allclose(p.mean, s.mean, rtol=1e-6, atol=1e-7)
        assert torch.allclose(p.m2, s.m2, rtol=1e-5)
        assert torch.allclose(p.maxima, s.maxima, atol=1e-6)
        assert torch.allclose(p.m2s, s.m2s, rtol=1e-5, atol=1e-6)
    # a subset of a merge is a subset of the one pass
    halves = whole.subset(torch.arange(20)).merge(whole.subset(torch.arange(20, 37)))
    again = halves.subset(rows)
    for name, s in part.layers.items():
        assert torch.allclose(again.layers[name].m2, s.m2, rtol=1e-12)
    with pytest.raises(BnpError, match="outside"):
        whole.subset(torch.tensor([37]))
    with pytest.raises(BnpError, match="no samples"):
        whole.subset(torch.tensor([], dtype=torch.long))
    whole.layers["bn1"].m2s = None  # statistics made elsewhere, without per-sample rows
    assert not whole.can_subset
    with pytest.raises(BnpError, match="per-sample"):
        whole.subset(rows)


def test_variance_is_stable_for_large_offsets(setup):
    model, images, spec, layers = setup
    with torch.no_grad():
        model.conv1.bias.add_(1e4)  # pre-activations ~1e4 with small spread
    stats = collect_statistics(model, images, spec, layers, batch_size=6)
    with torch.no_grad():
        z = model.conv1(images.images).double()
    flat = z.transpose(0, 1).reshape(6, -1)
    assert torch.allclose(stats.layers["bn1"].var, flat.var(1), rtol=1e-3)


def test_progress_and_cancel(setup):
    model, images, spec, layers = setup
    seen = []
    collect_statistics(
        model, images, spec, layers, batch_size=10, progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(10, 37), (20, 37), (30, 37), (37, 37)]
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        collect_statistics(model, images, spec, layers, batch_size=10, cancel=cancel)
