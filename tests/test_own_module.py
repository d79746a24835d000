"""A file that carries its own module is used as it is: a pickled nn.Module with trust (never
without), registered or not; a TorchScript archive of an unregistered network converted
(core.io.scripted, tested in test_torchscript_scripted.py)."""

import pytest
import torch
from torch import nn

from core.defense.inspection import Inspection
from core.errors import ArchitectureMismatch, BnpError, UnsafeCheckpointError
from core.io.checkpoint import load_checkpoint
from core.io.export import export_model
from core.model.nets.cifar_resnet import CifarResNet


class TinyCustomNet(nn.Module):
    """An architecture no registry knows (two conv-BN blocks, then a linear head)."""

    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.norm_a = nn.BatchNorm2d(6)
        self.mix = nn.Conv2d(6, 5, 3, padding=1)
        self.norm_b = nn.BatchNorm2d(5)
        self.head = nn.Linear(5, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm_a(self.stem(x)))
        x = torch.relu(self.norm_b(self.mix(x)))
        return self.head(x.mean((2, 3)))


@pytest.fixture
def custom():
    torch.manual_seed(0)
    net = TinyCustomNet()
    with torch.no_grad():
        for bn in (net.norm_a, net.norm_b):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_pickled_unregistered_module_needs_trust(tmp_path, custom):
    path = tmp_path / "custom.pth"
    torch.save(custom, path)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path)


def test_pickled_unregistered_module_is_used_as_it_is(tmp_path, custom):
    path = tmp_path / "custom.pth"
    torch.save(custom, path)
    ckpt = load_checkpoint(path, trust_pickle=True)
    assert type(ckpt.model).__name__ == "TinyCustomNet"
    assert not ckpt.model.training
    assert ckpt.metadata.num_classes == 7  # from a forward pass, not from a registry
    assert ckpt.metadata.in_channels == 3
    assert "TinyCustomNet" in ckpt.metadata.arch
    assert any("own module" in n for n in ckpt.notices)
    assert any("32×32 is the first size tried" in n for n in ckpt.notices)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), custom(x))

    inspection = Inspection(ckpt, device="cpu")
    assert [layer.name for layer in inspection.layers] == ["norm_a", "norm_b"]
    assert [layer.conv for layer in inspection.layers] == ["stem", "mix"]
    clp = inspection.scores("clp")
    assert clp["norm_a"].shape == (6,) and clp["norm_b"].shape == (5,)
    assert all(torch.isfinite(v).all() for v in clp.values())


def test_own_module_exports_weights_not_seed(tmp_path, custom):
    path = tmp_path / "custom.pth"
    torch.save(custom, path)
    ckpt = load_checkpoint(path, trust_pickle=True)
    with pytest.raises(BnpError, match="not registered"):
        export_model(ckpt.model, tmp_path / "out.pth", metadata=ckpt.metadata)
    out = export_model(
        ckpt.model, tmp_path / "out_sd.pth", fmt="state_dict", metadata=ckpt.metadata
    )
    weights = torch.load(out, weights_only=True)
    fresh = TinyCustomNet()
    fresh.load_state_dict(weights, strict=True)
    assert torch.equal(fresh.norm_b.running_var, custom.norm_b.running_var)
    assert "TinyCustomNet" in (tmp_path / "out_sd.pth.bnp.json").read_text()


def test_torchscript_of_unregistered_net_is_used_as_it_is(tmp_path, custom):
    path = tmp_path / "custom.pt"
    torch.jit.save(torch.jit.trace(custom, torch.zeros(1, 3, 32, 32)), path)
    x = torch.rand(2, 3, 32, 32)
    for trust in (False, True):
        ckpt = load_checkpoint(path, trust_pickle=trust)
        assert "TinyCustomNet" in ckpt.metadata.arch and ckpt.metadata.num_classes == 7
        with torch.no_grad():
            assert torch.equal(ckpt.model(x), custom(x))


