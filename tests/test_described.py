"""`bnp info` of a layout it described before answers without building the model
(core.model.described), with the same output; everything else still gets the model, built once."""

import copy
import threading

import pytest
import torch

from core.cli import main as bnp
from core.io.checkpoint import load_checkpoint
from core.model import architectures, described
from core.model.architectures import build_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "bnp-inspector" / "described"


def _info(capsys, *args) -> tuple[str, str]:
    assert bnp(["info", *map(str, args)]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def _no_build(monkeypatch):
    def fail(*_):
        raise AssertionError("the model was built")

    monkeypatch.setattr(architectures, "load_detected", fail)


def test_a_described_layout_answers_unbuilt_with_the_same_output(
    tmp_path, cache, capsys, monkeypatch
):
    path = tmp_path / "r20.pth"
    torch.save(build_model("cifar_resnet20", 10, 3).state_dict(), path)
    first = _info(capsys, path)
    assert "21 BatchNorm layers" in first[0] and list(cache.glob("*.json"))
    _no_build(monkeypatch)
    assert _info(capsys, path) == first
    other = tmp_path / "other.pth"  # another file, same layout: still not built
    torch.save(build_model("cifar_resnet20", 10, 3).state_dict(), other)
    out, err = _info(capsys, other)
    assert out == first[0].replace(str(path), str(other)) and err == first[1]


def test_a_new_input_size_or_layout_is_built_and_described(tmp_path, cache, capsys, monkeypatch):
    path = tmp_path / "r20.pth"
    torch.save(build_model("cifar_resnet20", 10, 3).state_dict(), path)
    _info(capsys, path)
    sized = _info(capsys, path, "--input-size", "40", "40")  # a new size: built again
    five = tmp_path / "r20_5.pth"
    torch.save(build_model("cifar_resnet20", 5, 3).state_dict(), five)
    classes = _info(capsys, five)
    _no_build(monkeypatch)
    assert _info(capsys, path, "--input-size", "40", "40") == sized
    assert _info(capsys, five) == classes


def test_weight_warnings_come_from_the_files_tensors(tmp_path, cache, capsys, monkeypatch):
    clean = tmp_path / "clean.pth"
    torch.save(build_model("cifar_resnet20", 10, 3).state_dict(), clean)
    state = build_model("cifar_resnet20", 10, 3).state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    state["bn1.running_var"][:2] = -1.0
    damaged = tmp_path / "damaged.pth"
    torch.save(state, damaged)
    built = _info(capsys, damaged, "--std", "0.0001")  # nothing described yet: built
    assert "NaN" in built[1] and "running_var ≤ 0 in 2 of 16" in built[1] and "--std" in built[1]
    _info(capsys, clean)
    _no_build(monkeypatch)
    assert _info(capsys, damaged, "--std", "0.0001") == built


def test_a_damaged_cache_file_is_ignored(tmp_path, cache, capsys):
    path = tmp_path / "r20.pth"
    torch.save(build_model("cifar_resnet20", 10, 3).state_dict(), path)
    first = _info(capsys, path)
    for file in cache.glob("*.json"):
        file.write_text('{"format": 1, "tensors": ["nope"], "norms": [], "specs": {"3x32x32": []}}')
    assert _info(capsys, path) == first  # a name the file lacks: built, described again
    for file in cache.glob("*.json"):
        file.write_text("not json")
    assert _info(capsys, path) == first


def test_the_model_is_built_once_on_first_use_by_any_thread(tmp_path, cache, capsys, monkeypatch):
    path = tmp_path / "r20.pth"
    model = build_model("cifar_resnet20", 10, 3).eval()
    torch.save(model.state_dict(), path)
    _info(capsys, path)
    builds = []
    original = architectures.load_detected

    def counted(*args):
        builds.append(1)
        return original(*args)

    monkeypatch.setattr(architectures, "load_detected", counted)
    ckpt = load_checkpoint(path)
    assert not builds  # described before: not built by loading
    got = []
    threads = [threading.Thread(target=lambda: got.append(ckpt.model)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and all(m is got[0] for m in got) and not got[0].training
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(got[0](x), model(x))
    copied = copy.deepcopy(load_checkpoint(path))  # a deferred model is copied built
    assert torch.equal(copied.model(x), model(x))


def test_an_undescribed_layout_is_built_when_loaded(tmp_path, cache):
    path = tmp_path / "r20.pth"
    torch.save(build_model("cifar_resnet20", 10, 3).state_dict(), path)
    ckpt = load_checkpoint(path)
    assert ckpt.__dict__["_model"].built  # its load errors are said when it is opened
    assert not list(cache.glob("*.json")) or all(
        "shapes" in f.name or "stem" in f.name for f in cache.glob("*.json")
    )
    assert described.recall(ckpt, None) is None


def test_kept_values_are_read_back_and_damaged_ones_computed_again(cache):
    calls = []

    def compute():
        calls.append(1)
        return {"fc.weight": [10, 64]}

    def valid(value):
        return isinstance(value, dict)

    assert described.memo("shapes", ("x", 10, 3), compute, valid) == {"fc.weight": [10, 64]}
    assert described.memo("shapes", ("x", 10, 3), compute, valid) == {"fc.weight": [10, 64]}
    assert len(calls) == 1 and len(list(cache.glob("shapes-*.json"))) == 1
    for damage in ('{"value": 5}', "not json"):
        next(cache.glob("shapes-*.json")).write_text(damage)
        assert described.memo("shapes", ("x", 10, 3), compute, valid) == {"fc.weight": [10, 64]}
    assert len(calls) == 3
    described.memo("shapes", ("x", 5, 3), compute, valid)  # other arguments: another value
    assert len(calls) == 4
