"""Neuron scores of the three defenses (EP, BNP, CLP) and the per-layer outlier rule (SPEC §1).

Every score function returns `{layer name: float64 tensor of C scores}`; a neuron that cannot
be scored holds NaN and is ignored by `outlier_flags`.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch
from torch import nn

from core.defense.statistics import Statistics
from core.errors import BnpError
from core.model.graph import NeuronLayer, conv_weight


def largest_eigenvalues(grams: torch.Tensor) -> torch.Tensor:
    """`core.defense.eigen`'s kernel, imported on first use: numba's import is not needed to
    describe a model (`bnp info`), only to score CLP."""
    from core.defense.eigen import largest_eigenvalues as kernel

    return kernel(grams)


EP_BIN_WIDTH = 0.01
BNP_UNAVAILABLE = (
    "BNP is unavailable for this model: its BatchNorm layers carry no running statistics "
    "(running_mean/running_var), which BNP compares the clean statistics against."
)


def running_var(bn: nn.Module) -> torch.Tensor:
    """The BatchNorm's running variance (float64, CPU), or ones where the file has none:
    v_c = 1, what the reference code computes on such a file (SPEC §1)."""
    if bn.running_var is None:
        return torch.ones(bn.num_features, dtype=torch.float64)
    return bn.running_var.detach().double().cpu()


def bnp_scores(model: nn.Module, stats: Statistics) -> dict[str, torch.Tensor]:
    """KL( N(clean mean, clean var) || N(running_mean, running_var) ) per neuron.

    A neuron whose clean pre-activation is constant (var 0) or whose running variance is 0
    has no finite KL: like EP's constant neurons it gets NaN (no score, never flagged).
    """
    modules = dict(model.named_modules())
    scores = {}
    for name, layer in stats.layers.items():
        bn = modules[name]
        if bn.running_mean is None or bn.running_var is None:
            continue  # no statistics to compare against (SPEC §1): BNP has no score here
        mu, var = layer.mean, layer.var
        m = bn.running_mean.detach().double().cpu()
        v = bn.running_var.detach().double().cpu()
        kl = 0.5 * torch.log(v / var) + (var + (mu - m).square()) / (2 * v) - 0.5
        scores[name] = torch.where((var > 0) & (v > 0), kl, float("nan"))
    if stats.layers and not scores:
        raise BnpError(BNP_UNAVAILABLE)
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
    mean, std = f.mean(dim=0), f.std(dim=0)  # as SPEC's reference does, bit for bit
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
    # edges e_0..e_(nbins+1), float32 as SPEC says; the last one only bounds the search below
    edges = g + (torch.arange(nbins + 2, dtype=torch.float64) * EP_BIN_WIDTH).float()
    # bin i with e_i <= z < e_(i+1): the arithmetic guess is off by at most one near an edge
    # (float32 rounding is far below a bin width), so one step each way makes it exact
    index = ((z - g) / EP_BIN_WIDTH).long().clamp_(0, nbins)
    index -= (z < edges[index]).long()
    index += (z >= edges[index + 1]).long()
    # exact hits on an edge, and values past e_nbins, go to a discard row (bin nbins)
    index = torch.where(z == edges[index], nbins, index).clamp_(max=nbins)
    keys = index * columns + torch.arange(columns)
    counts = torch.bincount(keys.flatten(), minlength=(nbins + 1) * columns)[: nbins * columns]
    occupied = torch.nonzero(counts).flatten()
    p = counts[occupied].double() / n_samples
    entropy = torch.zeros(columns, dtype=torch.float64)
    return entropy.index_add_(0, occupied % columns, -p * torch.log(p))


def clp_scores(model: nn.Module, layers: list[NeuronLayer]) -> dict[str, torch.Tensor]:
    """Upper bound of each channel's Lipschitz constant (UCLC); layers fed by a conv only.

    σ_max(W_c · |γ_c/√v_c|) = |γ_c/√v_c| · σ_max(W_c), and σ_max(W_c)² is the largest eigenvalue
    of the smaller Gram matrix of W_c (core.defense.eigen). Batched Gram matrices and the eigenvalue
    kernel both run single-threaded and release the GIL, so `torch.get_num_threads()` threads
    each take an equal share of every layer's channels.
    """
    modules = dict(model.named_modules())
    paired = [layer for layer in layers if layer.conv is not None]
    if not paired:
        return {}
    weights = [conv_weight(modules[layer.conv]).flatten(2) for layer in paired]
    workers = max(1, min(torch.get_num_threads(), max(len(w) for w in weights)))
    splits = [w.tensor_split(workers) for w in weights]  # tensor_split always gives `workers`
    shares = [list(share) for share in zip(*splits, strict=True)]
    if workers == 1:
        parts = [_largest_gram_eigenvalues(shares[0])]
    else:
        parts = list(_pool(workers).map(_largest_gram_eigenvalues, shares))
    # worker-major → layer-major; then one float64 pass over all channels
    eigen = torch.cat([part[j] for j in range(len(paired)) for part in parts]).clamp_min(0)
    gamma = torch.cat([modules[layer.name].weight.detach().double().cpu() for layer in paired])
    var = torch.cat([running_var(modules[layer.name]) for layer in paired])
    uclc = (eigen * (gamma * gamma / var)).sqrt()
    names = [layer.name for layer in paired]
    return dict(zip(names, uclc.split([len(w) for w in weights]), strict=True))


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    # kept for the process: a fresh thread pays for its own OpenMP team on its first torch call
    return ThreadPoolExecutor(workers, thread_name_prefix="clp")


def _largest_gram_eigenvalues(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """λ_max (float64) of each channel's smaller Gram matrix, for C×in×k weights.

    All Gram matrices of one size share one kernel call.
    """
    grams = [_smaller_gram(w) for w in weights]
    by_size: dict[int, list[int]] = {}
    for i, gram in enumerate(grams):
        by_size.setdefault(gram.shape[-1], []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(grams)
    for members in by_size.values():
        values = largest_eigenvalues(torch.cat([grams[i] for i in members]))
        for i, v in zip(members, values.split([len(grams[i]) for i in members]), strict=True):
            out[i] = v
    return out


def _smaller_gram(w: torch.Tensor) -> torch.Tensor:
    """W·Wᵀ or Wᵀ·W, whichever is smaller, of each matrix of a C×m×n batch."""
    return w @ w.mT if w.shape[1] <= w.shape[2] else w.mT @ w


def largest_singular_values(w: torch.Tensor) -> torch.Tensor:
    """Largest singular value (float64) of each matrix of a C×m×n batch, via the smaller Gram."""
    return largest_eigenvalues(_smaller_gram(w)).clamp_min(0).sqrt()


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
