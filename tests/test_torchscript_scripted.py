"""A TorchScript archive of an unregistered network is used as it is (core.io.scripted): its graph
converted into real Conv/BatchNorm/Linear modules and allowed tensor operations, without
running the file's code; archives using anything else are refused with the op named."""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.defense.inspection import Inspection
from core.errors import ArchitectureMismatch, CheckpointError, UnsafeCheckpointError
from core.io.checkpoint import load_checkpoint
from core.io.export import export_model
from core.io.scripted import (
    Refused,
    build_module,
    convert_file,
    forward_difference,
    script_to_program,
)
from core.model.masks import PruneMask
from core.model.nets.cifar_resnet import CifarResNet, cifar_resnet20
from tests import corpus_checkpoints as corpus

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.* are deprecated


class Block(nn.Module):
    """A residual block with in-place ops (relu_, +=) as torchvision's resnets have."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += x
        return self.act(out)


class OddNet(nn.Module):
    """No registry knows it: a stem, a residual block, dropout, a flatten-and-linear head."""

    def __init__(self, channels: int = 3, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.block = Block(6)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.block(x)
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.drop(x))


def _randomised(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture
def odd():
    torch.manual_seed(3)
    return _randomised(OddNet())


def _save(module: nn.Module, path, how: str, example: torch.Tensor):
    scripted = torch.jit.script(module) if how == "script" else torch.jit.trace(module, example)
    torch.jit.save(scripted, str(path))
    return torch.jit.load(str(path))  # the test made this file: running it here is safe


@pytest.mark.parametrize("how", ["script", "trace"])
def test_converted_module_gives_the_archives_outputs(tmp_path, odd, how):
    original = _save(odd, tmp_path / "odd.pt", how, torch.zeros(1, 3, 16, 16))
    program, tensors = script_to_program(original)
    module = build_module(json.loads(json.dumps(program)), tensors)  # as it crosses processes
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(module(x), original(x))
    kinds = {name: type(m).__name__ for name, m in module.named_modules() if name}
    assert kinds["stem.0"] == "Conv2d" and kinds["stem.1"] == "BatchNorm2d"
    assert kinds["block.conv"] == "Conv2d" and kinds["block.bn"] == "BatchNorm2d"
    assert kinds["head"] == "Linear"


def test_unregistered_torchscript_loads_as_it_is(tmp_path, odd):
    path = tmp_path / "odd.pt"
    original = _save(odd, path, "script", torch.zeros(1, 3, 16, 16))
    for trust in (False, True):
        ckpt = load_checkpoint(path, trust_pickle=trust)
        assert ckpt.format == "torchscript"
        assert "OddNet" in ckpt.metadata.arch and ckpt.metadata.num_classes == 5
        assert any("converted into plain layers" in n for n in ckpt.notices)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), original(x))
    inspection = Inspection(ckpt, device="cpu")
    assert [(x.name, x.conv) for x in inspection.layers] == [
        ("stem.1", "stem.0"),
        ("block.bn", "block.conv"),
    ]
    clp = inspection.scores("clp")
    assert clp["stem.1"].shape == (6,) and all(torch.isfinite(v).all() for v in clp.values())


def test_one_channel_archive_and_its_export_keep_channels_and_name(tmp_path):
    net = _randomised(OddNet(channels=1))
    path = tmp_path / "gray.pt"
    _save(net, path, "script", torch.zeros(1, 1, 28, 28))
    ckpt = load_checkpoint(path)
    assert ckpt.metadata.in_channels == 1 and ckpt.metadata.arch.startswith("OddNet ")
    out = export_model(ckpt.model, tmp_path / "again.pt", fmt="torchscript", metadata=ckpt.metadata)
    again = load_checkpoint(out)
    assert again.metadata.in_channels == 1 and again.metadata.arch.startswith("OddNet ")
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again.model(x), net(x))


def test_torchscript_export_reopens_with_the_same_predictions(tmp_path, odd):
    path = tmp_path / "odd.pt"
    _save(odd, path, "trace", torch.zeros(1, 3, 32, 32))
    ckpt = load_checkpoint(path)
    mask = PruneMask.from_flags(
        {"stem.1": torch.tensor([1, 0, 0, 1, 0, 0]), "block.bn": torch.tensor([0, 0, 1, 0, 0, 0])},
        zero_beta=True,
    )
    out = export_model(
        ckpt.model, tmp_path / "pruned.pt", mask=mask, fmt="torchscript", metadata=ckpt.metadata
    )
    reopened = load_checkpoint(out)
    assert reopened.format == "torchscript" and reopened.metadata.input_size == (32, 32)
    pruned = build_module(*script_to_program(torch.jit.load(str(path))))
    mask.apply_(pruned)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reopened.model(x), pruned(x))
        assert not torch.equal(reopened.model(x), ckpt.model(x))  # the pruning travelled
    assert float(reopened.model.get_submodule("stem.1").weight.detach()[0]) == 0.0


def test_state_dict_export_of_unregistered_net_says_it_cannot_reopen(tmp_path, odd):
    path = tmp_path / "odd.pt"
    _save(odd, path, "script", torch.zeros(1, 3, 16, 16))
    ckpt = load_checkpoint(path)
    out = export_model(ckpt.model, tmp_path / "w.pth", fmt="state_dict", metadata=ckpt.metadata)
    with pytest.raises(ArchitectureMismatch):
        load_checkpoint(out)


class ReadsAFile(nn.Module):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = torch.from_file(self.target, shared=True, size=64)
        return self.bn(x).mean((2, 3)) + extra.sum()


def test_archive_calling_an_op_off_the_list_is_refused_and_writes_nothing(tmp_path):
    target = tmp_path / "written_by_the_model"
    path = tmp_path / "reader.pt"
    torch.jit.save(torch.jit.script(ReadsAFile(str(target)).eval()), str(path))
    for trust in (False, True):
        with pytest.raises(ArchitectureMismatch, match=r"aten::from_file"):
            load_checkpoint(path, trust_pickle=trust)
    assert not target.exists()


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)).mean((2, 3))
        if bool(x.sum() > 0):
            return y
        return -y


def test_data_dependent_control_flow_is_refused(tmp_path):
    path = tmp_path / "branches.pt"
    torch.jit.save(torch.jit.script(Branches().eval()), str(path))
    with pytest.raises(ArchitectureMismatch, match="data-dependent"):
        load_checkpoint(path)
    with pytest.raises(Refused, match="prim::If"):
        script_to_program(torch.jit.load(str(path)))


def test_archive_with_setstate_is_not_converted_without_trust(tmp_path):
    marker = tmp_path / "marker"
    path = corpus.torchscript_writing_a_file(tmp_path, marker)
    with pytest.raises(UnsafeCheckpointError, match="__setstate__"):
        load_checkpoint(path)
    # the converter's own check, should it ever be reached without the first read's
    with pytest.raises(UnsafeCheckpointError, match="__setstate__"):
        convert_file(str(path), False, 2**30)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "densenet121"])
def test_torchvision_scripted_nets_convert(name, one_torch_thread):
    import torchvision

    net = _randomised(getattr(torchvision.models, name)(num_classes=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
    module = build_module(*script_to_program(scripted))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(module(x), scripted(x))
    bns = [n for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


class Hoards(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.zeros([1 << 20, 1 << 16])  # 256 GiB of float32
        return self.bn(x).mean((2, 3)) + big.sum()


def test_converted_graph_that_allocates_without_bound_stops_in_the_reader(tmp_path):
    path = tmp_path / "hoards.pt"
    torch.jit.save(torch.jit.script(Hoards().eval()), str(path))
    with pytest.raises(CheckpointError, match="asks for more memory than allowed"):
        load_checkpoint(path, memory_limit=2**30)


class LayerNormed(nn.Module):
    """A BatchNorm net with a LayerNorm head: the LayerNorm must show as a skipped layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.bn(self.conv(x)).mean((2, 3))))


