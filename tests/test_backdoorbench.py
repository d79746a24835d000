"""BackdoorBench result files, written here in their exact layout, load without running code."""

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import UnsafeCheckpointError
from core.io.checkpoint import load_checkpoint
from core.model.architectures import build_model


def _bd_state(record: Path, folder: str, n_total: int, poisoned: list[int], target: int):
    """The state `prepro_cls_DatasetBD_v2.retrieve_state()` returns, images saved to disk as
    BackdoorBench does (`<save_path>/<folder>/<true label>/<index>.png`)."""
    rng = np.random.default_rng(0)
    indicator = np.zeros(n_total)
    data_dict = {}
    for index in np.arange(n_total):  # numpy int64 keys, as BackdoorBench iterates them
        if int(index) not in poisoned:
            continue
        label = int(index) % 3
        sub = record / folder / str(label)
        sub.mkdir(parents=True, exist_ok=True)
        png = sub / f"{index}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(png)
        # BackdoorBench stores the path it wrote, relative to where the attack ran
        data_dict[index] = {"path": f"./record/badnet_demo/{folder}/{label}/{index}.png",
                            "other_info": [target, label]}  # fmt: skip
        indicator[index] = 1
    return {
        "bd_data_container": {
            "save_folder_path": f"./record/badnet_demo/{folder}",
            "data_dict": data_dict,
            "save_file_format": ".png",
        },
        "getitem_all": True,
        "getitem_all_switch": False,
        "original_index_array": np.array(poisoned),  # bd_test is subset to the poisoned ones
        "poison_indicator": indicator,
        "save_folder_path": f"./record/badnet_demo/{folder}",
    }


def write_attack_result(record: Path, model_name="preactresnet18", arch="preactresnet18"):
    record.mkdir(parents=True, exist_ok=True)
    model = build_model(arch, 10, 3)
    result = {
        "model_name": model_name,
        "num_classes": 10,
        "model": model.state_dict(),
        "data_path": "./data/cifar10",
        "img_size": [32, 32, 3],
        "clean_data": "cifar10",
        "bd_train": _bd_state(record, "bd_train_dataset", 12, [1, 5], 0),
        "bd_test": _bd_state(record, "bd_test_dataset", 9, [1, 2, 4, 5, 7], 0),
    }
    path = record / "attack_result.pt"
    torch.save(result, path)
    return path, model


def test_attack_result_loads_without_trust(tmp_path):
    path, model = write_attack_result(tmp_path / "record" / "badnet_demo")
    ckpt = load_checkpoint(path)
    assert ckpt.format == "backdoorbench:attack_result"
    meta = ckpt.metadata
    assert (meta.arch, meta.num_classes, meta.input_size) == ("preactresnet18", 10, (32, 32))
    assert meta.dataset == "cifar10" and meta.mean == (0.4914, 0.4822, 0.4465)
    assert meta.target_label == 0
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[key], value)
    poisoned = ckpt.poisoned_test
    assert poisoned is not None and len(poisoned) == 5
    assert poisoned.images.shape == (5, 3, 32, 32) and poisoned.images.dtype == torch.uint8
    assert poisoned.labels.tolist() == [1, 2, 1, 2, 1]  # true labels, for the ASR
    first = np.array(Image.open(path.parent / "bd_test_dataset" / "1" / "1.png"))
    assert torch.equal(poisoned.images[0].permute(1, 2, 0), torch.from_numpy(first))


def test_attack_result_without_its_images_still_loads(tmp_path):
    record = tmp_path / "record" / "badnet_demo"
    path, _ = write_attack_result(record)
    for png in (record / "bd_test_dataset").rglob("*.png"):
        png.unlink()
    ckpt = load_checkpoint(path)
    assert ckpt.poisoned_test is None
    assert any("not beside it" in notice for notice in ckpt.notices)


@pytest.mark.parametrize(
    "model_name,arch",
    [("vgg19_bn", "vgg19_bn"), ("resnet18", "resnet18"), ("googlenet", "googlenet_aux")],
)
def test_torchvision_model_names(tmp_path, model_name, arch):
    path, _ = write_attack_result(tmp_path / model_name, model_name, arch)
    assert load_checkpoint(path).metadata.arch == arch


