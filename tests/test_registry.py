"""Every registry architecture traces, scores with all three methods, and prunes."""

import pytest
import torch
from torch import nn

from core.data.images import ImageSet, InputSpec
from core.defense.scores import bnp_scores, clp_scores, ep_scores, outlier_flags
from core.defense.statistics import collect_statistics
from core.model.architectures import build_model
from core.model.graph import neuron_graph
from core.model.masks import PruneMask

CORE = (
    "cifar_resnet18",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet56",
    "preact_resnet18",
    "vgg16_bn_cifar",
    "resnet18",
    "resnet50",
    "vgg16_bn",
    "mobilenet_v2",
)  # fmt: skip  (the whole zoo: tests/test_zoo.py)


@pytest.mark.parametrize("arch", CORE)
def test_architecture_traces_and_scores(arch):
    torch.manual_seed(0)
    in_channels = 1 if arch in ("cifar_resnet20", "mobilenet_v2") else 3
    model = build_model(arch, 7, in_channels).eval()
    layers = neuron_graph(model)
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert sorted(layer.name for layer in layers) == sorted(bns)
    with_conv = [layer for layer in layers if layer.conv is not None]
    if arch != "preact_resnet18":
        assert len(with_conv) == len(layers)  # conv → BN everywhere
    else:
        assert 0 < len(with_conv) < len(layers)
    clp = clp_scores(model, layers)
    assert set(clp) == {layer.name for layer in with_conv}
    assert all(torch.isfinite(s).all() and (s >= 0).all() for s in clp.values())

    images = ImageSet(torch.rand(6, in_channels, 32, 32), torch.zeros(6, dtype=torch.long))
    stats = collect_statistics(model, images, InputSpec(in_channels, (32, 32)), layers)
    bnp = bnp_scores(model, stats)
    ep = ep_scores(stats)
    assert set(bnp) == set(ep) == {layer.name for layer in layers}
    for layer in layers:
        assert bnp[layer.name].shape == (layer.channels,)
        constant = stats.layers[layer.name].var == 0  # e.g. 1×1 maps of a random model
        assert (torch.isfinite(bnp[layer.name]) | constant).all()
        assert torch.isnan(bnp[layer.name][constant]).all()
    flags = outlier_flags(clp, 0.5, "high")
    mask = PruneMask.from_flags(flags, zero_beta=True)
    assert mask.count() > 0
    mask.apply_(model)
    assert model(images.images[:2].float()).shape == (2, 7)
