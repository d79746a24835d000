"""A trigger reconstructed from the suspected poisoned samples, stamped onto clean samples.

The label-free ASR estimate of `core.evidence.suspects` counts the suspected poisoned samples still
classified as the target. That holds for a dirty-label attack (the poisoned samples are other
classes relabelled), not for a clean-label one: there the poisoned samples are genuine images of
the target class, classified as the target with or without the backdoor. The ASR itself is
defined on other images carrying the trigger, so where the trigger can be read off the suspected
samples, the estimate is that definition applied to a reconstruction:

1. **Locate** the input positions where the suspected samples agree (most of them hold the
   same value, up to rounding: a pasted patch is the same in every poisoned sample, natural
   content and per-sample perturbations are not) while few clean samples come near that value,
   few of the clean samples of the target class among them (a feature of the target class
   itself is no trigger), and that stands apart from the clean samples' median by at least a
   quarter of the value range. Positions where every image has the same value (padding, an
   always-black border) fail the second test. A whole-image blend (1 − α)·x + α·p gives no
   such positions: where the images vary, the blended samples vary too; where they are
   constant (a black background), the blend moves them by at most α, and the SPEC's blends
   use α ≤ 0.2, below the contrast asked for.
2. **Stamp** those values onto the clean samples whose label is not the target.
3. **Validate** on the unpruned model: at least half of the stamped set must be classified as the
   target (and clearly more than without the stamp), otherwise the reconstruction does not act
   as the backdoor and is not used. Half, because a reconstruction that misses part of the
   trigger sends fewer stamped samples to the target and would understate every estimate
   (measured: the background of the blend model, before the contrast test, sent 44 %); the
   price is that a backdoor whose real ASR is below 50 % keeps the suspected-sample estimate.

Not found (the suspected-sample estimate stays): triggers not pasted at one place with one
value — random positions, sample-specific or warping triggers, a blend.

The estimated ASR of a mask is then the share of the stamped set the pruned model classifies as
the target. Everything works on the model's prepared inputs (a `MaskProbe`'s sets): what the
model sees is what is stamped, and the per-channel normalisation only rescales the tolerance.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import torch

AGREE_TOLERANCE = 0.01  # of a channel's clean value range: "the same value" (a pasted trigger)
MIN_AGREE = 0.8  # share of the suspected samples at their median value (some may be clean)
CLEAN_TOLERANCE = 0.05  # of that range: a clean sample "comes near" the trigger's value
MAX_CLEAN_MATCH = 0.2  # share of the clean samples that may come that near
MIN_CONTRAST = 0.25  # of that range: the trigger's value apart from the clean samples' median
MIN_SUSPECTED = 5  # fewer suspected samples give no reliable median
MIN_STAMPED_SHARE = 0.5  # share of the stamped set the unpruned model must send to the target
MIN_LIFT = 0.25  # ... and by this much more than the same samples without the stamp
MAX_STAMPED_SETS = 4  # stamped sets kept in a probe (the analyst's marks make new ones)


@dataclass
class TriggerPixels:
    """Located trigger positions in the model's input space and the values found there."""

    pixels: torch.Tensor  # C×H×W bool
    values: torch.Tensor  # C×H×W float: the suspected samples' median (used where pixels)

    @property
    def count(self) -> int:
        """Located positions (pixels × channels)."""
        return int(self.pixels.sum())


@dataclass
class Reconstruction:
    """A reconstructed trigger, the clean samples stamped with it, and whether it is used."""

    trigger: TriggerPixels | None
    n_suspected: int  # suspected samples it was read from
    rows: torch.Tensor  # indices of the clean samples stamped (label ≠ target)
    name: str | None  # the probe set holding the stamped samples (None: none made)
    accepted: bool
    reason: str  # one sentence: why it is (not) used
    share: float = 0.0  # share of the stamped set the unpruned model classifies as the target
    base: float = 0.0  # the same share without the stamp
    before: torch.Tensor | None = None  # the unpruned model's predictions of the stamped set

    @property
    def n(self) -> int:
        """Stamped samples the estimate rests on."""
        return len(self.rows)


def locate_trigger(
    suspected: torch.Tensor,
    clean: torch.Tensor,
    clean_of_target: torch.Tensor | None = None,
    *,
    agree_tolerance: float = AGREE_TOLERANCE,
    min_agree: float = MIN_AGREE,
    clean_tolerance: float = CLEAN_TOLERANCE,
    max_clean_match: float = MAX_CLEAN_MATCH,
    min_contrast: float = MIN_CONTRAST,
) -> TriggerPixels:
    """Positions where the suspected samples (N×C×H×W) agree on a value few clean samples
    (M×C×H×W) come near: at least `min_agree` of the suspected samples within
    `agree_tolerance` × the channel's clean value range of their median, at most
    `max_clean_match` of the clean ones within `clean_tolerance` × that range — nor of the
    clean samples of the target class (`clean_of_target`), so that a feature of the target
    class itself (what a clean-label attack's poisoned samples share with it) is not taken for
    the trigger — and at least `min_contrast` × that range from the clean samples' median
    (a blend moves a pixel by at most its α)."""
    suspected, clean = suspected.float(), clean.float()
    channels = clean.shape[1]
    flat = clean.transpose(0, 1).reshape(channels, -1)
    span = (flat.max(1).values - flat.min(1).values).clamp(min=1e-12)
    span = span.reshape(1, channels, 1, 1)
    tol = clean_tolerance * span
    median = suspected.median(0).values
    agree = _share_near(suspected, median, agree_tolerance * span)
    pixels = (agree >= min_agree) & (_share_near(clean, median, tol) <= max_clean_match)
    pixels &= (median - clean.median(0).values).abs() >= min_contrast * span[0]
    if clean_of_target is not None and len(clean_of_target):
        near = _share_near(clean_of_target.float(), median, tol)
        pixels &= near <= max_clean_match
    return TriggerPixels(pixels, median)


