"""Checkpoint loading: every accepted format, metadata, and refusal of unsafe pickles."""

import argparse
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from core.errors import ArchitectureMismatch, CheckpointError, UnsafeCheckpointError
from core.io.checkpoint import load_checkpoint
from core.io.metadata import LoadedCheckpoint, ModelMetadata
from core.model.architectures import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("cifar_resnet20", 4, 3).eval()


@pytest.fixture
def state_dict(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_model(ckpt: LoadedCheckpoint, model, in_channels=3):
    assert not ckpt.model.training
    assert ckpt.metadata.arch == "cifar_resnet20"
    assert ckpt.metadata.num_classes == 4
    assert ckpt.metadata.in_channels == in_channels
    x = torch.rand(2, in_channels, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x), model(x), rtol=0, atol=0)


def test_seed_format(tmp_path, model, state_dict):
    trigger = torch.rand(3, 3, 3)
    path = tmp_path / "resnet20_badnets_3_0.1_0.pth"
    torch.save({"state_dict": state_dict, "trigger": trigger}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.format == "seed" and ckpt.path == path
    assert torch.equal(ckpt.trigger, trigger)
    assert ckpt.metadata.input_size == (32, 32)
    assert ckpt.metadata.mean is None and ckpt.metadata.std is None
    assert set(ckpt.state_dict) == set(state_dict)
    assert_same_model(ckpt, model)


def test_seed_format_with_our_metadata(tmp_path, model, state_dict):
    meta = ModelMetadata(
        "cifar_resnet20", 4, 3, (28, 28), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
        target_label=0, attack={"kind": "badnets", "size": 3}, dataset="cifar10",
        class_names=["a", "b", "c", "d"], extra={"note": "x"},
    )  # fmt: skip
    path = tmp_path / "ours.pth"
    torch.save(
        {"state_dict": state_dict, "trigger": torch.zeros(3, 3, 3), "meta": meta.to_dict()}, path
    )
    ckpt = load_checkpoint(path)
    assert ckpt.format == "seed"
    assert ckpt.metadata == meta
    assert_same_model(ckpt, model)


def test_metadata_round_trips_through_json():
    meta = ModelMetadata("vgg16_bn_cifar", 10, 1, (28, 28), mean=(0.1,), std=(0.3,))
    again = ModelMetadata.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert again == meta
    with pytest.raises(CheckpointError, match="lacks arch"):
        ModelMetadata.from_dict({"num_classes": 3, "in_channels": 3, "input_size": 32})


@pytest.mark.parametrize(
    "wrap, fmt",
    [
        (lambda sd: sd, "state_dict"),
        (lambda sd: {"model": sd}, "wrapped:model"),
        (lambda sd: {"net": sd, "acc": 91.5, "epoch": 199}, "wrapped:net"),
        (lambda sd: {"state_dict": sd, "epoch": 3, "optimizer": {"lr": 0.1}}, "wrapped:state_dict"),
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "state_dict"),
        (lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}, "wrapped:model"),
    ],
    ids=["bare", "model", "net", "state_dict", "module-prefix", "model-module-prefix"],
)
def test_wrapper_formats(tmp_path, model, state_dict, wrap, fmt):
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(state_dict), path)
    ckpt = load_checkpoint(path)
    assert ckpt.format == fmt and ckpt.trigger is None
    assert not any(k.startswith("module.") for k in ckpt.state_dict)
    assert_same_model(ckpt, model)


def test_legacy_non_zip_torch_save(tmp_path, model, state_dict):
    path = tmp_path / "legacy.pth"
    torch.save(state_dict, path, _use_new_zipfile_serialization=False)
    assert_same_model(load_checkpoint(path), model)


def test_one_channel_model(tmp_path):
    model = build_model("cifar_resnet20", 4, 1).eval()
    path = tmp_path / "mnist.pth"
    torch.save({"state_dict": model.state_dict(), "trigger": torch.ones(1, 3, 3)}, path)
    assert_same_model(load_checkpoint(path), model, in_channels=1)


