"""The neuron graph pairs BatchNorms with the conv that really feeds them."""

import torch
from torch import nn

from core.architectures import build_model
from core.graph import _hook_pairs, neuron_graph


class OutOfOrder(nn.Module):
    """Modules registered in a different order than the data flows through them."""

    def __init__(self):
        super().__init__()
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(4)
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.bn_pre = nn.BatchNorm2d(4)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.conv_a(x)))
        x = self.bn_pre(x)  # normalises an activation, not a conv output
        return self.bn_b(self.conv_b(x))


def test_pairing_follows_data_flow_not_registration():
    layers = neuron_graph(OutOfOrder())
    assert [(layer.name, layer.conv) for layer in layers] == [
        ("bn_a", "conv_a"),
        ("bn_pre", None),
        ("bn_b", "conv_b"),
    ]
    assert [layer.index for layer in layers] == [0, 1, 2]


def test_hook_fallback_agrees_with_fx():
    model = OutOfOrder().eval()
    pairs = _hook_pairs(model, torch.zeros(1, 3, 8, 8))
    assert pairs == [(layer.name, layer.conv) for layer in neuron_graph(model)]


def test_preact_resnet_pairing():
    model = build_model("preact_resnet18", 10, 3).eval()
    layers = {layer.name: layer.conv for layer in neuron_graph(model)}
    # the first block's bn1 sees the stem conv's output; later bn1s see a residual sum, which
    # registration order would wrongly pair with the previous block's conv2
    assert layers["layer1.0.bn1"] == "conv1"
    assert layers["layer1.1.bn1"] is None
    assert layers["layer2.0.bn1"] is None
    assert layers["layer4.1.bn1"] is None
    assert layers["bn"] is None  # the final BatchNorm before pooling
    # bn2 normalises conv1's output
    assert layers["layer1.0.bn2"] == "layer1.0.conv1"
    assert layers["layer2.0.bn2"] == "layer2.0.conv1"
    # the hooked pass finds the same pairs
    assert _hook_pairs(model, torch.zeros(1, 3, 32, 32)) == list(layers.items())


def test_registration_order_agrees_where_it_is_right():
    model = build_model("cifar_resnet20", 10, 3).eval()
    layers = neuron_graph(model)
    last_conv, naive = None, {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            last_conv = name
        elif isinstance(module, nn.BatchNorm2d):
            naive[name] = last_conv
    assert {layer.name: layer.conv for layer in layers} == naive
    assert layers[0].name == "bn1" and layers[0].channels == 16
