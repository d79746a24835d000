"""Backdoor triggers (BadNets patch at a fixed or a random position, the seed's corner blend,
Chen et al.'s full-image blend, the clean-label attack's patch in all four corners) and
poisoning of a training set.

A trigger works on float images B×C×H×W in [0, 1] and returns a new tensor. Its patch or
pattern is adapted to the images it is applied to: 1 ↔ 3 channels by the rules of
``core.data.images.conform_channels`` (grey repeated; RGB → ITU-R BT.601 luma), a blend pattern of
another size is resized (bilinear, antialiased). ``to_dict`` stores tensors as nested lists so a
trigger can live in checkpoint metadata that loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from core.data.images import ImageSet, conform_channels, to_float
from core.data.names import TRIGGER_POSITIONS
from core.errors import DataError

__all__ = [
    "POSITIONS",
    "Trigger",
    "PatchTrigger",
    "RandomPatchTrigger",
    "CornerBlendTrigger",
    "FourCornerTrigger",
    "BlendTrigger",
    "trigger_from_image",
    "random_patch",
    "poison",
]

POSITIONS = TRIGGER_POSITIONS
Position = str | tuple[int, int]


def _as_pattern(t: Tensor | Sequence[Any], what: str) -> Tensor:
    """A float32 C×H×W tensor (C = 1 or 3) in [0, 1], on the CPU."""
    x = torch.as_tensor(t, dtype=torch.float32).detach().cpu()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] not in (1, 3) or x.shape[1] < 1 or x.shape[2] < 1:
        raise DataError(f"a trigger {what} must be C×H×W with C = 1 or 3, got {tuple(x.shape)}")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DataError(f"trigger {what} values must lie in [0, 1]")
    return x.clone()


def _check_images(images: Tensor) -> None:
    if images.dim() != 4:
        raise DataError(f"triggers apply to batches B×C×H×W, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise DataError("triggers apply to float images in [0, 1]; convert uint8 first")


def _offset(position: Position, h: int, w: int, ph: int, pw: int) -> tuple[int, int]:
    """Top-left corner (y, x) of a ph×pw patch at ``position`` in an h×w image."""
    if ph > h or pw > w:
        raise DataError(f"a {ph}×{pw} trigger patch does not fit in {h}×{w} images")
    if isinstance(position, str):
        table = {
            "bottom-right": (h - ph, w - pw),
            "bottom-left": (h - ph, 0),
            "top-left": (0, 0),
            "top-right": (0, w - pw),
            "center": ((h - ph) // 2, (w - pw) // 2),
        }
        if position not in table:
            raise DataError(f"unknown trigger position {position!r}: one of {', '.join(POSITIONS)}")
        return table[position]
    y, x = int(position[0]), int(position[1])
    if not (0 <= y <= h - ph and 0 <= x <= w - pw):
        raise DataError(f"a {ph}×{pw} patch at (y={y}, x={x}) does not fit in {h}×{w} images")
    return y, x


def _position_to_dict(position: Position) -> str | list[int]:
    return position if isinstance(position, str) else [int(position[0]), int(position[1])]


def _position_from_dict(value: Any) -> Position:
    return value if isinstance(value, str) else (int(value[0]), int(value[1]))


def _check_position(position: Position) -> Position:
    if isinstance(position, str):
        if position not in POSITIONS:
            raise DataError(f"unknown trigger position {position!r}: one of {', '.join(POSITIONS)}")
        return position
    if len(position) != 2:
        raise DataError(f"a trigger position is a name or (y, x), got {position!r}")
    return (int(position[0]), int(position[1]))


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"blend alpha must lie in [0, 1], got {alpha}")
    return alpha


class Trigger:
    """Base of every trigger: ``apply`` stamps a batch, ``to_dict``/``from_dict`` serialise it."""

    kind: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Trigger]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            Trigger._registry[cls.kind] = cls

    def apply(self, images: Tensor) -> Tensor:
        """Float B×C×H×W in [0, 1] → a new tensor with the trigger stamped on every image."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """Plain types only (tensors as nested lists): safe for weights_only metadata."""
        raise NotImplementedError

    @classmethod
    def _from_fields(cls, d: dict) -> Trigger:
        raise NotImplementedError

    @staticmethod
    def from_dict(d: dict) -> Trigger:
        """Rebuild a trigger written by ``to_dict`` (or an ``attack`` dict holding one)."""
        if isinstance(d, dict) and isinstance(d.get("trigger"), dict):
            d = d["trigger"]
        if not isinstance(d, dict) or "kind" not in d:
            raise DataError(f"a trigger description needs a 'kind', got {d!r:.80}")
        cls = Trigger._registry.get(str(d["kind"]))
        if cls is None:
            raise DataError(
                f"unknown trigger kind {d['kind']!r}: one of {', '.join(sorted(Trigger._registry))}"
            )
        try:
            return cls._from_fields(d)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"bad {d['kind']} trigger description: {e}") from e

    @property
    def tensor(self) -> Tensor:
        """The trigger's patch or pattern, C×H×W in [0, 1]."""
        raise NotImplementedError

    def __repr__(self) -> str:
        shape = "×".join(str(s) for s in self.tensor.shape)
        extra = {k: v for k, v in self.to_dict().items() if k not in ("kind", "patch", "pattern")}
        return f"{type(self).__name__}({shape}, {extra})"


