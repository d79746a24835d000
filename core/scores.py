"""Neuron scores of the three defenses (EP, BNP, CLP) and the per-layer outlier rule (SPEC §1).

Every score function returns `{layer name: float64 tensor of C scores}`; a neuron that cannot
be scored holds NaN and is ignored by `outlier_flags`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from core.graph import NeuronLayer
from core.statistics import Statistics

EP_BIN_WIDTH = 0.01


def bnp_scores(model: nn.Module, stats: Statistics) -> dict[str, torch.Tensor]:
    """KL( N(clean mean, clean var) || N(running_mean, running_var) ) per neuron."""
    modules = dict(model.named_modules())
    scores = {}
    for name, layer in stats.layers.items():
        bn = modules[name]
        mu, var = layer.mean, layer.var
        m = bn.running_mean.detach().double().cpu()
        v = bn.running_var.detach().double().cpu()
        scores[name] = 0.5 * torch.log(v / var) + (var + (mu - m).square()) / (2 * v) - 0.5
    return scores


def ep_scores(stats: Statistics) -> dict[str, torch.Tensor]:
    """Entropy of each neuron's standardised per-sample maximum; NaN for constant neurons."""
    return {name: ep_entropy(layer.maxima) for name, layer in stats.layers.items()}


def ep_entropy(maxima: torch.Tensor) -> torch.Tensor:
    """EP entropy per column of an N×C matrix of maxima, in one vectorised pass.

    Same counts as SPEC's per-bin loop: float32 edges e_n = g + float32(n·0.01), a value
    counts in bin n only when e_n < f' < e_(n+1). Constant columns get NaN.
    """
    f = maxima.float()
    n_samples, channels = f.shape
    entropy = torch.full((channels,), float("nan"), dtype=torch.float64)
    if n_samples < 2:
        return entropy
    std, mean = torch.std_mean(f, dim=0)
    ok = torch.isfinite(std) & (std > 0)
    if not ok.any():
        return entropy
    entropy[ok] = histogram_entropy((f[:, ok] - mean[ok]) / std[ok])
    return entropy


def histogram_entropy(z: torch.Tensor) -> torch.Tensor:
    """Entropy of each column of standardised values over the layer-wide 0.01-wide bins."""
    n_samples, columns = z.shape
    g, big_g = z.min(), z.max()
    nbins = int(torch.floor((big_g - g) / EP_BIN_WIDTH))
    if nbins < 1:
        return torch.zeros(columns, dtype=torch.float64)
    steps = torch.arange(nbins + 1, dtype=torch.float64) * EP_BIN_WIDTH
    edges = g + steps.float()
    zt = z.T.contiguous()
    index = torch.searchsorted(edges, zt, right=True) - 1  # e_i <= z < e_(i+1)
    inside = (index >= 0) & (index < nbins)
    index = index.clamp(0, nbins - 1)
    inside &= zt != edges[index]  # exact hits on an edge count nowhere
    flat = (torch.arange(columns).unsqueeze(1) * nbins + index)[inside]
    counts = torch.bincount(flat, minlength=columns * nbins).view(columns, nbins).double()
    p = counts / n_samples
    return -(p * torch.log(torch.where(p > 0, p, 1.0))).sum(dim=1)


def clp_scores(model: nn.Module, layers: list[NeuronLayer]) -> dict[str, torch.Tensor]:
    """Upper bound of each channel's Lipschitz constant (UCLC); layers fed by a conv only."""
    modules = dict(model.named_modules())
    scores = {}
    for layer in layers:
        if layer.conv is None:
            continue
        conv, bn = modules[layer.conv], modules[layer.name]
        weight = conv.weight.detach().double().cpu()
        scale = bn.weight.detach().double().cpu() / bn.running_var.detach().double().cpu().sqrt()
        w = weight.flatten(2) * scale.abs().view(-1, 1, 1)  # C × in × (kh·kw)
        scores[layer.name] = largest_singular_values(w)
    return scores


def largest_singular_values(w: torch.Tensor) -> torch.Tensor:
    """Largest singular value of each matrix of a C×m×n batch, through the smaller Gram matrix."""
    gram = w @ w.mT if w.shape[1] <= w.shape[2] else w.mT @ w
    if gram.shape[-1] == 1:
        return gram.view(-1).clamp_min(0).sqrt()
    return torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0).sqrt()


def outlier_flags(
    scores: dict[str, torch.Tensor], k: float, direction: Literal["high", "low"]
) -> dict[str, torch.Tensor]:
    """Flag neurons beyond mean_L ± k·std_L of their own layer (NaN scores never flagged)."""
    flags = {}
    for name, s in scores.items():
        valid = ~torch.isnan(s)
        values = s[valid]
        if values.numel() < 2:
            flags[name] = torch.zeros_like(s, dtype=torch.bool)
            continue
        std, mean = torch.std_mean(values)
        if direction == "high":
            flags[name] = valid & (s > mean + k * std)
        else:
            flags[name] = valid & (s < mean - k * std)
    return flags


def z_scores(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each score as (score − mean_L) / std_L of its layer, for display."""
    result = {}
    for name, s in scores.items():
        values = s[~torch.isnan(s)]
        if values.numel() < 2:
            result[name] = torch.full_like(s, float("nan"))
            continue
        std, mean = torch.std_mean(values)
        result[name] = (s - mean) / std if std > 0 else torch.zeros_like(s)
    return result
