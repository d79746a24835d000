"""--model-code FILE.py:CALLABLE: the analyst's own code builds the model, the file's weights
load into it strictly, the report names it; it is never inferred from the file."""

import textwrap

import pytest
import torch

from core.cli import main
from core.errors import ArchitectureMismatch, BnpError
from core.io.checkpoint import load_checkpoint

CODE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Odd(nn.Module):  # no registry holds this
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 6, 3, padding=1)
            self.norm = nn.BatchNorm2d(6)
            self.head = nn.Linear(6, 4)

        def forward(self, x):
            x = torch.relu(self.norm(self.stem(x)))
            return self.head(x.mean((2, 3))) * 2

    def build():
        return Odd()

    def not_a_model():
        return 3
    """
)


@pytest.fixture
def files(tmp_path):
    code = tmp_path / "my_nets.py"
    code.write_text(CODE)
    namespace: dict = {}
    exec(compile(CODE, str(code), "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["build"]().eval()
    weights = tmp_path / "odd.pth"
    torch.save(model.state_dict(), weights)
    return code, weights, model


def test_the_users_code_builds_the_model(files):
    code, weights, original = files
    with pytest.raises(ArchitectureMismatch):  # never inferred: without the flag, refused
        load_checkpoint(weights)
    ckpt = load_checkpoint(weights, model_code=f"{code}:build")
    assert ckpt.metadata.arch == "build from my_nets.py (your model code)"
    assert ckpt.metadata.num_classes == 4
    assert any("built by your code" in n and str(code) in n for n in ckpt.notices)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), original(x))


def test_weights_that_do_not_fit_are_said_in_one_line(files, tmp_path):
    code, _, original = files
    state = original.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["head.bias"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(BnpError, match=r"1 missing key\(s\): head.bias; 1 unexpected key"):
        load_checkpoint(path, model_code=f"{code}:build")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nowhere.py:build", "no such file"),
        ("{code}", "FILE.py:CALLABLE"),
        ("{code}:missing", "has no missing"),
        ("{code}:not_a_model", "returned a int"),
    ],
)
def test_bad_model_code_is_one_line(files, spec, message):
    code, weights, _ = files
    with pytest.raises(BnpError, match=message):
        load_checkpoint(weights, model_code=spec.format(code=code))


def test_cli_model_code_named_in_the_report(files, capsys):
    code, weights, _ = files
    assert main(["info", str(weights), "--model-code", f"{code}:build"]) == 0
    out = capsys.readouterr().out
    assert "architecture  build from my_nets.py (your model code)" in out
    assert main(["info", str(weights), "--model-code", f"{code}:build", "--arch", "resnet18"]) == 2
