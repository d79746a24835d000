"""Where the ASR's triggered samples come from, and the ACC/ASR numbers built on it (Qt-free).

Three sources: the checkpoint's own trigger, a trigger image (patch or blend α) applied to the
test set, or a folder of already-poisoned samples with the attack's target label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from core.errors import DataError

if TYPE_CHECKING:  # the engine (torch) is imported where it is used, on worker threads
    from core.data.images import ImageSet
    from core.defense.evaluation import Metrics

Kind = Literal["checkpoint", "image", "folder", "none"]
BATCH_SIZE = 128  # cancellation takes effect at the next batch


@dataclass(frozen=True)
class TriggerSource:
    """The user's choice of trigger for ASR (and for the triggered curve of the neuron plot)."""

    kind: Kind = "checkpoint"
    path: str = ""  # trigger image (kind "image") or poisoned-samples folder (kind "folder")
    placement: Literal["patch", "blend", "four-corner"] = "patch"
    alpha: float = 0.2
    size: int | None = None  # patch side in pixels; None: the image's own size
    target: int | None = None  # None: the checkpoint metadata's target label

    def describe(self) -> str:
        if self.kind == "checkpoint":
            return "checkpoint's trigger"
        if self.kind == "image":
            how = {"patch": "patch", "four-corner": "patch in four corners"}.get(
                self.placement, f"blend α={self.alpha:g}"
            )
            return f"{Path(self.path).name} ({how})"
        if self.kind == "folder":
            return f"poisoned samples in {Path(self.path).name}"
        return "no trigger"


@dataclass
class ResolvedTrigger:
    """A trigger ready for the engine: either a Trigger object or pre-poisoned samples."""

    source: TriggerSource
    target: int
    trigger: Any = None  # core.data.triggers.Trigger
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
        from core.defense.inspection import checkpoint_trigger

        trig = checkpoint_trigger(ckpt) if ckpt is not None else None  # engine's own rule
        if trig is None:
            raise DataError(
                "This checkpoint carries no trigger. Choose a trigger image or a folder of "
                "poisoned samples (Analysis › Trigger Source…)."
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
        from core.data.triggers import trigger_from_image

        trig = trigger_from_image(
            source.path, kind=source.placement, size=source.size, alpha=source.alpha
        )
        return ResolvedTrigger(source, int(target), trigger=trig)
    from core.data.limited import read_images  # the isolated reader: time and memory limits
    from core.defense.evaluation import attack_victims

    poisoned = attack_victims(read_images(source.path), int(target))
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
    """ACC on ``test`` and ASR under the user's ``trigger`` choice (None: ACC only), with
    ``mask`` applied without touching weights."""
    return inspection.evaluate(
        test,
        mask=mask,
        trigger=trigger.trigger if trigger is not None else None,
        target=trigger.target if trigger is not None else None,
        poisoned=trigger.poisoned if trigger is not None else None,
        batch_size=BATCH_SIZE,
        limit=limit,
        progress=progress,
        cancel=cancel,
    )
