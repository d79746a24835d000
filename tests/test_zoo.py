"""Every model named in issue 11 builds with random weights and goes through the engine:
loads strictly, is detected, its layers are found (or skipped with a reason), CLP pairs, the
pruned export reopens with the same predictions. Tiny inputs; the large models are slow."""

import pytest

from tests.zoo_check import BACKDOORBENCH_NAMES, OURS, TIMM, TORCHVISION, check_model

QUICK = {"resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0", "cifar_resnet20",
         "preactresnet18", "regnet_x_400mf", "mnasnet1_0"}  # fmt: skip
NO_BATCHNORM = {"convnext_tiny", "vit_b_16"}
SMALLEST = {"inception_v3": 75, "googlenet": 32, "googlenet_aux": 32}  # tiny but valid sizes


def _cases():
    for name in OURS + TORCHVISION:
        yield name, ""
    for name in BACKDOORBENCH_NAMES:
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
