"""Two groups in one score: Otsu's cut and a two-component Gaussian mixture (EM from that cut),
with Ashman's D as the separation of the two modes."""

from __future__ import annotations

import math

import torch


def otsu_threshold(values: torch.Tensor) -> float:
    """The cut that maximises the between-class variance of two groups (Otsu)."""
    v = values.double().sort().values
    n = len(v)
    if n < 2 or v[0] == v[-1]:
        return float(v[-1]) if n else 0.0
    csum = v.cumsum(0)
    i = torch.arange(1, n, dtype=torch.float64)
    mean_low = csum[:-1] / i
    mean_high = (csum[-1] - csum[:-1]) / (n - i)
    between = i * (n - i) * (mean_high - mean_low).square()
    between[v[1:] == v[:-1]] = -1  # no cut between equal values
    best = int(between.argmax())
    return float((v[best] + v[best + 1]) / 2)


def two_modes(values: torch.Tensor, steps: int = 200) -> tuple[torch.Tensor, float, float]:
    """Two-component Gaussian mixture (EM from Otsu's cut): (in the high mode, the cut between
    the modes, Ashman's D separation). One mode only: nothing high, D = 0."""
    x = values.double()
    cut = otsu_threshold(x)
    high = x > cut
    if len(x) < 4 or high.sum() < 1 or (~high).sum() < 1:
        return torch.zeros_like(x, dtype=torch.bool), cut, 0.0
    floor = 1e-6 * float(x.var()) + 1e-12
    w = float(high.double().mean())
    mu = [float(x[~high].mean()), float(x[high].mean())]
    var = [max(float(x[~high].var()) if (~high).sum() > 1 else floor, floor)]
    var.append(max(float(x[high].var()) if high.sum() > 1 else floor, floor))
    resp = high.double()
    for _ in range(steps):
        log_a = math.log(max(1 - w, 1e-12)) - 0.5 * (
            math.log(var[0]) + (x - mu[0]).square() / var[0]
        )
        log_b = math.log(max(w, 1e-12)) - 0.5 * (math.log(var[1]) + (x - mu[1]).square() / var[1])
        resp = torch.sigmoid(log_b - log_a)
        new_w = float(resp.mean())
        if new_w <= 0 or new_w >= 1:
            break
        mu = [
            float(((1 - resp) * x).sum() / (1 - resp).sum()),
            float((resp * x).sum() / resp.sum()),
        ]
        var = [
            max(float(((1 - resp) * (x - mu[0]).square()).sum() / (1 - resp).sum()), floor),
            max(float((resp * (x - mu[1]).square()).sum() / resp.sum()), floor),
        ]
        if abs(new_w - w) < 1e-9:
            w = new_w
            break
        w = new_w
    if mu[1] < mu[0]:
        resp, mu, var = 1 - resp, mu[::-1], var[::-1]
    in_high = resp > 0.5
    if not in_high.any() or in_high.all():
        return torch.zeros_like(x, dtype=torch.bool), cut, 0.0
    cut = float((x[in_high].min() + x[~in_high].max()) / 2)
    separation = math.sqrt(2) * abs(mu[1] - mu[0]) / math.sqrt(var[0] + var[1])
    return in_high, cut, separation