class PatchTrigger(Trigger):
    """BadNets: a C×s×s patch pasted over the s×s pixels at ``position`` (bottom-right)."""

    kind = "badnets"

    def __init__(self, patch: Tensor, position: Position = "bottom-right") -> None:
        self.patch = _as_pattern(patch, "patch")
        self.position = _check_position(position)

    @property
    def tensor(self) -> Tensor:
        """The C×s×s patch."""
        return self.patch

    def apply(self, images: Tensor) -> Tensor:
        """The images (N×C×H×W) with the patch stamped at its position."""
        _check_images(images)
        _, c, h, w = images.shape
        patch = conform_channels(self.patch, c).to(images.device, images.dtype)
        ph, pw = patch.shape[-2:]
        y, x = _offset(self.position, h, w, ph, pw)
        out = images.clone()
        region = out[:, :, y : y + ph, x : x + pw]
        out[:, :, y : y + ph, x : x + pw] = self._stamp(region, patch)
        return out

    def _stamp(self, region: Tensor, patch: Tensor) -> Tensor:
        """What the covered pixels become."""
        return patch.expand_as(region)

    def to_dict(self) -> dict:
        """The trigger as a JSON-ready dict (`Trigger.from_dict` reads it back)."""
        return {
            "kind": self.kind,
            "patch": self.patch.tolist(),
            "position": _position_to_dict(self.position),
        }

    @classmethod
    def _from_fields(cls, d: dict) -> Trigger:
        return cls(torch.tensor(d["patch"]), _position_from_dict(d.get("position", "bottom-right")))


class RandomPatchTrigger(PatchTrigger):
    """BadNets with the patch at a random position per image (uniform over where it fits).

    The positions of a batch come from a generator seeded with ``seed`` at every call, so the
    same batch is stamped the same way every time (a before/after comparison stamps the same
    pixels) while the images of a batch get independent positions.
    """

    kind = "badnets-random"

    def __init__(self, patch: Tensor, seed: int = 0) -> None:
        super().__init__(patch, "bottom-right")
        self.seed = int(seed)

    def apply(self, images: Tensor) -> Tensor:
        """The patch pasted at a random position per image (the same batch, the same places)."""
        _check_images(images)
        b, c, h, w = images.shape
        patch = conform_channels(self.patch, c).to(images.device, images.dtype)
        ph, pw = patch.shape[-2:]
        _offset("top-left", h, w, ph, pw)  # raises when the patch does not fit
        g = torch.Generator().manual_seed(self.seed)
        ys = torch.randint(0, h - ph + 1, (b,), generator=g).tolist()
        xs = torch.randint(0, w - pw + 1, (b,), generator=g).tolist()
        out = images.clone()
        for i, (y, x) in enumerate(zip(ys, xs, strict=True)):
            out[i, :, y : y + ph, x : x + pw] = patch
        return out

    def to_dict(self) -> dict:
        """The trigger as JSON-able fields (patch, seed), for the checkpoint's metadata."""
        return {"kind": self.kind, "patch": self.patch.tolist(), "seed": self.seed}

    @classmethod
    def _from_fields(cls, d: dict) -> Trigger:
        return cls(torch.tensor(d["patch"]), int(d.get("seed", 0)))


