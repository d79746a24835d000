"""Which neurons to prune, and the two ways of pruning them.

A `PruneMask` says, per BatchNorm layer, which channels get γ = 0 and which also get β = 0
(CLP). `parameters()` gives masked copies of the affected BatchNorm parameters for previews
through `torch.func.functional_call` (the loaded weights stay untouched); `apply_()` writes
the same zeros into a model for export, so both give the same arithmetic. Torch is imported where
it is used: the window holds an empty mask before the engine has loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

Neuron = tuple[str, int]


def true_channels(flags: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """``{layer: [channels]}`` of the True entries of per-layer booleans; empty layers left out."""
    out = {}
    for name, f in flags.items():
        idx = f.nonzero().flatten().tolist()
        if idx:
            out[name] = idx
    return out


@dataclass
class PruneMask:
    """Per-layer boolean masks: `gamma[c]` prunes γ_c, `beta[c]` also zeroes β_c."""

    gamma: dict[str, torch.Tensor] = field(default_factory=dict)
    beta: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_flags(cls, flags: dict[str, torch.Tensor], zero_beta: bool) -> PruneMask:
        """A mask pruning the flagged neurons (CLP zeroes β too, EP/BNP keep it)."""
        gamma = {name: f.clone().bool() for name, f in flags.items()}
        beta = {name: f.clone().bool() for name, f in flags.items()} if zero_beta else {}
        return cls(gamma, beta)

    def _combine(self, other: PruneMask, op) -> PruneMask:
        import torch

        def merge(a: dict, b: dict) -> dict:
            out = {}
            for name in a.keys() | b.keys():
                ref = a.get(name, b.get(name))
                out[name] = op(
                    a.get(name, torch.zeros_like(ref)), b.get(name, torch.zeros_like(ref))
                )
            return out

        gamma = merge(self.gamma, other.gamma)
        beta = merge(self.beta, other.beta)
        # a neuron zeroes β only if it is pruned at all
        beta = {name: b & gamma[name] for name, b in beta.items()}
        return PruneMask(gamma, beta)

    def union(self, other: PruneMask) -> PruneMask:
        """Neurons pruned by either mask (β zeroed where either zeroes it)."""
        import torch

        return self._combine(other, torch.logical_or)

    def intersection(self, other: PruneMask) -> PruneMask:
        """Neurons pruned by both masks; β zeroed where either mask zeroes it."""
        import torch

        gamma = self._combine(other, torch.logical_and).gamma
        beta = self._combine(other, torch.logical_or).beta
        return PruneMask(gamma, {name: b & gamma[name] for name, b in beta.items()})

    def with_overrides(
        self,
        force_prune: Iterable[Neuron] = (),
        keep: Iterable[Neuron] = (),
        channels: dict[str, int] | None = None,
        zero_beta: bool = False,
    ) -> PruneMask:
        """This mask with neurons forced in (γ = 0, and β = 0 when `zero_beta`) or kept."""
        gamma = {name: m.clone() for name, m in self.gamma.items()}
        beta = {name: m.clone() for name, m in self.beta.items()}

        import torch

        def row(masks: dict, name: str) -> torch.Tensor:
            if name not in masks:
                size = (channels or {}).get(name)
                if size is None:
                    ref = self.gamma.get(name)
                    if ref is None:
                        raise KeyError(f"Unknown layer size for {name!r}; pass `channels`.")
                    size = ref.numel()
                masks[name] = torch.zeros(size, dtype=torch.bool)
            return masks[name]

        for name, c in force_prune:
            row(gamma, name)[c] = True
            if zero_beta:
                row(beta, name)[c] = True
        for name, c in keep:
            row(gamma, name)[c] = False
            if name in beta:
                beta[name][c] = False
        return PruneMask(gamma, beta)

    def count(self) -> int:
        """Number of pruned neurons."""
        return int(sum(int(m.sum()) for m in self.gamma.values()))

    def per_layer_counts(self) -> dict[str, int]:
        """Pruned neurons per layer."""
        return {name: int(m.sum()) for name, m in self.gamma.items()}

    def neurons(self) -> dict[str, list[int]]:
        """Pruned channel indices per layer (layers with none left out)."""
        return true_channels(self.gamma)

    def parameters(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Masked copies of the BatchNorm weights/biases this mask touches."""
        modules = dict(model.named_modules())
        params = {}
        for name, m in self.gamma.items():
            if not m.any():
                continue
            bn = modules[name]
            params[f"{name}.weight"] = bn.weight.detach().masked_fill(m.to(bn.weight.device), 0)
            b = self.beta.get(name)
            if b is not None and b.any():
                params[f"{name}.bias"] = bn.bias.detach().masked_fill(b.to(bn.bias.device), 0)
        return params

    def apply_(self, model: nn.Module) -> None:
        """Write the zeros into `model` itself (for export)."""
        import torch

        modules = dict(model.named_modules())
        with torch.no_grad():
            for key, value in self.parameters(model).items():
                name, attr = key.rsplit(".", 1)
                getattr(modules[name], attr).copy_(value)
