"""Pre-activations of a whole BatchNorm layer on a fixed sample of images, for neuron plots.

One forward pass per batch that stops right after the layer's input is captured (the rest of
the network is not run), so the values of every channel of the layer cost less than one plain
forward pass; the window keeps them and shows any neuron of that layer without recomputing.
"""

from __future__ import annotations

import torch
from torch import nn

from core.data.images import ImageSet, InputSpec
from core.defense.evaluation import sample_subset
from core.defense.statistics import CancelCheck
from core.errors import Cancelled


class _Captured(Exception):
    """Raised inside the hook to end the forward pass once the layer's input is taken."""


def layer_inputs(
    model: nn.Module,
    images: ImageSet,
    spec: InputSpec,
    layer: str,
    *,
    trigger=None,
    limit: int | None = 256,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """C × (samples·H·W) float32: every input value of each channel of BatchNorm ``layer`` on a
    fixed random subset of at most ``limit`` images (the trigger applied when given)."""
    images = sample_subset(images, limit)
    module = dict(model.named_modules())[layer]
    chunks: list[torch.Tensor] = []

    def hook(_module, inputs):
        x = inputs[0].detach()
        chunks.append(x.transpose(0, 1).reshape(x.shape[1], -1).float().cpu())
        raise _Captured

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                if cancel is not None and cancel():
                    raise Cancelled("cancelled")
                x = spec.prepare(images.images[start : start + batch_size], trigger)
                try:
                    model(x.to(device))
                except _Captured:
                    pass
    finally:
        handle.remove()
    return torch.cat(chunks, dim=1) if chunks else torch.zeros(0, 0)