def test_safetensors_with_metadata(tmp_path, model, state_dict):
    meta = ModelMetadata("cifar_resnet20", 4, 3, (32, 32), target_label=2, dataset="cifar10")
    path = tmp_path / "model.safetensors"
    save_file(state_dict, str(path), metadata={"bnp_meta": json.dumps(meta.to_dict())})
    ckpt = load_checkpoint(path)
    assert ckpt.format == "safetensors"
    assert ckpt.metadata == meta
    assert_same_model(ckpt, model)
    # sniffed by content when the name does not say it
    renamed = path.rename(tmp_path / "model.bin")
    assert load_checkpoint(renamed).format == "safetensors"


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_torchscript_archive(tmp_path, model):
    traced = torch.jit.trace(model, torch.rand(1, 3, 32, 32))
    path = tmp_path / "scripted.pt"
    meta = ModelMetadata("cifar_resnet20", 4, 3, (32, 32), target_label=1)
    torch.jit.save(traced, str(path), _extra_files={"bnp_meta.json": json.dumps(meta.to_dict())})
    ckpt = load_checkpoint(path)
    assert ckpt.format == "torchscript"
    assert ckpt.metadata.target_label == 1
    assert isinstance(ckpt.model, torch.nn.Module) and not isinstance(
        ckpt.model, torch.jit.ScriptModule
    )
    assert_same_model(ckpt, model)


class Malicious:
    """Unpickling this creates the file at `target`."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused(tmp_path, state_dict):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": state_dict, "trigger": Malicious(target)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "arbitrary code" in message and "--trust-pickle" in message
    assert "trust_pickle=True" in message
    assert "io.open" in message  # names the offending global (open pickles as io.open)
    assert "\x1b" not in message and "Traceback" not in message
    assert not target.exists()


def test_malicious_plain_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pkl"
    with path.open("wb") as f:
        pickle.dump({"x": Malicious(target)}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="--trust-pickle"):
        load_checkpoint(path)
    assert not target.exists()


def test_non_tensor_objects_need_trust(tmp_path, state_dict):
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": state_dict, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        load_checkpoint(path)


def test_trust_pickle_loads_a_full_module(tmp_path, model):
    path = tmp_path / "full_model.pth"
    torch.save(model, path)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, trust_pickle=True)
    assert ckpt.format == "pickled-module"
    assert_same_model(ckpt, model)


def test_explicit_arch_must_fit(tmp_path, state_dict):
    path = tmp_path / "ckpt.pth"
    torch.save(state_dict, path)
    assert load_checkpoint(path, arch="cifar_resnet20").metadata.arch == "cifar_resnet20"
    with pytest.raises(ArchitectureMismatch, match="cifar_resnet32"):
        load_checkpoint(path, arch="cifar_resnet32")


def test_missing_key_names_candidates(tmp_path, state_dict):
    del state_dict["layer2.1.bn1.running_mean"]
    path = tmp_path / "broken.pth"
    torch.save(state_dict, path)
    with pytest.raises(ArchitectureMismatch, match="cifar_resnet20.*layer2.1.bn1.running_mean"):
        load_checkpoint(path)


def test_not_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="No such file"):
        load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pth")
    (tmp_path / "notes.pth").write_text("hello world\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as info:
        load_checkpoint(tmp_path / "notes.pth")
    assert not isinstance(info.value, UnsafeCheckpointError)
    torch.save({}, tmp_path / "empty_dict.pth")
    with pytest.raises(CheckpointError, match="empty dict"):
        load_checkpoint(tmp_path / "empty_dict.pth")
    torch.save({"epoch": 3, "acc": 0.5}, tmp_path / "no_weights.pth")
    with pytest.raises(CheckpointError, match="no model weights"):
        load_checkpoint(tmp_path / "no_weights.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="holds a Tensor"):
        load_checkpoint(tmp_path / "tensor.pth")


def test_a_file_that_is_no_pickle_is_not_called_unsafe(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint") as info:
        load_checkpoint(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
