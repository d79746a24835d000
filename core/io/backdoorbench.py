"""BackdoorBench result files (`attack_result.pt`, `defense_result.pt`), read without running code.

BackdoorBench (SCLBD/BackdoorBench) saves `torch.save(dict)` with `model_name`, `num_classes`,
`model` (the state_dict) and, for attacks, `img_size` ([H, W, C]), `clean_data` (the data set
name), `data_path` and the states of its poisoned data sets `bd_train` / `bd_test`. Those states
hold numpy arrays and numpy integers, which `torch.load(weights_only=True)` refuses; exactly the
four numpy globals they need are allowed here (`torch.serialization.safe_globals`), nothing else.

The backdoored test samples (`bd_test`) are PNG files BackdoorBench wrote beside the result
(`<record>/bd_test_dataset/<label>/<index>.png`, listed in the state with their labels): when
they are there they become `poisoned_test`, an ASR source that needs no trigger.

All of this runs in the checkpoint reader's child process (`core.io.parse._parse_file`), like
any other parsing of a stranger's file; the images travel back to the caller as tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.data.imagefolder import read_image_array
from core.data.images import ImageSet
from core.errors import DataError
from core.safety.paths import confined, printable

# BackdoorBench's model names → our registry (its torchvision models are built with
# `num_classes=` only, so torchvision's own layout; googlenet keeps its auxiliary heads)
ARCHITECTURE = {
    "preactresnet18": "preactresnet18",
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "vgg19_bn": "vgg19_bn",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_large": "mobilenet_v3_large",
    "efficientnet_b0": "efficientnet_b0",
    "efficientnet_b3": "efficientnet_b3",
    "densenet121": "densenet121",
    "densenet161": "densenet161",
    "googlenet": "googlenet_aux",
    "inception_v3": "inception_v3",
    "shufflenet_v2_x1_0": "shufflenet_v2_x1_0",
    "resnext50_32x4d": "resnext50_32x4d",
    "wide_resnet50_2": "wide_resnet50_2",
    "mnasnet1_0": "mnasnet1_0",
    "convnext_tiny": "convnext_tiny",
    "vit_b_16": "bb_vit_b_16",
}
# the normalisation BackdoorBench's transforms apply per data set (its
# dataset_and_transform_generate.get_dataset_normalization)
NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.5,), (0.5,)),
    "tiny": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "gtsrb": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "celeba": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
REQUIRED = ("model_name", "num_classes", "model")
# the dtypes of BackdoorBench's index, indicator and label arrays and scalars, and their kin;
# object arrays (which could hold anything) stay refused
NUMERIC_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
)  # fmt: skip


def _numpy_globals() -> list:
    """numpy arrays, scalars and dtypes, under numpy 2's and numpy 1's module names."""
    try:
        from numpy._core import multiarray  # numpy 2
    except ImportError:  # numpy 1
        from numpy.core import multiarray

    allowed: list = [np.ndarray, np.dtype, *(type(np.dtype(t)) for t in NUMERIC_DTYPES)]
    for fn in (multiarray._reconstruct, multiarray.scalar):
        allowed += [(fn, f"numpy._core.multiarray.{fn.__name__}")]
        allowed += [(fn, f"numpy.core.multiarray.{fn.__name__}")]
    return allowed


ALLOWED_GLOBALS = frozenset(
    {
        "numpy.ndarray",
        "numpy.dtype",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
    }
)


@dataclass
class BackdoorBenchResult:
    """What a BackdoorBench result file holds, in the engine's terms."""

    kind: str  # "attack_result" or "defense_result"
    state_dict: dict[str, Tensor]
    meta: dict[str, Any]  # ModelMetadata fields: arch, input_size, mean, std, dataset, ...
    poisoned_test: ImageSet | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def format(self) -> str:
        """The checkpoint format name: 'backdoorbench:<kind>'."""
        return f"backdoorbench:{self.kind}"


