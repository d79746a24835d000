"""ACC and ASR of a model, optionally with a prune mask applied non-destructively (SPEC §2).

Numbers that would be nonsense are refused (core.defense.checks): a target outside the classes,
labels the model cannot output, outputs that are NaN on every sample; outputs NaN on some samples
come back as ``Metrics.warnings``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from core.data.checks import check_labels, check_target
from core.data.images import ImageSet, InputSpec
from core.defense.checks import check_outputs
from core.defense.statistics import CancelCheck, Progress
from core.errors import BnpError, Cancelled
from core.model.masks import PruneMask


@dataclass
class Metrics:
    """Top-1 clean accuracy and attack success rate, in percent."""

    acc: float
    asr: float | None
    n_clean: int
    n_poison: int
    warnings: list[str] = field(default_factory=list)  # e.g. NaN outputs on some samples

    def to_dict(self) -> dict:
        """The metrics as a JSON-ready dict."""
        return {
            "acc": self.acc,
            "asr": self.asr,
            "n_clean": self.n_clean,
            "n_poison": self.n_poison,
            "warnings": list(self.warnings),
        }


def sample_subset(images: ImageSet, limit: int | None, seed: int = 0) -> ImageSet:
    """A fixed random subset of at most `limit` samples (data folders are often class-sorted)."""
    if limit is None or limit >= len(images):
        return images
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(images), generator=generator)[:limit].sort().values
    return images.subset(index)


def predict(
    model: nn.Module,
    images: torch.Tensor,
    spec: InputSpec,
    *,
    mask: PruneMask | None = None,
    trigger=None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    done_before: int = 0,
    total: int | None = None,
    nonfinite: list[int] | None = None,
) -> torch.Tensor:
    """Predicted labels for a stack of raw images, with the mask applied if given.

    A sample whose outputs are not all finite is predicted as -1 (never right) and counted in
    ``nonfinite[0]`` when a list is given."""
    device = torch.device(device)
    model.eval().to(device)
    params = mask.parameters(model) if mask is not None else {}
    total = total if total is not None else len(images)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            if cancel is not None and cancel():
                raise Cancelled("Evaluation cancelled.")
            x = spec.prepare(images[start : start + batch_size], trigger).to(device)
            logits = functional_call(model, params, (x,)) if params else model(x)
            broken = ~torch.isfinite(logits).all(dim=1)
            pred = logits.argmax(dim=1).masked_fill(broken, -1)
            if nonfinite is not None:
                nonfinite[0] += int(broken.sum())
            out.append(pred.cpu())
            if progress is not None:
                progress(done_before + start + len(x), total)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def attack_victims(poisoned: ImageSet, target: int) -> ImageSet:
    """The poisoned samples whose true label is not `target` (an attack could flip only those);
    all of them when every label is the target (a folder relabelled by the attacker)."""
    victims = poisoned.labels != target
    if bool(victims.any()):
        return poisoned.subset(torch.nonzero(victims).view(-1))
    return poisoned


def output_classes(model: nn.Module, spec: InputSpec, device: str | torch.device = "cpu") -> int:
    """How many classes the model outputs (one forward pass of a blank image)."""
    with torch.inference_mode():
        x = torch.zeros(1, spec.channels, *spec.size, device=device)
        return int(model.eval().to(device)(x).shape[1])


UPSCALE_NOTE_FACTOR = 4  # images this many times smaller than the input, on a side, get a note


def upscale_notes(images: torch.Tensor, spec: InputSpec, what: str) -> list[str]:
    """A note when images are scaled up by UPSCALE_NOTE_FACTOR or more to the model's input
    (1×1 images made 32×32 measure the model on flat blocks, not on pictures)."""
    h, w = int(images.shape[-2]), int(images.shape[-1])
    factor = max(spec.size[0] / max(h, 1), spec.size[1] / max(w, 1))
    if factor < UPSCALE_NOTE_FACTOR:
        return []
    return [
        f"the {what} are {h}×{w}, scaled up {factor:g}× to the model's {spec.size[0]}×"
        f"{spec.size[1]} input: the model sees blurred blocks, so the numbers say little "
        "about real inputs"
    ]


def evaluate(
    model: nn.Module,
    test: ImageSet,
    spec: InputSpec,
    *,
    mask: PruneMask | None = None,
    trigger=None,
    target: int | None = None,
    poisoned: ImageSet | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    limit: int | None = None,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    num_classes: int | None = None,
) -> Metrics:
    """ACC on `test`; ASR too when a target label is given with either a trigger (stamped on the
    test samples of the other classes) or `poisoned` samples that already carry it.

    Raises DataError for a target outside the classes or labels ≥ the classes, and
    MeaninglessResult when the model's outputs are NaN/inf on every sample."""
    if trigger is not None and poisoned is not None:
        raise BnpError("Measure the ASR with a trigger or with poisoned samples, not both.")
    test = sample_subset(test, limit)
    if len(test) == 0:
        raise BnpError("The test set is empty.")
    if num_classes is None:
        num_classes = output_classes(model, spec, device)
    check_labels(test.labels, num_classes, "test")
    if target is not None:
        target = check_target(target, num_classes)
    victims = None
    if target is not None and trigger is not None:
        victims = test.images[test.labels != target]
    elif target is not None and poisoned is not None:
        check_labels(poisoned.labels, num_classes, "poisoned")
        victims = attack_victims(sample_subset(poisoned, limit), target).images
        if len(victims) == 0:
            raise BnpError("The set of poisoned samples is empty.")
    total = len(test) + (len(victims) if victims is not None else 0)
    common = dict(mask=mask, device=device, batch_size=batch_size, cancel=cancel, total=total)
    bad = [0]
    pred = predict(model, test.images, spec, progress=progress, nonfinite=bad, **common)
    warnings = check_outputs(bad[0], len(test), "test images")
    warnings += upscale_notes(test.images, spec, "test images")
    if poisoned is not None:
        warnings += upscale_notes(poisoned.images, spec, "poisoned images")
    acc = 100.0 * (pred == test.labels).double().mean().item()
    asr, n_poison = None, 0
    if victims is not None and len(victims):
        bad = [0]
        pred = predict(
            model,
            victims,
            spec,
            trigger=trigger,  # None for poisoned samples: they carry the trigger already
            progress=progress,
            done_before=len(test),
            nonfinite=bad,
            **common,
        )
        warnings += check_outputs(bad[0], len(victims), "triggered images")
        asr = 100.0 * (pred == target).double().mean().item()
        n_poison = len(victims)
    return Metrics(acc, asr, len(test), n_poison, warnings)
