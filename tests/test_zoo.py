"""Every model named in issue 11 builds with random weights and goes through the engine:
loads strictly, is detected, its layers are found (or skipped with a reason), CLP pairs, the
pruned export reopens with the same predictions. Tiny inputs; the large models are slow."""

import pytest

from tests.zoo_check import BACKDOORBENCH_NAMES, OURS, TIMM, TORCHVISION, check_model

QUICK = {"resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0", "cifar_resnet20",
         "preactresnet18", "regnet_x_400mf", "mnasnet1_0"}  # fmt: skip
NO_BATCHNORM = {"convnext_tiny", "vit_b_16"}
SMALLEST = {"inception_v3": 75, "googlenet": 32, "googlenet_aux": 32}  # tiny but valid sizes
# members of a family whose file pipeline is a smaller member's: the same torchvision class,
# only more blocks (VGG: Conv-BN-ReLU blocks and the same 25088x4096 classifier, whose save,
# load and export are each row's cost) or wider ones (wide_resnet50_2 is resnet50's Bottleneck
# with width_per_group=128). What is theirs alone, detection from their keys and shapes, is
# proven by tests/test_architectures.py::test_detection_round_trip[*-vgg16_bn/vgg19_bn/
# wide_resnet50_2], and BackdoorBench's name by test_backdoorbench's
# test_torchvision_model_names[vgg19_bn] (its attack_result.pt loads as vgg19_bn).
SAME_PIPELINE_AS = {
    ("", "vgg16_bn"): "vgg11_bn",
    ("backdoorbench", "vgg19_bn"): "vgg11_bn",
    ("", "wide_resnet50_2"): "resnet50",
}


def _cases():
    for name in OURS + TORCHVISION:
        if ("", name) not in SAME_PIPELINE_AS:
            yield name, ""
    for name in BACKDOORBENCH_NAMES:
        if ("backdoorbench", name) not in SAME_PIPELINE_AS:
            yield name, "backdoorbench"
    for name in TIMM:
        yield name, "timm"


@pytest.mark.parametrize(
    "name,source",
    [
        pytest.param(n, s, id=f"{s or 'lib'}:{n}", marks=() if n in QUICK else pytest.mark.slow)
        for n, s in _cases()
    ],
)
def test_model_goes_through_the_engine(tmp_path, name, source):
    if source == "timm":
        pytest.importorskip("timm")
    size = 224 if name == "vit_b_16" else SMALLEST.get(name, 32)
    row = check_model(name, tmp_path, size=size, source=source)
    assert row.loads and row.detected == row.arch
    assert row.reproduces
    if name in NO_BATCHNORM:
        assert row.layers == 0 and not any(row.methods.values())
        assert row.skipped  # its LayerNorms are listed with the reason
    else:
        assert row.layers > 0 and all(row.methods.values())
        assert row.clp_partners > 0 and row.pruned > 0