def _share_near(images: torch.Tensor, values: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """Per position, the share of `images` within `tol` of `values`."""
    return ((images - values).abs() <= tol).float().mean(0)


def stamp(images: torch.Tensor, trigger: TriggerPixels) -> torch.Tensor:
    """`images` (N×C×H×W) with the located positions set to the trigger's values."""
    pixels = trigger.pixels.to(images.device)
    return torch.where(pixels, trigger.values.to(images.device, images.dtype), images)


_LOCK = threading.Lock()  # the window estimates on several workers sharing one probe


def reconstruct(
    probe,
    suspected_index: torch.Tensor,
    clean_labels: torch.Tensor | None,
    target: int | None,
    cancel=None,
    clean_predictions: torch.Tensor | None = None,
) -> Reconstruction:
    """Locate, stamp and validate a trigger from the probe's "train" rows `suspected_index` and
    its "clean" set; the stamped set is added to the probe (cached per suspected set).
    `clean_predictions`: the unpruned model's predictions of the clean set, where known."""
    with _LOCK:
        return _reconstruct(probe, suspected_index, clean_labels, target, cancel, clean_predictions)


def _reconstruct(
    probe, suspected_index, clean_labels, target, cancel, clean_predictions
) -> Reconstruction:
    cache = probe.reconstructions
    key = (target, tuple(suspected_index.tolist()))
    if key in cache:
        return cache[key]
    empty = torch.zeros(0, dtype=torch.long)
    n_suspected = len(suspected_index)

    def refuse(reason: str, trigger: TriggerPixels | None = None) -> Reconstruction:
        result = Reconstruction(trigger, n_suspected, empty, None, False, reason)
        cache[key] = result
        return result

    if target is None or clean_labels is None or "clean" not in probe.inputs:
        return refuse("No trigger reconstruction: it needs a target and clean samples.")
    if n_suspected < MIN_SUSPECTED:
        return refuse(
            f"No trigger reconstruction: {n_suspected} suspected samples are too few "
            f"(at least {MIN_SUSPECTED})."
        )
    clean = probe.inputs["clean"]
    suspected = probe.inputs["train"][suspected_index.to(clean.device)]
    own = torch.nonzero(clean_labels == target).flatten()
    trigger = locate_trigger(suspected.cpu(), clean.cpu(), clean[own.to(clean.device)].cpu())
    if trigger.count == 0:
        return refuse(
            "No trigger reconstruction: the suspected samples share no value the clean "
            "samples lack (e.g. a whole-image blend)."
        )
    rows = torch.nonzero(clean_labels != target).flatten()
    if len(rows) == 0:
        return refuse("No trigger reconstruction: no clean sample outside the target class.")
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:12]
    name = f"stamped-{digest}"
    probe.inputs[name] = stamp(clean[rows.to(clean.device)], trigger)
    before = probe.predict(name, None, cancel=cancel)
    if clean_predictions is not None and len(clean_predictions) == len(clean):
        base_pred = clean_predictions[rows]
    else:
        base_pred = probe.predict("clean", None, index=rows, cancel=cancel)
    share = float((before == target).double().mean())
    base = float((base_pred == target).double().mean())
    where = f"{trigger.count} input values"
    if share < MIN_STAMPED_SHARE or share - base < MIN_LIFT:
        probe.inputs.pop(name, None)
        result = Reconstruction(
            trigger, n_suspected, empty, None, False,
            f"Trigger reconstruction not used: {where} read from {n_suspected} suspected samples "
            f"send only {share:.0%} of {len(rows)} stamped clean samples to {target} "
            f"({base:.0%} without the stamp).",
            share, base,
        )  # fmt: skip
    else:
        result = Reconstruction(
            trigger, n_suspected, rows, name, True,
            f"A trigger of {where} read from {n_suspected} suspected samples sends "
            f"{share:.0%} of {len(rows)} stamped clean samples to {target} ({base:.0%} without "
            "it).",
            share, base, before,
        )  # fmt: skip
    cache[key] = result
    stamped = [k for k, r in cache.items() if r.name is not None]
    for old in stamped[:-MAX_STAMPED_SETS]:  # the oldest first (dicts keep insertion order)
        probe.inputs.pop(cache.pop(old).name, None)
    return result
