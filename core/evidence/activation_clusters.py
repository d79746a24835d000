"""Which samples labelled as the inferred target are poisoned: activation clustering within the
target class, anchored to the clean samples of that class.

Chen et al. (2018) split the samples of one label into two clusters of their late-layer
activations; the poisoned ones form their own cluster because the model reaches the label by
another route (the trigger) than for genuine members of the class. Here the clustering runs
after the neuron evidence has named a target, only on the suspect samples carrying that label,
and is seeded and checked by the defender's data: one centre starts at the samples in the
neurons' high mode, the other at the clean samples of the target class, and the split is kept
only where the clean samples of the class stay on their own side and the high mode on the other.

The features are the statistics pass's per-sample spatial means of the last BatchNorm inputs
(no extra forward pass, any model the statistics run on), each neuron scaled by its standard
deviation over the clean samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.defense.statistics import Statistics

FEATURE_LAYERS = 3  # the last BatchNorm layers whose per-sample means are the features
MAX_CLEAN_SHARE = 0.1  # clean target-class samples allowed on the poisoned side
MIN_SEED_KEPT = 0.5  # share of the neuron high mode the poisoned cluster must keep
MIN_CLUSTER = 3  # smaller poisoned clusters are no split
MIN_CLEAN_OF_TARGET = 5  # clean samples of the target class needed to anchor the split
LLOYD_STEPS = 100


@dataclass
class ClusterSplit:
    """The 2-means split of the target-labelled suspect samples, and whether it holds."""

    poisoned: torch.Tensor  # N bool: suspect samples in the poisoned cluster
    margin: torch.Tensor  # N float64: z on the clean → poisoned axis (0: other labels)
    clean_share: float  # clean target-class samples nearer the poisoned centre
    seed_kept: float  # share of the high-mode seeds in the poisoned cluster
    accepted: bool
    reason: str


def late_features(stats: Statistics, layers: int = FEATURE_LAYERS) -> torch.Tensor:
    """N×D float64: per-sample spatial means of the last `layers` BatchNorm inputs."""
    names = list(stats.layers)[-layers:]
    return torch.cat([stats.layers[n].means.double() for n in names], dim=1)


def lloyd(
    x: torch.Tensor, centre_p: torch.Tensor, centre_c: torch.Tensor, steps: int = LLOYD_STEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-means (Lloyd) on the rows of `x` from the two given centres; returns the centres."""
    assigned = None
    for _ in range(steps):
        near_p = (x - centre_p).square().sum(1) < (x - centre_c).square().sum(1)
        if not near_p.any() or near_p.all():
            break
        if assigned is not None and torch.equal(near_p, assigned):
            break
        assigned = near_p
        centre_p, centre_c = x[near_p].mean(0), x[~near_p].mean(0)
    return centre_p, centre_c


