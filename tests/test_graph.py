"""The neuron graph pairs BatchNorms with the conv that really feeds them."""

import torch
from torch import nn

from core.model.architectures import build_model
from core.model.graph import _hook_pairs, neuron_graph


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


# ---- layers outside torch.nn, in-place operations, repeated calls, skipped layers -----------

from core.defense.scores import clp_scores  # noqa: E402
from core.model.graph import conv_weight, discover_layers  # noqa: E402


class ActBatchNorm(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: calls F.batch_norm itself, then an activation."""

    def forward(self, x):
        x = nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
        return torch.relu(x)


class StdConv(nn.Conv2d):
    """Weight-standardised convolution: F.conv2d with a transformed weight."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


class OddLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = StdConv(3, 4, 3, padding=1)
        self.bn1 = ActBatchNorm(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.SyncBatchNorm(4)
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.shared = nn.BatchNorm2d(4)  # called twice below
        self.bn1d = nn.BatchNorm1d(4)
        self.ln = nn.LayerNorm(4)
        self.unused = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        x = self.bn2(self.conv2(x))
        x = self.shared(self.conv3(x)) + self.shared(x)
        return self.ln(self.bn1d(x.mean(dim=(2, 3))))


def test_batchnorm_and_conv_subclasses_are_found_and_others_listed():
    model = OddLayers().eval()
    for example in (None, torch.rand(2, 3, 8, 8)):
        found = discover_layers(model, example)
        assert [(layer.name, layer.conv) for layer in found.layers] == [
            ("bn1", "conv1"),
            ("bn2", "conv2"),
        ]
        skipped = {s.name: s.reason for s in found.skipped}
        assert set(skipped) == {"shared", "bn1d", "ln", "unused"}
        assert "called 2 times" in skipped["shared"]
        assert "1-D features" in skipped["bn1d"]
        assert "not used" in skipped["unused"]
        assert "not a BatchNorm" in skipped["ln"]


def test_hook_fallback_finds_the_same_and_counts_calls():
    model = OddLayers().eval()
    pairs = _hook_pairs(model, torch.rand(2, 3, 8, 8))
    assert pairs[:2] == [("bn1", "conv1"), ("bn2", "conv2")]


def test_clp_uses_the_weight_a_conv_subclass_really_applies():
    model = OddLayers().eval()
    w = model.conv1.weight.detach()
    standardised = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (
        w.std(dim=(1, 2, 3), keepdim=True) + 1e-5
    )
    assert torch.allclose(conv_weight(model.conv1), standardised)
    scores = clp_scores(model, discover_layers(model).layers)
    gamma = model.bn1.weight.detach().double() / model.bn1.running_var.double().sqrt()
    expected = torch.linalg.matrix_norm(standardised.flatten(2).double(), ord=2) * gamma.abs()
    assert torch.allclose(scores["bn1"], expected, rtol=1e-5)


class InPlaceResidual(nn.Module):
    """conv → `out += shortcut` → BN: the BN normalises the sum, not the conv output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        out = self.conv(x)
        if out.sum() > -1e30:  # data-dependent control flow: fx cannot trace this model
            out += x
        return self.bn(out)


def test_in_place_sum_after_a_conv_is_not_paired_with_it():
    model = InPlaceResidual().eval()
    found = discover_layers(model, torch.rand(1, 3, 8, 8))
    assert found.traced_by == "hooked forward pass"
    assert [(layer.name, layer.conv) for layer in found.layers] == [("bn", None)]


def test_model_without_batchnorm_says_which_methods_cannot_apply():
    import pytest

    from core.errors import BnpError

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 6, 6]))
    found = discover_layers(model, torch.rand(1, 3, 8, 8))
    assert found.layers == [] and found.skipped[0].kind == "LayerNorm"
    with pytest.raises(BnpError, match="No BatchNorm layer can be scored"):
        found.require()
    with pytest.raises(BnpError, match="EP, BNP and CLP cannot apply"):
        discover_layers(nn.Sequential(nn.Conv2d(3, 4, 3))).require()


def test_timm_batchnormact_models_are_found():
    import pytest

    timm = pytest.importorskip("timm")
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=5).eval()
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    found = discover_layers(model, torch.rand(1, 3, 32, 32))
    assert sorted(layer.name for layer in found.layers) == sorted(bns)
    assert all(layer.conv is not None for layer in found.layers)
