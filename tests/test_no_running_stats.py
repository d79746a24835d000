"""A checkpoint whose BatchNorms carry no running statistics loads; BNP says it cannot apply."""

import pytest
import torch
from torch import nn

from core.data.images import ImageSet
from core.defense.inspection import Inspection
from core.defense.scores import clp_scores
from core.errors import BnpError
from core.io.checkpoint import load_checkpoint
from core.model.architectures import build_model
from core.model.graph import discover_layers, method_availability


@pytest.fixture
def no_stats_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", 10, 3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # as saved from track_running_stats=False layers
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
            nn.init.uniform_(m.weight, 0.5, 1.5)
    path = tmp_path / "nostats.pth"
    torch.save(model.state_dict(), path)
    assert not any("running" in k for k in model.state_dict())
    return path, model.eval()


def test_loads_with_a_notice(no_stats_file):
    path, reference = no_stats_file
    ckpt = load_checkpoint(path)
    assert ckpt.metadata.arch == "cifar_resnet20"
    assert any("no running statistics" in n and "BNP is unavailable" in n for n in ckpt.notices)
    bns = [m for m in ckpt.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.running_var is None for m in bns)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():  # the model normalises with batch statistics, as the file defines
        assert torch.equal(ckpt.model(x), reference(x))


def test_methods_say_what_applies(no_stats_file):
    ckpt = load_checkpoint(no_stats_file[0])
    found = discover_layers(ckpt.model, torch.zeros(1, 3, 32, 32))
    available = method_availability(ckpt.model, found)
    assert available["bnp"][0] is False and "running statistics" in available["bnp"][1]
    assert available["ep"][0] and available["clp"][0] and "v_c = 1" in available["clp"][1]


def test_clp_uses_unit_variance_and_bnp_is_refused(no_stats_file):
    ckpt = load_checkpoint(no_stats_file[0])
    inspection = Inspection(ckpt, device="cpu")
    layer = inspection.layers[0]
    conv = dict(ckpt.model.named_modules())[layer.conv]
    bn = dict(ckpt.model.named_modules())[layer.name]
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(2).double(), ord=2)
    expected = sigma * bn.weight.detach().double().abs()  # |γ_c / sqrt(1)|
    assert torch.allclose(clp_scores(ckpt.model, inspection.layers)[layer.name], expected)
    data = ImageSet(torch.rand(8, 3, 32, 32), torch.arange(8) % 10)
    inspection.collect(data, data)
    assert set(inspection.scores("ep")) == {layer.name for layer in inspection.layers}
    with pytest.raises(BnpError, match="BNP is unavailable"):
        inspection.scores("bnp")
