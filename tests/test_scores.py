"""EP, BNP and CLP scores against values computed independently, and the outlier rule."""

import math

import pytest
import torch
from torch import nn

from core.defense.scores import (
    bnp_scores,
    clp_scores,
    ep_entropy,
    histogram_entropy,
    largest_singular_values,
    outlier_flags,
)
from core.defense.statistics import LayerStatistics, Statistics
from core.model.graph import NeuronLayer


def histogram_reference(z: torch.Tensor) -> torch.Tensor:
    """SPEC §1's histogram as the reference does it: one pass over all values per bin."""
    g, big_g = z.min(), z.max()
    nbins = int(math.floor(float((big_g - g) / 0.01)))
    counts = []
    for n in range(nbins):
        lo = g + torch.tensor(n * 0.01, dtype=torch.float64).float()
        hi = g + torch.tensor((n + 1) * 0.01, dtype=torch.float64).float()
        counts.append(((z > lo) & (z < hi)).sum(0))
    p = torch.stack(counts).double() / z.shape[0]
    ent = torch.zeros(z.shape[1], dtype=torch.float64)
    for c in range(z.shape[1]):
        for value in p[:, c].tolist():
            if value > 0:
                ent[c] -= value * math.log(value)
    return ent


def ep_reference(maxima: torch.Tensor) -> torch.Tensor:
    """SPEC §1 EP: standardise per neuron (unbiased std), constant neurons unscored."""
    f = maxima.float()
    std, mean = f.std(0), f.mean(0)
    keep = std > 0
    out = torch.full((f.shape[1],), float("nan"), dtype=torch.float64)
    out[keep] = histogram_reference((f[:, keep] - mean[keep]) / std[keep])
    return out


def test_ep_vectorised_equals_per_bin_loop():
    torch.manual_seed(0)
    maxima = torch.randn(300, 12)
    maxima[:60, 3] += 6.0  # a separate mode: a backdoor-like neuron
    maxima[:, 5] = torch.round(maxima[:, 5] * 4) / 4  # heavy ties
    got = ep_entropy(maxima)
    assert torch.allclose(got, ep_reference(maxima), atol=1e-12, equal_nan=True)
    assert got[3] < got[[0, 1, 2, 4]].min()  # the bimodal neuron has the lowest entropy


def test_histogram_with_values_exactly_on_edges_equals_per_bin_loop():
    torch.manual_seed(3)
    z = torch.randn(400, 9)
    g = z.min()
    planted = 0
    for i, n in enumerate(range(5, 500, 3)):
        z[i, i % 9] = g + torch.tensor(n * 0.01, dtype=torch.float64).float()
        planted += 1
    edges = g + (torch.arange(1000, dtype=torch.float64) * 0.01).float()
    assert torch.isin(z, edges).sum() >= planted  # the global minimum sits on e_0 too
    got = histogram_entropy(z)
    assert torch.allclose(got, histogram_reference(z), atol=1e-12)
    # dropping edge hits matters: counting them would change the entropies
    assert not torch.allclose(got, histogram_entropy(z + 0.001), atol=1e-6)


def test_ep_exact_edge_hits_count_nowhere():
    # column standardised to exactly (-1, 0, 1)*s: values on edges are dropped
    maxima = torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 4.0], [3.0, 0.5]])
    assert torch.allclose(ep_entropy(maxima), ep_reference(maxima), atol=1e-12)


def test_ep_constant_neuron_has_no_score_and_does_not_distort_others():
    torch.manual_seed(1)
    maxima = torch.randn(200, 4)
    with_dead = torch.cat([maxima, torch.full((200, 1), 0.7)], dim=1)
    scores = ep_entropy(with_dead)
    assert torch.isnan(scores[4])
    assert torch.allclose(scores[:4], ep_entropy(maxima), atol=1e-12)
    flags = outlier_flags({"l": scores}, 0.0, "low")["l"]
    assert not flags[4]


def _stats(mean, var, count):
    mean = torch.tensor(mean, dtype=torch.float64)
    m2 = torch.tensor(var, dtype=torch.float64) * (count - 1)
    empty = torch.zeros(1, len(mean))
    return Statistics({"bn": LayerStatistics(count, mean, m2, empty, empty)}, 1)


