"""The neuron plot's data, a whole layer at a time (Qt-free).

Clicking a neuron computes the inputs of its entire BatchNorm layer on clean and triggered
samples (``core.defense.activations.layer_inputs``, which stops the forward pass at that layer), and
keeps the last few layers: the next neuron of the same layer (arrow keys, table) is shown at
once, without any model run.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # computed on worker threads, once the engine has loaded
    import torch

PLOT_SAMPLES = 128  # clean images, and as many triggered ones (60-bin histograms)
CACHE_BYTES = 256 * 2**20  # the newest layer is always kept, older ones within this budget


@dataclass
class LayerValues:
    """Inputs of every channel of one layer: C × values, clean and (optionally) triggered."""

    clean: torch.Tensor
    triggered: torch.Tensor | None


def compute_layer_values(inspection, samples, trigger, layer: str, cancel=None) -> LayerValues:
    """One layer's clean and triggered values (``trigger``: a ResolvedTrigger or None)."""
    from core.defense.activations import layer_inputs

    common = dict(limit=PLOT_SAMPLES, device=inspection.device, cancel=cancel)
    model, spec = inspection.model, inspection.spec
    clean = layer_inputs(model, samples, spec, layer, **common)
    triggered = None
    if trigger is not None and trigger.trigger is not None:
        victims = samples.subset(samples.labels != trigger.target)
        if len(victims):
            triggered = layer_inputs(model, victims, spec, layer, trigger=trigger.trigger, **common)
    elif trigger is not None and trigger.poisoned is not None:
        triggered = layer_inputs(model, trigger.poisoned, spec, layer, **common)
    return LayerValues(clean, triggered)


class LayerValueCache:
    """The last few layers' values, valid for one model, input spec, data set and trigger."""

    def __init__(self) -> None:
        self._layers: OrderedDict[tuple, LayerValues] = OrderedDict()

    @staticmethod
    def key(inspection, samples, trigger, layer: str) -> tuple:
        return (id(inspection), inspection.spec, id(samples), id(trigger), layer)

    def get(self, key: tuple) -> LayerValues | None:
        values = self._layers.get(key)
        if values is not None:
            self._layers.move_to_end(key)
        return values

    def put(self, key: tuple, values: LayerValues) -> None:
        self._layers[key] = values
        self._layers.move_to_end(key)
        while len(self._layers) > 1 and self.nbytes() > CACHE_BYTES:
            self._layers.popitem(last=False)

    def nbytes(self) -> int:
        total = 0
        for v in self._layers.values():
            for t in (v.clean, v.triggered):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    def clear(self) -> None:
        self._layers.clear()