class CornerBlendTrigger(PatchTrigger):
    """Seed blend: the s×s pixels at ``position`` become (1−alpha)·image + alpha·patch."""

    kind = "corner-blend"

    def __init__(
        self, patch: Tensor, alpha: float = 0.2, position: Position = "bottom-right"
    ) -> None:
        super().__init__(patch, position)
        self.alpha = _check_alpha(alpha)

    def _stamp(self, region: Tensor, patch: Tensor) -> Tensor:
        return (1.0 - self.alpha) * region + self.alpha * patch

    def to_dict(self) -> dict:
        """The trigger as a JSON-ready dict (`Trigger.from_dict` reads it back)."""
        return {
            "kind": self.kind,
            "patch": self.patch.tolist(),
            "alpha": self.alpha,
            "position": _position_to_dict(self.position),
        }

    @classmethod
    def _from_fields(cls, d: dict) -> Trigger:
        return cls(
            torch.tensor(d["patch"]),
            float(d.get("alpha", 0.2)),
            _position_from_dict(d.get("position", "bottom-right")),
        )


class FourCornerTrigger(PatchTrigger):
    """Clean-label attack (Turner et al. 2019): the C×s×s patch pasted into all four corners.

    Corners are stamped top-left, top-right, bottom-left, bottom-right; a patch wider than half
    the image overlaps itself, the later corner winning.
    """

    kind = "four-corner"
    CORNERS: ClassVar[tuple[str, ...]] = ("top-left", "top-right", "bottom-left", "bottom-right")

    def __init__(self, patch: Tensor) -> None:
        super().__init__(patch, "bottom-right")

    def apply(self, images: Tensor) -> Tensor:
        """The images (N×C×H×W) with the patch stamped in all four corners."""
        _check_images(images)
        _, c, h, w = images.shape
        patch = conform_channels(self.patch, c).to(images.device, images.dtype)
        ph, pw = patch.shape[-2:]
        out = images.clone()
        for corner in self.CORNERS:
            y, x = _offset(corner, h, w, ph, pw)
            out[:, :, y : y + ph, x : x + pw] = patch.expand_as(out[:, :, y : y + ph, x : x + pw])
        return out

    def to_dict(self) -> dict:
        """The trigger as a JSON-ready dict (`Trigger.from_dict` reads it back)."""
        return {"kind": self.kind, "patch": self.patch.tolist()}

    @classmethod
    def _from_fields(cls, d: dict) -> Trigger:
        return cls(torch.tensor(d["patch"]))