def anchored_mixture(values: torch.Tensor, seeds: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """Which `values` belong to a second Gaussian beside a first held at N(0, 1) (EM over the
    second's weight, mean and variance, started at the `seeds`): the high component."""
    x = values.double()
    start = seeds & (x > 0)
    if not start.any():
        return torch.zeros_like(x, dtype=torch.bool)
    # every row a seed gives w = 1, and log(1 - w) below has no value: keep w inside (0, 1)
    w = min(max(float(start.double().mean()), 1.0 / len(x)), 1.0 - 0.5 / len(x))
    mu = float(x[start].mean())
    var = max(float(x[start].var()) if int(start.sum()) > 1 else 1.0, 1.0)
    log_null = -0.5 * x.square()
    resp = start.double()
    for _ in range(steps):
        log_high = -0.5 * (math.log(var) + (x - mu).square() / var)
        resp = torch.sigmoid(math.log(w) + log_high - math.log(1 - w) - log_null)
        total = float(resp.sum())
        if total < 1e-9 or total > len(x) - 1e-9:
            break
        new_w = total / len(x)
        mu = float((resp * x).sum() / total)
        var = max(float((resp * (x - mu).square()).sum() / total), 1.0)
        if abs(new_w - w) < 1e-9:
            break
        w = new_w
    return (resp > 0.5) & (x > 0)


def _scale(clean: torch.Tensor) -> torch.Tensor:
    std = clean.std(0)
    floor = 1e-6 * float(std.max()) + 1e-12 if len(std) else 1e-12
    return torch.where(std > floor, std, torch.full_like(std, float("inf")))


def split_target_class(
    train: Statistics,
    clean: Statistics,
    labels: torch.Tensor,
    clean_labels: torch.Tensor,
    target: int,
    seeds: torch.Tensor,
) -> ClusterSplit:
    """Split the suspect samples labelled `target` into a clean and a poisoned cluster.

    `seeds`: N bool, the samples the neuron evidence already puts in the high mode (labelled
    `target`). The split is accepted when the poisoned cluster keeps most seeds, holds at
    least `MIN_CLUSTER` samples and at most `MAX_CLEAN_SHARE` of the clean target-class
    samples fall nearer its centre."""
    n = len(labels)
    nothing = torch.zeros(n, dtype=torch.bool)
    zeros = torch.zeros(n, dtype=torch.float64)
    of_target = labels == target
    seeds = seeds & of_target
    clean_t = clean_labels == target
    if int(clean_t.sum()) < MIN_CLEAN_OF_TARGET or not seeds.any():
        why = "too few clean samples of the target" if seeds.any() else "no seed"
        return ClusterSplit(nothing, zeros, 1.0, 0.0, False, why)
    raw_train, raw_clean = late_features(train), late_features(clean)
    scale = _scale(raw_clean)
    x = raw_train / scale
    ref = (raw_clean / scale)[clean_t]
    rows = torch.nonzero(of_target).flatten()
    xs = x[rows]
    centre_p, centre_c = lloyd(xs, x[seeds].mean(0), ref.mean(0))
    # the axis from the clean centre to the poisoned one; positions on it as z-scores against
    # the clean samples of the target class
    axis = centre_p - centre_c
    margin = zeros.clone()
    length = float(axis.norm())
    ref_proj = ref @ (axis / length) if length > 0 else torch.zeros(len(ref), dtype=x.dtype)
    spread = float(ref_proj.std()) if len(ref_proj) > 1 else 0.0
    if length == 0 or not spread > 0:
        return ClusterSplit(nothing, zeros, 1.0, 0.0, False, "no two clusters")
    margin[rows] = (xs @ (axis / length) - float(ref_proj.mean())) / spread
    ref_margin = (ref_proj - ref_proj.mean()) / spread
    # the clean samples of the target sit at N(0, 1) on this axis (their margins are z-scores
    # against the clean reference); the poisoned cluster, spread wider, is the second component
    # of a mixture whose first is held at N(0, 1): the cut falls where the two meet, not halfway
    high = anchored_mixture(margin[rows], seeds[rows])
    cut = float(margin[rows][high].min()) if high.any() else math.inf
    poisoned = nothing.clone()
    poisoned[rows] = high
    clean_share = float((ref_margin > cut).double().mean())
    seed_kept = float(poisoned[seeds].double().mean())
    size = int(high.sum())
    if size < MIN_CLUSTER or size == len(rows):
        return ClusterSplit(poisoned, margin, clean_share, seed_kept, False, "no two clusters")
    if seed_kept < MIN_SEED_KEPT:
        why = f"the poisoned cluster keeps only {seed_kept:.0%} of the high mode"
        return ClusterSplit(poisoned, margin, clean_share, seed_kept, False, why)
    if clean_share > MAX_CLEAN_SHARE:
        why = f"{clean_share:.0%} of the clean target-class samples fall on the poisoned side"
        return ClusterSplit(poisoned, margin, clean_share, seed_kept, False, why)
    return ClusterSplit(poisoned, margin, clean_share, seed_kept, True, "accepted")
