"""Every export format keeps what the session knew, so reopening reproduces its predictions."""

import pytest
import torch

from core.data.triggers import BlendTrigger
from core.defense.evaluation import predict
from core.defense.inspection import Inspection
from core.io.checkpoint import load_checkpoint
from core.io.export import export_model, session_metadata
from core.model.architectures import build_model


@pytest.fixture
def session(tmp_path):
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", 10, 3).eval()
    for m in model.modules():  # non-trivial statistics so the normalisation matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)  # a bare state_dict: the file knows nothing else
    inspection = Inspection(load_checkpoint(path), device="cpu")
    inspection.set_spec(size=(28, 28), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    inspection.target = 3
    inspection.trigger = BlendTrigger(torch.rand(3, 28, 28), alpha=0.15)
    mask = inspection.mask({"clp": 1.0})
    assert mask.count() > 0
    return inspection, mask, tmp_path


@pytest.mark.parametrize("fmt", ["seed", "state_dict", "safetensors"])
def test_reopened_export_reproduces_the_preview(session, fmt):
    inspection, mask, tmp_path = session
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    preview = predict(inspection.model, images, inspection.spec, mask=mask)
    preview_bd = predict(
        inspection.model, images, inspection.spec, mask=mask, trigger=inspection.trigger
    )
    out = tmp_path / f"pruned_{fmt}.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    export_model(inspection.model, out, mask=mask, fmt=fmt, metadata=session_metadata(inspection))
    if fmt == "state_dict":
        assert (tmp_path / f"{out.name}.bnp.json").is_file()
    reopened = Inspection(load_checkpoint(out), device="cpu")
    assert reopened.spec == inspection.spec
    assert reopened.target == 3
    assert reopened.trigger.to_dict() == inspection.trigger.to_dict()
    assert reopened.ckpt.metadata.arch == "cifar_resnet20"
    assert torch.equal(predict(reopened.model, images, reopened.spec), preview)
    assert torch.equal(
        predict(reopened.model, images, reopened.spec, trigger=reopened.trigger), preview_bd
    )


def test_lightning_prefix_is_recognised(tmp_path):
    model = build_model("cifar_resnet20", 10, 3)
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "epoch": 3, "global_step": 100}, path)  # fmt: skip
    assert load_checkpoint(path).metadata.arch == "cifar_resnet20"