class BlendTrigger(Trigger):
    """Chen et al. 2017: the whole image becomes (1−alpha)·image + alpha·pattern."""

    kind = "blend"

    def __init__(self, pattern: Tensor, alpha: float = 0.1) -> None:
        self.pattern = _as_pattern(pattern, "pattern")
        self.alpha = _check_alpha(alpha)

    @property
    def tensor(self) -> Tensor:
        """The blend pattern C×H×W."""
        return self.pattern

    def pattern_for(self, channels: int, size: tuple[int, int]) -> Tensor:
        """The pattern with ``channels`` channels at ``size`` (bilinear, antialiased)."""
        p = conform_channels(self.pattern, channels)
        if tuple(p.shape[-2:]) != tuple(size):
            p = F.interpolate(
                p[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True
            )[0].clamp_(0.0, 1.0)
        return p

    def apply(self, images: Tensor) -> Tensor:
        """The images (N×C×H×W) blended with the pattern: (1−alpha)·image + alpha·pattern."""
        _check_images(images)
        _, c, h, w = images.shape
        p = self.pattern_for(c, (h, w)).to(images.device, images.dtype)
        return (1.0 - self.alpha) * images + self.alpha * p

    def to_dict(self) -> dict:
        """The trigger as a JSON-ready dict (`Trigger.from_dict` reads it back)."""
        return {"kind": self.kind, "pattern": self.pattern.tolist(), "alpha": self.alpha}

    @classmethod
    def _from_fields(cls, d: dict) -> Trigger:
        return cls(torch.tensor(d["pattern"]), float(d.get("alpha", 0.1)))


_KIND_ALIASES = {
    "patch": "badnets",
    "badnets": "badnets",
    "blend": "blend",
    "corner-blend": "corner-blend",
    "corner_blend": "corner-blend",
    "four-corner": "four-corner",
    "four_corner": "four-corner",
    "cla": "four-corner",
}


def trigger_from_image(
    path: str | Path,
    *,
    kind: str = "patch",
    size: int | tuple[int, int] | None = None,
    alpha: float = 0.2,
    position: Position = "bottom-right",
) -> Trigger:
    """A trigger from an image file (or .npy): kind "patch"/"badnets", "corner-blend", "blend",
    "four-corner" (the clean-label attack's patch in every corner).

    ``size`` resizes the image (an int: s×s) — the patch size, or the blend pattern's size
    (left as is when None: a blend pattern is resized to the images when applied).
    """
    k = _KIND_ALIASES.get(kind)
    if k is None:
        raise DataError(f"unknown trigger kind {kind!r}: patch, corner-blend, four-corner or blend")
    from core.data.limited import read_image  # the isolated reader: time and memory limits

    t = read_image(path)
    if size is not None:
        hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if tuple(t.shape[-2:]) != hw:
            t = F.interpolate(
                t[None], size=hw, mode="bilinear", align_corners=False, antialias=True
            )[0].clamp_(0.0, 1.0)
    if k == "badnets":
        return PatchTrigger(t, position)
    if k == "corner-blend":
        return CornerBlendTrigger(t, alpha, position)
    if k == "four-corner":
        return FourCornerTrigger(t)
    return BlendTrigger(t, alpha)


def random_patch(size: int | tuple[int, int], channels: int = 3, seed: int = 0) -> Tensor:
    """Seed-style random trigger: uniform values in [0, 1], C×s×s, reproducible from ``seed``."""
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if channels < 1 or hw[0] < 1 or hw[1] < 1:
        raise DataError(f"a random patch needs positive channels and size, got {channels}, {hw}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand(channels, *hw, generator=g)


def poison(
    images: ImageSet, trigger: Trigger, target: int, rate: float, seed: int
) -> tuple[ImageSet, Tensor]:
    """Stamp the trigger on round(rate·N) random samples and relabel them ``target``.

    Returns the poisoned set (float32 images; the other samples unchanged) and the sorted
    int64 indices of the poisoned samples. Samples are drawn from every class, the target
    class included, as in BadNets.
    """
    if not 0.0 <= rate <= 1.0:
        raise DataError(f"poisoning rate must lie in [0, 1], got {rate}")
    n = len(images)
    if int(target) < 0 or (images.class_names and int(target) >= len(images.class_names)):
        raise DataError(f"target label {target} is not a class (0..{images.num_classes - 1})")
    g = torch.Generator().manual_seed(int(seed))
    k = int(round(rate * n))
    index = torch.randperm(n, generator=g)[:k].sort().values
    x = to_float(images.images)
    if x is images.images:
        x = x.clone()
    for start in range(0, k, 4096):
        chunk = index[start : start + 4096]
        x[chunk] = trigger.apply(x[chunk])
    labels = images.labels.clone()
    labels[index] = int(target)
    source = f"{images.source} (poisoned: {trigger.kind}, rate {rate:g}, target {target})"
    return ImageSet(x, labels, images.class_names, source.strip()), index