def test_other_norms_become_modules_listed_as_skipped(tmp_path):
    from core.model.graph import discover_layers

    net = LayerNormed().eval()
    original = _save(net, tmp_path / "ln.pt", "script", torch.zeros(1, 3, 16, 16))
    module = build_module(*script_to_program(original))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(module(x), original(x))
    found = discover_layers(module, x[:1])
    assert [layer.name for layer in found.layers] == ["bn"]
    assert [(s.name, s.kind) for s in found.skipped] == [("norm", "LayerNorm")]


def test_command_line_info_and_clp_defend_on_an_unregistered_archive(tmp_path, odd, capsys):
    from core.cli import main as cli_main

    path = tmp_path / "odd.pt"
    _save(odd, path, "script", torch.zeros(1, 3, 16, 16))
    assert cli_main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "OddNet (the file's own module, not registered)" in text
    assert "stem.1" in text and "block.bn" in text and "CLP  applies" in text
    out = tmp_path / "repaired.pt"
    args = ["defend", str(path), "--method", "clp", "-k", "0.5", "--out", str(out)]
    assert cli_main([*args, "--format", "torchscript"]) == 0
    printed = capsys.readouterr().out
    reopened = load_checkpoint(out)
    ckpt = load_checkpoint(path)
    x = torch.rand(2, 3, 32, 32)
    (row,) = [line.split() for line in printed.splitlines() if line.startswith("clp")]
    pruned = int(row[2])
    assert pruned > 0
    with torch.no_grad():
        assert not torch.equal(reopened.model(x), ckpt.model(x))  # the pruning travelled
    zeroed = sum(
        int((m.weight == 0).sum())
        for m in reopened.model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )
    assert zeroed == pruned