def test_defense_result_layout(tmp_path):
    model = build_model("preactresnet18", 43, 3)
    path = tmp_path / "defense_result.pt"
    torch.save({"model_name": "preactresnet18", "num_classes": 43, "model": model.state_dict()},
               path)  # fmt: skip
    ckpt = load_checkpoint(path)
    assert ckpt.format == "backdoorbench:defense_result"
    assert (ckpt.metadata.arch, ckpt.metadata.num_classes) == ("preactresnet18", 43)
    assert ckpt.poisoned_test is None


def test_more_than_numpy_still_needs_trust(tmp_path):
    path, _ = write_attack_result(tmp_path / "record" / "x")
    result = torch.load(path, weights_only=False)
    result["args"] = argparse.Namespace(attack="badnet")  # any other Python object
    torch.save(result, path)
    with pytest.raises(UnsafeCheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust_pickle=True).model is not None


def test_read_in_the_child_samples_come_back_as_named_tensors(tmp_path):
    """The reader's child half (_parse_file) hands back plain tensors and JSON only: the
    backdoored samples as named extras, the notices and their source in the info."""
    from core.io.parse import _parse_file

    path, model = write_attack_result(tmp_path / "record" / "badnet_demo")
    (path.parent / "bd_test_dataset" / "2" / "5.png").write_bytes(b"not a png")  # damaged
    info, tensors = _parse_file(str(path), False, 2**30)
    assert info["format"] == "backdoorbench:attack_result"
    assert info["extras"] == ["poisoned_images", "poisoned_labels"]
    images, labels = tensors[len(info["names"]) :]
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [1, 2, 1, 1]
    assert info["notices"] == [
        "1 of 5 backdoored test images are missing, unreadable or not inside the result's "
        "folder: skipped."
    ]
    assert info["poisoned"]["source"] == "attack_result.pt: bd_test"
    ckpt = load_checkpoint(path)  # the parent rebuilds the same samples as an ImageSet
    assert torch.equal(ckpt.poisoned_test.images, images)
    assert ckpt.notices == info["notices"]


def test_numpy_types_outside_a_backdoorbench_file_still_need_trust(tmp_path):
    path = tmp_path / "weights.pt"
    state = build_model("preactresnet18", 10, 3).state_dict()
    torch.save({"state_dict": state, "stats": np.zeros(3)}, path)  # numpy, not BackdoorBench
    with pytest.raises(UnsafeCheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)


def test_sample_paths_stay_inside_the_results_folder(tmp_path):
    """Absolute paths elsewhere, `..` climbing out and links pointing out are never read: one
    notice that names no outside path, and the ASR source holds only the folder's own images."""
    record = tmp_path / "record" / "badnet_demo"
    path, _ = write_attack_result(record)
    outside = tmp_path / "secret"
    outside.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(outside / "elsewhere.png")
    result = torch.load(path, weights_only=False)
    data = result["bd_test"]["bd_data_container"]["data_dict"]
    keys = sorted(data)
    data[keys[0]]["path"] = str(outside / "elsewhere.png")  # absolute, elsewhere
    data[keys[1]]["path"] = "../../secret/elsewhere.png"  # climbs out
    (record / "bd_test_dataset" / "1" / "4.png").unlink()
    (record / "bd_test_dataset" / "1" / "4.png").symlink_to(outside / "elsewhere.png")  # link out
    data[keys[3]]["path"] = "bd_test_dataset/../../../secret/elsewhere.png"
    torch.save(result, path)
    ckpt = load_checkpoint(path)
    assert ckpt.poisoned_test is not None and len(ckpt.poisoned_test) == 1
    assert ckpt.notices == [
        "4 of 5 backdoored test images are missing, unreadable or not inside the result's "
        "folder: skipped."
    ]
    assert not any("secret" in notice for notice in ckpt.notices)
