"""Registry of the architectures the engine knows, and detection of one from a state_dict.

Detection builds each candidate on the `meta` device (shapes only, no memory, no init cost)
with the class count and input channels read off the weights, and keeps the one whose keys
and shapes `load_state_dict(strict=True)` would accept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache

import torch
import torchvision
from torch import Tensor, nn

from core.errors import ArchitectureMismatch, BnpError
from core.models import (
    cifar_resnet18,
    cifar_resnet20,
    cifar_resnet32,
    cifar_resnet56,
    preact_resnet18,
    vgg16_bn_cifar,
)


@dataclass(frozen=True)
class ArchSpec:
    """One known architecture: its name, family, natural input side and builder."""

    name: str
    family: str
    input_size: int
    build: Callable[[int, int], nn.Module]  # (num_classes, in_channels) -> model


@dataclass
class Detection:
    """The architecture, class count and input channels that fit a state_dict."""

    arch: str
    num_classes: int
    in_channels: int


def _tv_resnet18(num_classes: int, in_channels: int) -> nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def _tv_resnet50(num_classes: int, in_channels: int) -> nn.Module:
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def _tv_vgg16_bn(num_classes: int, in_channels: int) -> nn.Module:
    model = torchvision.models.vgg16_bn(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
    return model


def _tv_mobilenet_v2(num_classes: int, in_channels: int) -> nn.Module:
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.features[0][0] = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False)
    return model


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec("cifar_resnet18", "cifar_resnet", 32, cifar_resnet18),
        ArchSpec("cifar_resnet20", "cifar_resnet", 32, cifar_resnet20),
        ArchSpec("cifar_resnet32", "cifar_resnet", 32, cifar_resnet32),
        ArchSpec("cifar_resnet56", "cifar_resnet", 32, cifar_resnet56),
        ArchSpec("preact_resnet18", "preact_resnet", 32, preact_resnet18),
        ArchSpec("vgg16_bn_cifar", "vgg", 32, vgg16_bn_cifar),
        ArchSpec("resnet18", "torchvision_resnet", 224, _tv_resnet18),
        ArchSpec("resnet50", "torchvision_resnet", 224, _tv_resnet50),
        ArchSpec("vgg16_bn", "torchvision_vgg", 224, _tv_vgg16_bn),
        ArchSpec("mobilenet_v2", "torchvision_mobilenet", 224, _tv_mobilenet_v2),
    )
}


def _spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise BnpError(f"Unknown architecture {arch!r}. Known architectures: {known}.") from None


def build_model(arch: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a freshly initialised model of a registered architecture."""
    if num_classes < 1 or in_channels < 1:
        raise BnpError(
            f"Cannot build {arch}: need at least one class and one input channel "
            f"(got num_classes={num_classes}, in_channels={in_channels})."
        )
    return _spec(arch).build(num_classes, in_channels)


@cache
def _stem_and_head(arch: str) -> tuple[str, str]:
    """Weight keys of the first convolution and of the last Linear layer of an architecture."""
    with torch.device("meta"):
        model = _spec(arch).build(10, 3)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return f"{convs[0]}.weight", f"{linears[-1]}.weight"


@lru_cache(maxsize=64)
def _expected_shapes(arch: str, num_classes: int, in_channels: int) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of the architecture and its shape, from a build on `meta`."""
    with torch.device("meta"):
        model = _spec(arch).build(num_classes, in_channels)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@dataclass
class _Fit:
    """How one candidate compares with a state_dict."""

    arch: str
    num_classes: int
    in_channels: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def mismatches(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.shapes)

    def describe(self, examples: int = 3) -> str:
        def some(items: list[str]) -> str:
            more = f", … (+{len(items) - examples})" if len(items) > examples else ""
            return ", ".join(items[:examples]) + more

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {some(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {some(self.unexpected)}")
        if self.shapes:
            shown = [
                f"{key} (file {list(got)}, model {list(want)})" for key, got, want in self.shapes
            ]
            parts.append(f"{len(self.shapes)} shape mismatch(es): {some(shown)}")
        head = f"{self.arch} ({self.num_classes} classes, {self.in_channels} input channels)"
        return f"{head}: " + "; ".join(parts)


def _shape(value: object) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, Tensor) else None


def _compare(state_dict: Mapping[str, Tensor], arch: str) -> _Fit:
    stem, head = _stem_and_head(arch)
    head_shape, stem_shape = _shape(state_dict.get(head)), _shape(state_dict.get(stem))
    num_classes = head_shape[0] if head_shape and len(head_shape) == 2 else 10
    in_channels = stem_shape[1] if stem_shape and len(stem_shape) == 4 else 3
    expected = _expected_shapes(arch, num_classes, in_channels)
    fit = _Fit(arch, num_classes, in_channels)
    for key, want in expected.items():
        if key not in state_dict:
            # strict loading accepts a missing BatchNorm counter in a state_dict without
            # version metadata (BatchNorm fills in 0), as in checkpoints from before torch 0.4.1.
            if not key.endswith("num_batches_tracked"):
                fit.missing.append(key)
        elif (got := _shape(state_dict[key])) != want:
            fit.shapes.append((key, got if got is not None else (), want))
    fit.unexpected = [key for key in state_dict if key not in expected]
    return fit


def detect_architecture(state_dict: Mapping[str, Tensor], arch: str | None = None) -> Detection:
    """Find the registered architecture whose keys and shapes fit the state_dict exactly."""
    if arch is not None:
        if arch not in ARCHITECTURES:
            known = ", ".join(ARCHITECTURES)
            raise ArchitectureMismatch(f"Unknown architecture {arch!r}. Known: {known}.")
        fit = _compare(state_dict, arch)
        if fit.mismatches:
            raise ArchitectureMismatch(
                f"The weights do not fit the architecture {arch!r}: {fit.describe(5)}."
            )
        return Detection(fit.arch, fit.num_classes, fit.in_channels)

    fits = [_compare(state_dict, name) for name in ARCHITECTURES]
    for fit in fits:
        if not fit.mismatches:
            return Detection(fit.arch, fit.num_classes, fit.in_channels)
    closest = sorted(fits, key=lambda f: f.mismatches)[:3]
    lines = "\n".join(f"  - {fit.describe()}" for fit in closest)
    raise ArchitectureMismatch(
        f"The weights ({len(state_dict)} tensors) do not fit any known architecture. "
        f"Closest candidates:\n{lines}\n"
        f"Known architectures: {', '.join(ARCHITECTURES)}."
    )
