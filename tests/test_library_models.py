"""Detection from the libraries' own registries: every timm model and torchvision classifier is
a candidate, described on `meta` into a cache keyed by the library's version; look-alikes and
GroupNorm models are named, never opened silently as another model."""

import pytest
import torch
import torchvision
from torch import nn

import core.model.library_models as lib
from core.errors import ArchitectureMismatch
from core.io.checkpoint import load_checkpoint
from core.model.architectures import ARCHITECTURES
from core.model.detect import detect_architecture

# the models the tests describe (a full library takes minutes): names from issue 21
TIMM_NAMES = ["regnety_008", "dpn68", "efficientnet_b0", "tf_efficientnet_b0", "resnet18",
              "resnet50", "resnet50_gn", "repvgg_a0", "tresnet_m"]  # fmt: skip
TORCHVISION_NAMES = ["maxvit_t", "resnet18", "alexnet"]


@pytest.fixture
def libraries(tmp_path, monkeypatch):
    """A few models of each library, described into a temporary user cache."""
    names = {"timm": TIMM_NAMES, "torchvision": TORCHVISION_NAMES}
    if lib.library_version("timm") is None:
        names["timm"] = []
    monkeypatch.setattr(lib, "library_names", lambda library: names[library])
    monkeypatch.setattr(lib, "SHIPPED_FILE", tmp_path / "not_shipped.json")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lib.descriptions.cache_clear()
    yield tmp_path / "cache" / "bnp-inspector"
    lib.descriptions.cache_clear()


def timm_state_dict(name, num_classes=5, in_chans=3):
    timm = pytest.importorskip("timm")
    with lib.FastMeta():
        return timm.create_model(name, num_classes=num_classes, in_chans=in_chans).state_dict()


def test_descriptions_are_cached_by_library_version_outside_the_package(libraries, monkeypatch):
    found = lib.descriptions("torchvision")
    assert set(found) == set(TORCHVISION_NAMES)
    version = lib.library_version("torchvision")
    cached = libraries / f"library-torchvision-{version}.json"
    assert cached.is_file() and not lib.SHIPPED_FILE.exists()
    # a new release: described again into its own cache file, no code change
    monkeypatch.setattr(lib, "library_version", lambda library: "99.0")
    lib.descriptions.cache_clear()
    assert set(lib.descriptions("torchvision")) == set(TORCHVISION_NAMES)
    assert (libraries / "library-torchvision-99.0.json").is_file()


def test_described_signature_is_the_detection_signature(libraries):
    d = lib.descriptions("torchvision")["maxvit_t"]
    with lib.FastMeta():
        state_dict = torchvision.models.maxvit_t(num_classes=7).state_dict()
    assert d.key_sig == lib.key_signature(state_dict)
    assert d.batchnorm > 0 and d.groupnorm == 0
    detection = detect_architecture(state_dict)
    assert (detection.arch, detection.num_classes, detection.in_channels) == ("maxvit_t", 7, 3)
    assert "maxvit_t" in ARCHITECTURES and ARCHITECTURES["maxvit_t"].input_size == 224


@pytest.mark.parametrize("name", ["regnety_008", "dpn68", "repvgg_a0", "tresnet_m"])
def test_timm_models_outside_any_list_are_detected(libraries, name):
    state_dict = timm_state_dict(name, num_classes=5, in_chans=1)
    detection = detect_architecture(state_dict)
    assert (detection.arch, detection.num_classes, detection.in_channels) == (f"timm/{name}", 5, 1)
    assert not detection.notices


def test_timm_model_loads_and_computes_as_timm(libraries, tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("regnety_008", num_classes=4).eval()
    path = tmp_path / "regnety.pth"
    torch.save(model.state_dict(), path)
    ckpt = load_checkpoint(path)
    assert ckpt.metadata.arch == "timm/regnety_008"
    assert ckpt.metadata.input_size == (224, 224)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), model(x))


def test_tf_lookalike_is_named_with_the_flag(libraries):
    state_dict = timm_state_dict("tf_efficientnet_b0")
    detection = detect_architecture(state_dict)
    assert detection.arch == "timm/efficientnet_b0"  # the same tensors: chosen, and said
    (notice,) = detection.notices
    assert "timm/tf_efficientnet_b0" in notice and "--arch" in notice
    chosen = detect_architecture(state_dict, "timm/tf_efficientnet_b0")
    assert chosen.arch == "timm/tf_efficientnet_b0"


def test_timm_groupnorm_model_is_told_apart_by_its_missing_statistics(libraries):
    detection = detect_architecture(timm_state_dict("resnet50_gn"))
    assert detection.arch == "timm/resnet50_gn"
    assert any("GroupNorm" in n and "do not apply" in n for n in detection.notices)
    assert any("resnet50 (BatchNorm without running statistics)" in n for n in detection.notices)
    # the BatchNorm model, statistics and all, is no GroupNorm model
    plain = detect_architecture(timm_state_dict("resnet50"))
    assert plain.arch == "resnet50" and not plain.notices  # timm's computes as torchvision's


def test_groupnorm_resnet18_opens_as_groupnorm_not_as_batchnorm(libraries, tmp_path):
    from core.model.graph import discover_layers, method_availability

    torch.manual_seed(0)
    gn = torchvision.models.resnet18(num_classes=4, norm_layer=lambda c: nn.GroupNorm(32, c))
    with torch.no_grad():
        for m in gn.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    gn.eval()
    path = tmp_path / "gn_resnet18.pth"
    torch.save(gn.state_dict(), path)
    ckpt = load_checkpoint(path)
    assert ckpt.metadata.arch == "resnet18+groupnorm"
    text = " ".join(ckpt.notices)
    assert "GroupNorm" in text and "do not apply" in text and "--arch" in text
    assert "resnet18 (BatchNorm without running statistics)" in text
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ckpt.model(x), gn(x), atol=1e-5)
    found = discover_layers(ckpt.model, x[:1])
    assert not found.layers
    assert not any(ok for ok, _ in method_availability(ckpt.model, found).values())
    # the BatchNorm reading stays one flag away
    bn = load_checkpoint(path, arch="resnet18")
    assert len(bn.model.layer1[0].bn1.__dict__) and bn.model.layer1[0].bn1.running_var is None


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_timm_and_torchvision_models_said_the_same_compute_the_same(libraries, name):
    """SAME_AS_TORCHVISION: no look-alike notice between these."""
    timm = pytest.importorskip("timm")
    from core.model.detect import SAME_AS_TORCHVISION

    assert SAME_AS_TORCHVISION[name] == f"timm/{name}"
    torch.manual_seed(0)
    ours = torchvision.models.get_model(name, num_classes=3).eval()
    theirs = timm.create_model(name, num_classes=3).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_no_fit_names_the_files_class_count(libraries):
    from core.model.architectures import build_on_meta

    state_dict = build_on_meta("resnet50", 1000, 3).state_dict()
    state_dict["head.weight"] = state_dict.pop("fc.weight")  # the head under another name
    state_dict["head.bias"] = state_dict.pop("fc.bias")
    with pytest.raises(ArchitectureMismatch) as info:
        detect_architecture(state_dict)
    message = str(info.value)
    assert "resnet50 (1000 classes, 3 input channels)" in message
    assert "(10 classes" not in message
