"""A tiny backdoored (or clean) classifier trained in seconds, for the suspect-sample tests.

16×16 grey "bar" images (class k: a bright bar on row k + 2 over faint noise), a 3×3 white
patch in the bottom-right corner as the trigger, target 3. The model is a small conv net with
BatchNorm layers; training is a few epochs of Adam on one thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.data.images import ImageSet
from core.data.triggers import BlendTrigger, PatchTrigger, Trigger, poison
from core.defense.inspection import Inspection
from core.io.metadata import LoadedCheckpoint, ModelMetadata

TARGET = 3


def bars(n: int, seed: int) -> ImageSet:
    """16×16 grey images: class k is a bright bar on row k + 2 over faint noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.4
    for i, k in enumerate(labels.tolist()):
        x[i, 0, k + 2, 1:11] = 0.8 + 0.2 * torch.rand(1, generator=g).item()
    return ImageSet((x * 255).round().to(torch.uint8), labels, [f"c{k}" for k in range(10)])


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, stride=2, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


TRIGGER = PatchTrigger(torch.ones(1, 3, 3))
# a full-image blend (Chen et al. 2017): weak, spread-out neuron signals
BLEND = BlendTrigger(torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(7)), 0.2)


@dataclass
class Planted:
    """A trained tiny model with its data: what the defender holds and the ground truth."""

    inspection: Inspection
    train: ImageSet  # suspect samples the defender holds (poisoned ones among them)
    poisoned: torch.Tensor  # N bool: ground truth for `train`
    clean: ImageSet  # clean labelled samples
    test: ImageSet


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    """`model` trained with Adam (lr 0.01) in batches of 64 in a seeded order; in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), 64):
            batch = order[start : start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    return model.eval()


def clean_label_poison(
    data: ImageSet, trigger: Trigger, rate: float, seed: int, faint: float
) -> tuple[ImageSet, torch.Tensor]:
    """A clean-label attack on bar images: round(rate·N) samples of the target class (at most
    all of them) get their bar dimmed to `faint` of its brightness and a second bar, of another
    class, as bright as it was — the stand-in for CLA's adversarial perturbation, which makes
    them look like other classes — and the trigger; labels stay as they are (the target)."""
    g = torch.Generator().manual_seed(seed)
    own = torch.nonzero(data.labels == TARGET).flatten()
    index = own[torch.randperm(len(own), generator=g)[: int(round(rate * len(data)))]]
    index = index.sort().values
    x = data.float_images().clone()
    row = TARGET + 2
    others = torch.tensor([k for k in range(10) if k != TARGET])
    decoys = others[torch.randint(0, len(others), (len(index),), generator=g)] + 2
    x[index, :, decoys, 1:11] = x[index, :, row, 1:11]
    x[index, :, row, 1:11] *= faint
    x[index] = trigger.apply(x[index])
    return ImageSet(x, data.labels.clone(), data.class_names), index


def planted(
    rate: float = 0.1,
    seed: int = 0,
    epochs: int = 6,
    trigger: Trigger = TRIGGER,
    clean_label: float | None = None,
) -> Planted:
    """Train the tiny net on 2 000 bar images, `rate` of them poisoned with `trigger` (0: a
    clean model); `clean_label`: a clean-label attack instead, the poisoned samples' bars
    dimmed to that share (`clean_label_poison`)."""
    torch.manual_seed(seed)
    data = bars(2000, seed)
    if rate > 0 and clean_label is not None:
        poisoned_set, index = clean_label_poison(data, trigger, rate, seed, clean_label)
    elif rate > 0:
        poisoned_set, index = poison(data, trigger, TARGET, rate, seed)
    else:
        poisoned_set, index = data, torch.zeros(0, dtype=torch.long)
    x = poisoned_set.float_images()
    y = poisoned_set.labels
    model = fit(tiny_net(), x, y, epochs, seed)
    meta = ModelMetadata("tiny", 10, 1, (16, 16), target_label=TARGET if rate > 0 else None)
    ckpt = LoadedCheckpoint(Path("tiny.pth"), "test", model, model.state_dict(), meta, None)
    inspection = Inspection(ckpt, device="cpu")
    inspection.trigger = trigger
    is_poisoned = torch.zeros(len(x), dtype=torch.bool)
    is_poisoned[index] = True
    suspects = torch.arange(500)  # the defender's slice of the training set
    train = ImageSet(
        (x[suspects] * 255).round().to(torch.uint8), y[suspects], poisoned_set.class_names
    )
    return Planted(
        inspection, train, is_poisoned[suspects], bars(400, seed + 100), bars(1000, seed + 200)
    )


def analysed_planted():
    """(planted model, its MaskProbe, its SuspectAnalysis): the statistics collected on one torch
    thread, the probe and the analysis made as the window and `bnp defend --auto` make them."""
    from core.evidence.suspects import analyse_suspects, make_probe

    torch.set_num_threads(1)
    p = planted(rate=0.1)
    p.inspection.collect(p.clean, p.train)
    probe = make_probe(p.inspection, p.train, p.clean)
    return p, probe, analyse_suspects(p.inspection, p.train, p.clean, probe=probe)
