"""Registry and detection: every architecture builds and is recognised from its own weights."""

import pytest
import torch

from core.architectures import ARCHITECTURES, Detection, build_model, detect_architecture
from core.errors import ArchitectureMismatch, BnpError

CIFAR_NETS = [name for name, spec in ARCHITECTURES.items() if spec.input_size == 32]


def meta_state_dict(arch: str, num_classes: int, in_channels: int) -> dict:
    with torch.device("meta"):
        return build_model(arch, num_classes, in_channels).state_dict()


def test_registry_has_the_promised_architectures():
    expected = {
        "cifar_resnet18", "cifar_resnet20", "cifar_resnet32", "cifar_resnet56",
        "preact_resnet18", "vgg16_bn_cifar", "resnet18", "resnet50", "vgg16_bn", "mobilenet_v2",
    }  # fmt: skip
    assert expected <= set(ARCHITECTURES)
    for name, spec in ARCHITECTURES.items():
        assert spec.name == name


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("in_channels", [1, 3])
def test_detection_round_trip(arch, in_channels):
    state_dict = meta_state_dict(arch, 7, in_channels)
    assert detect_architecture(state_dict) == Detection(arch, 7, in_channels)
    assert detect_architecture(state_dict, arch) == Detection(arch, 7, in_channels)


@pytest.mark.parametrize("arch", CIFAR_NETS)
@pytest.mark.parametrize("size", [32, 28])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_cifar_nets_take_32_and_28_pixel_inputs(arch, size, in_channels):
    with torch.device("meta"):  # shapes only
        model = build_model(arch, 5, in_channels)
        out = model(torch.empty(2, in_channels, size, size))
    assert out.shape == (2, 5)


def test_real_build_and_forward():
    model = build_model("cifar_resnet20", 3, 1).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 3)


def test_seed_key_names():
    keys = meta_state_dict("cifar_resnet18", 10, 3).keys()
    assert {"conv1.weight", "layer1.0.bn1.weight", "layer2.0.shortcut.1.running_var"} <= keys
    assert "linear.weight" in keys
    keys20 = meta_state_dict("cifar_resnet20", 10, 3).keys()
    assert {"layer3.2.bn2.weight", "layer2.0.shortcut.0.weight", "linear.bias"} <= keys20
    assert not any(k.startswith("layer4") for k in keys20)


def test_preact_batchnorm_precedes_its_convolution():
    names = [n for n, _ in build_model("preact_resnet18").named_modules()]
    assert names.index("layer1.0.bn1") < names.index("layer1.0.conv1")
    assert "bn" in names and "layer2.0.shortcut.0" in names


def test_missing_num_batches_tracked_is_accepted():
    state_dict = meta_state_dict("cifar_resnet20", 10, 3)
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert detect_architecture(state_dict).arch == "cifar_resnet20"


def test_missing_key_names_closest_candidates():
    state_dict = meta_state_dict("cifar_resnet20", 10, 3)
    del state_dict["layer3.2.bn2.weight"]
    with pytest.raises(ArchitectureMismatch) as info:
        detect_architecture(state_dict)
    message = str(info.value)
    assert "cifar_resnet20" in message and "layer3.2.bn2.weight" in message
    assert "cifar_resnet32" in message  # the next closest is named too
    assert message.index("cifar_resnet20") < message.index("cifar_resnet32")


def test_given_arch_that_does_not_fit_is_explained():
    state_dict = meta_state_dict("cifar_resnet32", 10, 3)
    with pytest.raises(ArchitectureMismatch, match="cifar_resnet20.*unexpected.*layer1.3"):
        detect_architecture(state_dict, "cifar_resnet20")
    with pytest.raises(ArchitectureMismatch, match="Unknown architecture"):
        detect_architecture(state_dict, "resnet9000")
    with pytest.raises(BnpError, match="Unknown architecture"):
        build_model("resnet9000")


def test_shape_mismatch_is_reported():
    state_dict = meta_state_dict("cifar_resnet20", 10, 3)
    state_dict["layer1.0.conv1.weight"] = torch.empty(16, 16, 5, 5, device="meta")
    with pytest.raises(ArchitectureMismatch, match=r"layer1\.0\.conv1\.weight \(file \[16, 16, 5"):
        detect_architecture(state_dict)