def load_with_numpy(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with exactly BackdoorBench's numpy types allowed, or
    None when the file refers to anything else (the ordinary loader then says what)."""
    try:
        refs = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a torch.save archive: the ordinary loader says so
        return None
    if not refs <= ALLOWED_GLOBALS:
        return None
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - same: leave the explanation to the ordinary loader
        return None


def is_backdoorbench(obj: Any) -> bool:
    """A dict with BackdoorBench's `model_name`, `num_classes` and `model` (a state_dict)."""
    return (
        isinstance(obj, Mapping)
        and all(key in obj for key in REQUIRED)
        and isinstance(obj["model_name"], str)
        and isinstance(obj["model"], Mapping)
    )


def from_dict(obj: Mapping[str, Any], path: Path) -> BackdoorBenchResult:
    """Weights, metadata and backdoored test samples of a loaded BackdoorBench dict."""
    kind = "attack_result" if "bd_test" in obj or "img_size" in obj else "defense_result"
    name = obj["model_name"]
    meta: dict[str, Any] = {"extra": {"backdoorbench_model_name": name}}
    notices = []
    if name in ARCHITECTURE:
        meta["arch"] = ARCHITECTURE[name]
    else:
        notices.append(
            f"BackdoorBench model {name!r} is not one the engine maps; the architecture is "
            "detected from the weights."
        )
    try:
        meta["num_classes"] = int(obj["num_classes"])
    except (TypeError, ValueError, OverflowError):  # inf, NaN, text: detected from the weights
        notices.append(
            f"BackdoorBench's num_classes {printable(repr(obj['num_classes']), 40)} is not a "
            "whole number; the classes are counted from the weights."
        )
    size = obj.get("img_size")
    if isinstance(size, (list, tuple, np.ndarray)) and len(size) >= 2:
        try:
            meta["input_size"] = (int(size[0]), int(size[1]))
        except (TypeError, ValueError, OverflowError):
            notices.append("BackdoorBench's img_size is not whole numbers; it is not used.")
    dataset = obj.get("clean_data")
    if isinstance(dataset, str):
        meta["dataset"] = dataset
        if dataset in NORMALISATION:
            meta["mean"], meta["std"] = NORMALISATION[dataset]
    poisoned = None
    if isinstance(obj.get("bd_test"), Mapping):
        poisoned, target, note = _poisoned_test(obj["bd_test"], path)
        if note:
            notices.append(note)
        if target is not None:
            meta["target_label"] = target
            meta["attack"] = {"kind": "backdoorbench", "target": target}
    state_dict = {k: v for k, v in obj["model"].items()}
    return BackdoorBenchResult(kind, state_dict, meta, poisoned, notices)


def _poisoned_test(state: Mapping[str, Any], path: Path) -> tuple[ImageSet | None, int | None, str]:
    """(samples, target label, notice) from the state of BackdoorBench's bd_test set."""
    container = state.get("bd_data_container")
    data = container.get("data_dict") if isinstance(container, Mapping) else None
    if not isinstance(data, Mapping) or not data:
        return None, None, "The file lists no backdoored test samples."
    order = state.get("original_index_array")
    keys = [int(k) for k in order] if order is not None else sorted(int(k) for k in data)
    by_key = {int(k): v for k, v in data.items()}
    images, labels, targets, missing = [], [], set(), 0
    for key in keys:
        entry = by_key.get(key)
        if not isinstance(entry, Mapping) or "path" not in entry:
            missing += 1
            continue
        info = list(entry.get("other_info") or [])
        if len(info) < 2:
            missing += 1
            continue
        png = _resolve(str(entry["path"]), path)
        image = _read_png(png) if png is not None else None
        if image is None:
            missing += 1
            continue
        images.append(image)
        targets.add(int(info[0]))
        labels.append(int(info[1]))
    target = targets.pop() if len(targets) == 1 else None
    if not images:
        return (
            None,
            target,
            f"The {len(keys)} backdoored test images the file lists are not beside it "
            f"({path.parent / 'bd_test_dataset'}): no ASR source from the file.",
        )
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        return None, target, "The backdoored test images differ in size: not used."
    note = (
        f"{missing} of {len(keys)} backdoored test images are missing, unreadable or not "
        "inside the result's folder: skipped."
        if missing
        else ""
    )
    samples = ImageSet(torch.stack(images), torch.tensor(labels), source=f"{path.name}: bd_test")
    return samples, target, note


def _resolve(stored: str, result_file: Path) -> Path | None:
    """The PNG under the result file's own folder: from `bd_test_dataset` on when the stored
    path has that part (BackdoorBench stores the path of the machine it ran on), else the
    stored path itself when, resolved, it stays inside that folder. Never a path elsewhere:
    an absolute path, ``..`` climbing out or a link pointing out is None (the file's author
    does not choose what is read, nor learn which paths exist)."""
    root = result_file.parent
    try:
        parts = Path(stored).parts
    except (TypeError, ValueError):
        return None
    if "bd_test_dataset" in parts:
        tail = Path(*parts[parts.index("bd_test_dataset") :])
        if ".." not in tail.parts:
            return confined(tail, root)
    return confined(stored, root)


def _read_png(path: Path) -> Tensor | None:
    """One image as uint8 C×H×W, or None when it cannot be read (damaged, too large)."""
    try:
        array = read_image_array(path)  # the data loader's bounds: pixels, modes, bombs
    except DataError:
        return None
    if array.dtype != np.uint8:  # a 16-bit PNG: to 8 bits like the others
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
