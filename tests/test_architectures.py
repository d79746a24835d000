"""Registry and detection: every architecture builds and is recognised from its own weights."""

import pytest
import torch

from core.errors import ArchitectureMismatch, BnpError
from core.model.architectures import ARCHITECTURES, Detection, build_model
from core.model.detect import detect_architecture

CIFAR_NETS = [name for name, spec in ARCHITECTURES.items() if spec.input_size == 32]
# the original registry, checked on every run; every other entry is checked in the slow run
CORE = {
    "cifar_resnet18", "cifar_resnet20", "cifar_resnet32", "cifar_resnet56", "preact_resnet18",
    "vgg16_bn_cifar", "resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "preactresnet18",
    "googlenet", "googlenet_aux",
}  # fmt: skip
DETECTABLE = [
    name if name in CORE else pytest.param(name, marks=pytest.mark.slow)
    for name, spec in ARCHITECTURES.items()
    if spec.detect
]


def meta_state_dict(arch: str, num_classes: int, in_channels: int) -> dict:
    from core.model.architectures import build_on_meta

    return build_on_meta(arch, num_classes, in_channels).state_dict()


def test_registry_has_the_promised_architectures():
    expected = {
        "cifar_resnet18", "cifar_resnet20", "cifar_resnet32", "cifar_resnet56",
        "preact_resnet18", "vgg16_bn_cifar", "resnet18", "resnet50", "vgg16_bn", "mobilenet_v2",
    }  # fmt: skip
    assert expected <= set(ARCHITECTURES)
    for name, spec in ARCHITECTURES.items():
        assert spec.name == name


def built_shapes_state_dict(arch: str, num_classes: int, in_channels: int) -> dict:
    """The keys and shapes of `meta_state_dict` (meta tensors, the counters as int64), read
    from the build on meta that detection compares a file against (its cache): one build per
    case instead of two, the same state_dict for detection."""
    from core.model.detect import _expected_shapes

    return {
        key: torch.empty(
            shape,
            device="meta",
            dtype=torch.long if key.endswith("num_batches_tracked") else torch.float32,
        )
        for key, shape in _expected_shapes(arch, num_classes, in_channels).items()
    }


def test_shapes_state_dict_is_the_meta_build():
    for arch, in_channels in (("resnet18", 1), ("mobilenet_v3_small", 3), ("cifar_resnet20", 1)):
        built = meta_state_dict(arch, 7, in_channels)
        same = built_shapes_state_dict(arch, 7, in_channels)
        assert list(same) == list(built)
        assert all(same[k].shape == v.shape and same[k].dtype == v.dtype for k, v in built.items())


@pytest.mark.parametrize("arch", DETECTABLE)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_detection_round_trip(arch, in_channels):
    state_dict = built_shapes_state_dict(arch, 7, in_channels)
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


def test_torchvision_families_are_registered():
    names = set(ARCHITECTURES)
    for arch in (
        "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "vgg19_bn", "mobilenet_v3_small",
        "mobilenet_v3_large", "densenet121", "densenet161", "efficientnet_b0", "efficientnet_b3",
        "efficientnet_v2_s", "shufflenet_v2_x1_0", "regnet_y_400mf", "regnet_x_400mf",
        "mnasnet1_0", "googlenet", "inception_v3", "convnext_tiny", "bb_vit_b_16",
    ):  # fmt: skip
        assert arch in names


def test_builders_are_torchvisions_own():
    import torchvision

    model = build_model("efficientnet_b0", 4, 3)
    assert type(model) is torchvision.models.EfficientNet
    assert type(build_model("regnet_y_400mf", 4, 1)) is torchvision.models.RegNet


def test_transform_input_variant_is_chosen_by_name_only():
    state_dict = meta_state_dict("googlenet_transform_input", 10, 3)
    assert detect_architecture(state_dict).arch == "googlenet"
    assert detect_architecture(state_dict, "googlenet_transform_input").arch == (
        "googlenet_transform_input"
    )
    assert build_model("googlenet_transform_input").transform_input
    assert not build_model("googlenet").transform_input