# ---- archives whose weights fit a registered architecture: whose forward is used? -------------


class SameForward(CifarResNet):
    """cifar_resnet20's forward, scriptable (no layer4 branch): the registered one's outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class Doubled(CifarResNet):
    """cifar_resnet20's weights with its own forward: twice the logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return 2 * self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class SkipsABlock(CifarResNet):
    """cifar_resnet20's weights; its forward leaves out the last block of the last stage."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3[1](self.layer3[0](self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class BranchesOnInput(CifarResNet):
    """cifar_resnet20's weights; a data-dependent branch the converter refuses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.linear(
            F.adaptive_avg_pool2d(self.layer3(self.layer2(self.layer1(out))), 1).flatten(1)
        )
        if bool(x.mean() > 10.0):
            return -out
        return out


def _resnet20(cls=CifarResNet) -> nn.Module:
    torch.manual_seed(5)
    net = _randomised(cifar_resnet20())
    other = cls((16, 32, 64), (3, 3, 3), 10, 3)
    other.load_state_dict(net.state_dict())
    return other.eval()


def _script(module: nn.Module, path) -> torch.jit.ScriptModule:
    torch.jit.save(torch.jit.script(module), str(path))
    return torch.jit.load(str(path))  # the test made this file: running it here is safe


@pytest.mark.parametrize("how", ["trace", "script"])
def test_registered_archive_with_the_registered_forward_loads_as_registered(tmp_path, how):
    net = _resnet20()
    path = tmp_path / "same.pt"
    if how == "trace":
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 32, 32)), str(path))
    else:
        _script(_resnet20(SameForward), path)
    ckpt = load_checkpoint(path)
    assert ckpt.metadata.arch == "cifar_resnet20" and type(ckpt.model) is CifarResNet
    assert ckpt.notices == []
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), net(x))


