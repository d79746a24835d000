"""Where the ASR's triggered samples come from, and the ACC/ASR numbers built on it (Qt-free).

Three sources: the checkpoint's own trigger, a trigger image (patch or blend α) applied to the
test set, or a folder of already-poisoned samples with the attack's target label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from core.data import ImageSet, load_images
from core.errors import BnpError, DataError
from core.evaluation import Metrics, evaluate
from core.inspection import checkpoint_trigger

Kind = Literal["checkpoint", "image", "folder", "none"]
BATCH_SIZE = 128  # cancellation takes effect at the next batch


@dataclass(frozen=True)
class TriggerSource:
    """The user's choice of trigger for ASR (and for the triggered curve of the neuron plot)."""

    kind: Kind = "checkpoint"
    path: str = ""  # trigger image (kind "image") or poisoned-samples folder (kind "folder")
    placement: Literal["patch", "blend"] = "patch"
    alpha: float = 0.2
    size: int | None = None  # patch side in pixels; None: the image's own size
    target: int | None = None  # None: the checkpoint metadata's target label

    def describe(self) -> str:
        if self.kind == "checkpoint":
            return "checkpoint's trigger"
        if self.kind == "image":
            how = "patch" if self.placement == "patch" else f"blend α={self.alpha:g}"
            return f"{Path(self.path).name} ({how})"
        if self.kind == "folder":
            return f"poisoned samples in {Path(self.path).name}"
        return "no trigger"


@dataclass
class ResolvedTrigger:
    """A trigger ready for the engine: either a Trigger object or pre-poisoned samples."""

    source: TriggerSource
    target: int
    trigger: Any = None  # core.triggers.Trigger
    poisoned: ImageSet | None = None  # samples that already carry the trigger (kind "folder")

    def describe(self) -> str:
        return f"{self.source.describe()}, target {self.target}"


def resolve_trigger(source: TriggerSource, ckpt) -> ResolvedTrigger | None:
    """Load what the source names; None for kind "none". Raises BnpError with a clear message."""
    if source.kind == "none":
        return None
    target = source.target
    if target is None and ckpt is not None and ckpt.metadata is not None:
        target = ckpt.metadata.target_label
    if source.kind == "checkpoint":
        trig = checkpoint_trigger(ckpt) if ckpt is not None else None  # engine's own rule
        if trig is None:
            raise DataError(
                "This checkpoint carries no trigger. Choose a trigger image or a folder of "
                "poisoned samples (Data › Trigger source…)."
            )
        if target is None:
            raise DataError("The checkpoint does not name its target label; enter it.")
        return ResolvedTrigger(source, int(target), trigger=trig)
    if target is None:
        raise DataError("Enter the attack's target label to measure the ASR.")
    if not source.path:
        raise DataError("No trigger file or folder was chosen.")
    if not Path(source.path).exists():
        raise DataError(f"{source.path} does not exist.")
    if source.kind == "image":
        from core.triggers import trigger_from_image

        trig = trigger_from_image(
            source.path, kind=source.placement, size=source.size, alpha=source.alpha
        )
        return ResolvedTrigger(source, int(target), trigger=trig)
    poisoned = load_images(source.path)
    victims = poisoned.labels != int(target)
    if bool(victims.any()):  # true labels given: keep the samples an attack could flip
        poisoned = poisoned.subset(torch.nonzero(victims).view(-1))
    return ResolvedTrigger(source, int(target), poisoned=poisoned)


def measure(
    inspection,
    test: ImageSet,
    trigger: ResolvedTrigger | None,
    *,
    mask=None,
    limit: int | None = None,
    progress=None,
    cancel=None,
) -> Metrics:
    """ACC on ``test`` and ASR under ``trigger``, with ``mask`` applied without touching weights.

    Calls ``core.evaluation.evaluate`` directly: ``Inspection.evaluate`` falls back to the
    checkpoint's own trigger when given none, and the user may have chosen another or none.
    """

    def run(images: ImageSet, trig=None, target=None, with_progress=True) -> Metrics:
        return evaluate(
            inspection.model,
            images,
            inspection.spec,
            mask=mask,
            trigger=trig,
            target=target,
            device=inspection.device,
            batch_size=BATCH_SIZE,
            limit=limit,
            progress=progress if with_progress else None,
            cancel=cancel,
        )

    if trigger is None:
        return run(test)
    if trigger.trigger is not None:
        return run(test, trigger.trigger, trigger.target)
    clean = run(test)
    poisoned = trigger.poisoned
    relabelled = ImageSet(
        poisoned.images, torch.full_like(poisoned.labels, trigger.target), source=poisoned.source
    )
    if len(relabelled) == 0:
        raise BnpError("The folder of poisoned samples holds no sample outside the target class.")
    hit = run(relabelled, with_progress=False)
    return Metrics(clean.acc, hit.acc, clean.n_clean, hit.n_clean)