def test_aux_heads_tell_googlenet_variants_apart():
    plain = meta_state_dict("googlenet", 10, 3)
    aux = meta_state_dict("googlenet_aux", 10, 3)
    assert not any(k.startswith("aux") for k in plain)
    assert any(k.startswith("aux1.") for k in aux)
    assert detect_architecture(aux).arch == "googlenet_aux"


def test_missing_running_statistics_are_named_not_refused():
    state_dict = meta_state_dict("cifar_resnet20", 10, 3)
    stripped = {
        k: v for k, v in state_dict.items() if not k.endswith(("running_mean", "running_var"))
    }
    detection = detect_architecture(stripped)
    assert detection.arch == "cifar_resnet20"
    assert "bn1" in detection.no_running_stats and "layer3.2.bn2" in detection.no_running_stats
    # only one of the two statistics missing is a damaged file, not a choice
    half = {k: v for k, v in state_dict.items() if not k.endswith("running_var")}
    with pytest.raises(ArchitectureMismatch, match="running_var"):
        detect_architecture(half)


def test_regnet_builds_on_meta_despite_tensor_arithmetic():
    from core.model.architectures import build_on_meta

    model = build_on_meta("regnet_y_128gf", 10, 3)
    assert {p.device.type for p in model.parameters()} == {"meta"}


@pytest.mark.slow
def test_signatures_are_recomputed_and_cached_when_the_shipped_file_does_not_fit(
    tmp_path, monkeypatch
):
    """A damaged shipped file: every hand-registered architecture's signature is computed and
    cached — and what is computed is what the shipped file says (one computation serves both
    checks: seconds of CPU, with `_expected_shapes`'s in-memory cache smaller than the
    registry, so a second pass would compute them all again)."""
    import json

    import core.model.detect as arch_module

    shipped = arch_module._read_signatures(
        arch_module.SIGNATURE_FILE, arch_module._library_versions()
    )
    damaged = tmp_path / "shipped.json"
    damaged.write_text("{not json")
    monkeypatch.setattr(arch_module, "SIGNATURE_FILE", damaged)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    arch_module.signatures.cache_clear()
    try:
        sigs = arch_module.signatures()
        cached = tmp_path / "cache" / "bnp-inspector" / "signatures.json"
        assert set(json.loads(cached.read_text())["archs"]) == set(arch_module.HAND_REGISTERED)
        assert sigs["resnet50"] == arch_module.compute_signature("resnet50")
        state_dict = meta_state_dict("resnet50", 10, 3)
        assert detect_architecture(state_dict).arch == "resnet50"
    finally:
        arch_module.signatures.cache_clear()
    if not shipped:
        pytest.skip("installed library versions differ from those the file was written for")
    for arch in arch_module.HAND_REGISTERED:  # the libraries' models: test_library_models.py
        assert shipped[arch] == sigs[arch], arch


def test_shipped_signatures_serve_an_install_without_timm(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from core.model.architectures import ARCHITECTURES; "
        "from core.model.detect import signatures; s = signatures(); "
        "assert not any(a.startswith('timm/') for a in ARCHITECTURES); print(len(s))"
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = {"BNP_NO_TIMM": "1", "XDG_CACHE_HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": root, "PATH": "/usr/bin:/bin"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 60
    assert not (tmp_path / "bnp-inspector").exists()  # nothing had to be computed


def test_meta_fallback_leaves_other_threads_models_real():
    import threading

    from core.model.meta import _empty_weights

    built = {}
    inside, release = threading.Event(), threading.Event()

    def meta_builder():
        with _empty_weights():
            built["meta"] = torch.nn.Linear(3, 3)
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=meta_builder)
    thread.start()
    inside.wait(10)
    built["real"] = torch.nn.Linear(3, 3)  # another thread, while the fallback is active
    release.set()
    thread.join()
    assert built["meta"].weight.device.type == "meta"
    assert built["real"].weight.device.type == "cpu"
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # the patch is gone again
