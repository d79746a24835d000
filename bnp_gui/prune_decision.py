"""The prune mask of the current decisions, built from scores computed once (Qt-free).

``Inspection.mask`` recomputes EP/BNP scores on every call (about a second for EP), which is
too slow for a preview that follows a slider. This builds the same mask from the session's cached
scores with the engine's own pieces (``outlier_flags``, ``PruneMask``), in the same order as
``Inspection.mask``; a test checks that both give identical masks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from core.masks import Neuron, PruneMask
from core.scores import outlier_flags

# SPEC §1: EP flags low entropy, BNP and CLP high scores; only CLP also zeroes β.
DIRECTION = {"ep": "low", "bnp": "high", "clp": "high"}
ZERO_BETA = {"ep": False, "bnp": False, "clp": True}

Scores = Mapping[str, Mapping[str, torch.Tensor]]


def method_flags(scores: Scores, method: str, k: float) -> dict[str, torch.Tensor]:
    """Neurons one method flags at threshold k (per layer, boolean)."""
    return outlier_flags(dict(scores[method]), k, DIRECTION[method])


def mask_from_scores(
    scores: Scores,
    methods: Mapping[str, float],
    combine: str,
    force_prune: Iterable[Neuron],
    keep: Iterable[Neuron],
    channels: dict[str, int],
) -> PruneMask:
    """What ``Inspection.mask(methods, combine, force_prune, keep)`` gives, from cached scores."""
    result = None
    for method, k in methods.items():
        m = PruneMask.from_flags(method_flags(scores, method, k), zero_beta=ZERO_BETA[method])
        if result is None:
            result = m
        elif combine == "union":
            result = result.union(m)
        else:
            result = result.intersection(m)
    if result is None:
        result = PruneMask()
    return result.with_overrides(force_prune, keep, channels=channels, zero_beta="clp" in methods)