@pytest.mark.parametrize("cls", [Doubled, SkipsABlock])
def test_registered_weights_with_their_own_forward_keep_it(tmp_path, cls):
    path = tmp_path / "own.pt"
    scripted = _script(_resnet20(cls), path)
    ckpt = load_checkpoint(path)
    assert ckpt.format == "torchscript" and ckpt.metadata.arch == "cifar_resnet20"
    assert ckpt.metadata.input_size == (32, 32) and ckpt.metadata.num_classes == 10
    assert type(ckpt.model) is not CifarResNet
    (notice,) = ckpt.notices
    assert "differs from the registered cifar_resnet20's" in notice and "own is used" in notice
    x = torch.rand(3, 3, 32, 32)
    registered = _resnet20()
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), scripted(x))
        assert not torch.allclose(ckpt.model(x), registered(x))
    layers = [layer.name for layer in Inspection(ckpt, device="cpu").layers]
    assert "bn1" in layers and "layer1.0.bn1" in layers
    assert ("layer3.2.bn2" in layers) == (cls is Doubled)  # a skipped block has no layers


def test_exports_of_an_archive_with_its_own_forward(tmp_path):
    path = tmp_path / "doubled.pt"
    scripted = _script(_resnet20(Doubled), path)
    ckpt = load_checkpoint(path)
    x = torch.rand(2, 3, 32, 32)
    # TorchScript keeps the archive's forward: reopened, it is found different again
    out = export_model(ckpt.model, tmp_path / "e.pt", fmt="torchscript", metadata=ckpt.metadata)
    again = load_checkpoint(out)
    assert any("differs from the registered cifar_resnet20's" in n for n in again.notices)
    # state_dict reopens as the registered architecture, with its forward, as the notice said
    assert "state_dict" in ckpt.notices[0] and "reopen as cifar_resnet20" in ckpt.notices[0]
    sd = export_model(ckpt.model, tmp_path / "w.pth", fmt="state_dict", metadata=ckpt.metadata)
    weights = load_checkpoint(sd)
    assert type(weights.model) is CifarResNet and weights.notices == []
    with torch.no_grad():
        assert torch.allclose(again.model(x), scripted(x), rtol=1e-5, atol=1e-6)
        assert torch.allclose(2 * weights.model(x), scripted(x), rtol=1e-5, atol=1e-6)


def test_registered_archive_whose_forward_cannot_be_converted_says_so(tmp_path):
    path = tmp_path / "branches.pt"
    _script(_resnet20(BranchesOnInput), path)
    ckpt = load_checkpoint(path)
    assert type(ckpt.model) is CifarResNet and ckpt.metadata.arch == "cifar_resnet20"
    (notice,) = ckpt.notices
    assert "could not be checked" in notice and "data-dependent" in notice


def test_probe_comparison_tolerates_rounding_only():
    net = _resnet20()
    assert forward_difference(net, net, 3, (8, 8)) is None
    doubled = _resnet20(Doubled)
    assert "differ by up to" in forward_difference(net, doubled, 3, (8, 8))


@pytest.mark.slow
def test_torchvision_resnet18_archive_that_normalises_its_input_keeps_its_forward(tmp_path):
    from torchvision.models.resnet import BasicBlock, ResNet

    class Normalises(ResNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._forward_impl((x - 0.5) / 0.25)

    torch.manual_seed(1)
    net = Normalises(BasicBlock, [2, 2, 2, 2], num_classes=4).eval()
    path = tmp_path / "normalises.pt"
    meta = {"bnp_meta.json": json.dumps({"input_size": [32, 32]})}  # a tiny probe
    scripted = torch.jit.script(net)
    torch.jit.save(scripted, str(path), _extra_files=meta)
    ckpt = load_checkpoint(path)
    assert ckpt.metadata.arch == "resnet18" and ckpt.metadata.input_size == (32, 32)
    assert any("differs from the registered resnet18's" in n for n in ckpt.notices)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), scripted(x))
