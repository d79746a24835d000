"""One model of the zoo through the whole engine: save, load, detect, discover, prune, export,
reopen. Used by tests/test_zoo.py (tiny inputs) and bench/zoo_table.py (native input sizes,
the "Models it opens" table of docs/models.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.defense.evaluation import predict
from core.defense.inspection import Inspection
from core.io.backdoorbench import ARCHITECTURE as BACKDOORBENCH
from core.io.checkpoint import load_checkpoint
from core.io.export import export_model, session_metadata
from core.model.architectures import ARCHITECTURES, build_model
from core.model.graph import discover_layers, method_availability

# BackdoorBench's model names, checked through a file in its attack_result.pt layout
BACKDOORBENCH_NAMES = (
    "preactresnet18", "vgg19_bn", "resnet18", "mobilenet_v3_large", "efficientnet_b3",
    "densenet161", "convnext_tiny", "vit_b_16",
)  # fmt: skip
TORCHVISION = (
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "vgg16_bn",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "densenet121",
    "efficientnet_b0", "efficientnet_v2_s", "shufflenet_v2_x1_0", "regnet_x_400mf",
    "regnet_y_400mf", "mnasnet1_0", "googlenet", "googlenet_aux", "inception_v3",
)  # fmt: skip
OURS = ("cifar_resnet18", "cifar_resnet20", "preact_resnet18", "vgg16_bn_cifar")
TIMM = ("timm/efficientnet_b0", "timm/mobilenetv3_large_100", "timm/regnety_016",
        "timm/resnet50d", "timm/dla34")  # fmt: skip


@dataclass
class ZooRow:
    """What happened to one model."""

    model: str  # the name the user knows (BackdoorBench's for those rows)
    source: str  # "torchvision", "BackdoorBench attack_result.pt", ...
    arch: str = ""
    size: int = 0
    loads: bool = False
    detected: str = ""
    layers: int = 0
    neurons: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # "kind: reason" → count
    clp_partners: int = 0
    methods: dict[str, bool] = field(default_factory=dict)
    pruned: int = 0
    reproduces: bool | None = None
    error: str = ""


def _randomise_statistics(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)


def check_model(
    name: str, folder: Path, *, size: int | None = None, samples: int = 2, source: str = ""
) -> ZooRow:
    """Build `name` with random weights, save it as its source would, and run it through."""
    backdoorbench = source == "backdoorbench"
    arch = BACKDOORBENCH[name] if backdoorbench else name
    spec = ARCHITECTURES[arch]
    size = size or spec.input_size
    row = ZooRow(name, source or spec.family, arch, size)
    torch.manual_seed(0)
    model = build_model(arch, 10, 3).eval()
    _randomise_statistics(model)
    path = folder / f"{name.replace('/', '_')}.pth"
    if backdoorbench:
        path = folder / name / "attack_result.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        result = {"model_name": name, "num_classes": 10, "model": model.state_dict(),
                  "data_path": "./data/cifar10", "img_size": [size, size, 3],
                  "clean_data": "cifar10", "bd_train": None}  # fmt: skip
        torch.save(result, path)
    else:
        torch.save(model.state_dict(), path)
    del model
    ckpt = load_checkpoint(path)
    row.loads = True
    row.detected = ckpt.metadata.arch
    if ckpt.metadata.input_size != (size, size):
        ckpt.metadata.input_size = (size, size)
    example = torch.zeros(1, 3, size, size)
    found = discover_layers(ckpt.model, example)
    row.layers = len(found.layers)
    row.neurons = sum(layer.channels for layer in found.layers)
    row.clp_partners = sum(layer.conv is not None for layer in found.layers)
    for skipped in found.skipped:
        key = f"{skipped.kind}: {skipped.reason.split(':')[0].split(',')[0]}"
        row.skipped[key] = row.skipped.get(key, 0) + 1
    row.methods = {m: ok for m, (ok, _) in method_availability(ckpt.model, found).items()}
    images = torch.randint(0, 256, (samples, 3, size, size), dtype=torch.uint8)
    if found.layers:
        inspection = Inspection(ckpt, device="cpu")
        mask = inspection.mask({"clp": 2.0})
        row.pruned = mask.count()
        spec_now, model_now, meta = inspection.spec, inspection.model, session_metadata(inspection)
    else:
        mask = None
        from core.data.images import InputSpec

        m = ckpt.metadata
        spec_now, model_now, meta = InputSpec(3, (size, size), m.mean, m.std), ckpt.model, m
    preview = predict(model_now, images, spec_now, mask=mask)
    out = folder / f"{name.replace('/', '_')}_pruned.pth"
    export_model(model_now, out, mask=mask, fmt="seed", metadata=meta)
    reopened = load_checkpoint(out)
    again = predict(reopened.model, images, spec_now)
    row.reproduces = bool(torch.equal(preview, again)) and reopened.metadata.arch == arch
    return row