def test_bnp_kl_matches_closed_form():
    bn = nn.BatchNorm2d(3).eval()
    bn.running_mean.copy_(torch.tensor([0.0, 1.0, -2.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    model = nn.Sequential()
    model.add_module("bn", bn)
    stats = _stats([0.0, 2.0, -2.0], [1.0, 1.0, 1.0], 101)
    got = bnp_scores(model, stats)["bn"]
    expected = []
    for mu, var, m, v in zip(
        [0.0, 2.0, -2.0], [1.0, 1.0, 1.0], [0.0, 1.0, -2.0], [1, 4, 0.25], strict=True
    ):
        expected.append(
            math.log(math.sqrt(v) / math.sqrt(var)) + (var + (mu - m) ** 2) / (2 * v) - 0.5
        )
    assert got[0] == pytest.approx(0.0, abs=1e-12)  # identical Gaussians
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_clp_equals_one_svd_per_channel():
    torch.manual_seed(2)
    conv = nn.Conv2d(5, 7, 3, bias=False)
    bn = nn.BatchNorm2d(7).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.randn(7))
        bn.running_var.copy_(torch.rand(7) + 0.1)
    model = nn.Sequential()
    model.add_module("conv", conv)
    model.add_module("bn", bn)
    got = clp_scores(model, [NeuronLayer("bn", 7, "conv", 0)])["bn"]
    expected = []
    for c in range(7):
        weight, gamma, var = (t.detach().double() for t in (conv.weight, bn.weight, bn.running_var))
        w = weight[c].reshape(5, -1) * (gamma[c] / var[c].sqrt()).abs()
        expected.append(torch.linalg.svdvals(w)[0].item())
    # Gram matrices are formed in the weights' float32, like the reference's float32 SVD
    assert got.tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_clp_over_mixed_layers_and_threads_equals_one_svd_per_channel(threads):
    """Gram sizes 1, 3, 9 and 25 (1×1, stem, 3×3, 5×5, depthwise convs), a one-channel layer
    (an empty share for every thread but one), a zero-weight channel, and no-conv BatchNorms."""
    torch.manual_seed(3)
    convs = {
        "stem": nn.Conv2d(3, 8, 3),
        "wide": nn.Conv2d(8, 16, 3),
        "point": nn.Conv2d(16, 5, 1),
        "big": nn.Conv2d(5, 6, 5),
        "depth": nn.Conv2d(6, 6, 3, groups=6),
        "single": nn.Conv2d(6, 1, 3),
    }
    model = nn.Module()
    layers = []
    for i, (name, conv) in enumerate(convs.items()):
        bn = nn.BatchNorm2d(conv.out_channels).eval()
        with torch.no_grad():
            bn.weight.normal_()
            bn.running_var.uniform_(0.2, 2.0)
        model.add_module(name, conv)
        model.add_module(f"{name}_bn", bn)
        layers.append(NeuronLayer(f"{name}_bn", conv.out_channels, name, i))
    with torch.no_grad():
        convs["wide"].weight[4] = 0
    model.add_module("lonely_bn", nn.BatchNorm2d(4))
    layers.insert(2, NeuronLayer("lonely_bn", 4, None, 99))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = clp_scores(model, layers)
    finally:
        torch.set_num_threads(previous)
    assert list(got) == [f"{name}_bn" for name in convs]  # no score for a BN without a conv
    for name, conv in convs.items():
        bn = getattr(model, f"{name}_bn")
        weight, gamma, var = (t.detach().double() for t in (conv.weight, bn.weight, bn.running_var))
        expected = [
            torch.linalg.svdvals(weight[c].flatten(1) * (gamma[c] / var[c].sqrt()).abs())[0].item()
            for c in range(conv.out_channels)
        ]
        assert got[f"{name}_bn"].dtype == torch.float64
        assert got[f"{name}_bn"].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-12), name
    assert got["wide_bn"][4] == 0


@pytest.mark.parametrize("shape", [(4, 9, 1), (4, 1, 9), (4, 3, 9), (4, 64, 9), (4, 1, 1)])
def test_largest_singular_values_any_shape(shape):
    w = torch.randn(*shape, dtype=torch.float64)
    expected = torch.stack([torch.linalg.svdvals(m)[0] for m in w])
    assert torch.allclose(largest_singular_values(w), expected, rtol=1e-9)


def test_outlier_rule_uses_layer_mean_and_unbiased_std():
    s = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0], dtype=torch.float64)
    mean, std = s.mean().item(), s.std().item()  # std with n-1
    high = outlier_flags({"a": s}, 2.0, "high")["a"]
    assert high.tolist() == [x > mean + 2 * std for x in s.tolist()]
    assert high[9] and high.sum() == 1
    low = outlier_flags({"a": -s}, 2.0, "low")["a"]
    assert low[9] and low.sum() == 1
    # with k large enough nothing is flagged
    assert not outlier_flags({"a": s}, 3.0, "high")["a"].any()


def test_bnp_constant_neuron_has_no_score():
    bn = nn.BatchNorm2d(3).eval()
    model = nn.Sequential()
    model.add_module("bn", bn)
    scores = bnp_scores(model, _stats([0.0, 0.5, 1.0], [1.0, 0.0, 2.0], 50))["bn"]
    assert torch.isnan(scores[1]) and torch.isfinite(scores[[0, 2]]).all()
    assert not outlier_flags({"bn": scores}, 0.0, "high")["bn"][1]