class DoubledResNet20(CifarResNet):
    """cifar_resnet20's weights with a forward of its own (its logits doubled)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_trusted_module_fitting_a_registered_arch_keeps_its_own_forward(tmp_path):
    from core.model.architectures import build_model

    torch.manual_seed(2)
    registered = build_model("cifar_resnet20", 10, 3).eval()
    own = DoubledResNet20((16, 32, 64), (3, 3, 3), 10, 3).eval()
    own.load_state_dict(registered.state_dict())
    path = tmp_path / "doubled.pth"
    torch.save(own, path)
    ckpt = load_checkpoint(path, trust_pickle=True)
    assert type(ckpt.model).__name__ == "DoubledResNet20"
    assert ckpt.metadata.arch == "cifar_resnet20"  # its weights fit: seed exports reopen so
    assert any("own forward" in n for n in ckpt.notices)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), 2 * registered(x))
    # exported as TorchScript, it keeps this forward: reopened (without trust), the archive's
    # forward is found to differ from the registered one's and is used
    out = export_model(
        ckpt.model, tmp_path / "doubled.pt", fmt="torchscript", metadata=ckpt.metadata
    )
    reopened = load_checkpoint(out)
    assert reopened.metadata.arch == "cifar_resnet20"
    assert any("differs from the registered cifar_resnet20's" in n for n in reopened.notices)
    with torch.no_grad():
        assert torch.allclose(reopened.model(x), 2 * registered(x), rtol=1e-5, atol=1e-6)


def test_trusted_unregistered_module_exported_as_torchscript_reopens_as_it_is(tmp_path, custom):
    path = tmp_path / "custom.pth"
    torch.save(custom, path)
    ckpt = load_checkpoint(path, trust_pickle=True)
    out = export_model(
        ckpt.model, tmp_path / "custom.pt", fmt="torchscript", metadata=ckpt.metadata
    )
    reopened = load_checkpoint(out)  # no trust needed: its graph is converted, not run
    assert reopened.metadata.input_size == ckpt.metadata.input_size
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reopened.model(x), custom(x))


def test_torchscript_resnet20_gives_the_registered_layers_and_scores(tmp_path):
    from core.model.architectures import build_model

    torch.manual_seed(1)
    net = build_model("cifar_resnet20", 10, 3).eval()
    plain = tmp_path / "resnet20.pth"
    torch.save(net.state_dict(), plain)
    scripted = tmp_path / "resnet20_script.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 32, 32)), scripted)
    reference = Inspection(load_checkpoint(plain), device="cpu")
    for trust in (False, True):
        ckpt = load_checkpoint(scripted, trust_pickle=trust)
        assert ckpt.format == "torchscript" and ckpt.metadata.arch == "cifar_resnet20"
        inspection = Inspection(ckpt, device="cpu")
        assert [(x.name, x.conv) for x in inspection.layers] == [
            (x.name, x.conv) for x in reference.layers
        ]
        for name, score in reference.scores("clp").items():
            assert torch.equal(inspection.scores("clp")[name], score)


def test_module_wrapped_in_a_training_dict_is_used_as_it_is(tmp_path, custom):
    path = tmp_path / "train_ckpt.pth"
    torch.save({"model": custom, "epoch": 3, "meta": {"input_size": [24, 24]}}, path)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, trust_pickle=True)
    assert type(ckpt.model).__name__ == "TinyCustomNet"
    assert ckpt.metadata.input_size == (24, 24) and ckpt.metadata.num_classes == 7
    assert not any("first size tried" in n for n in ckpt.notices)


def test_unregistered_weights_without_a_module_still_fail_with_trust(tmp_path, custom):
    path = tmp_path / "weights.pth"
    torch.save({"model": custom.state_dict(), "epoch": 3}, path)
    with pytest.raises(ArchitectureMismatch, match="no module of its own"):
        load_checkpoint(path, trust_pickle=True)
