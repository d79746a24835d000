"""The selected neuron's plot data: pre-activations on clean and triggered samples, from the
layer cache at once or from one layer pass on a worker (lane "neuron"). A mixin of `Session`."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

from bnp_gui.neuron_values import LayerValueCache
from bnp_gui.workers import Job

if TYPE_CHECKING:
    import torch

Neuron = tuple[str, int]


@dataclasses.dataclass
class NeuronActivations:
    """Pre-activation values of one neuron on clean and triggered samples + BN running stats."""

    layer: str
    channel: int
    clean: torch.Tensor
    triggered: torch.Tensor | None
    running_mean: float
    running_var: float


class NeuronWork:
    """The neuron plot of a `Session` (mixin)."""

    def select_neuron(self, neuron: Neuron | None) -> None:
        if neuron == self.selected:
            return
        self.selected = neuron
        self.activations = None
        self.selection_changed.emit()
        self.activations_changed.emit()
        if neuron is not None:
            self._start_activations()

    def _start_activations(self) -> None:
        """The selected neuron's plot data: from the layer cache at once, else one layer pass
        on a worker (the trade-off curve steps aside and resumes afterwards)."""
        from bnp_gui.neuron_values import compute_layer_values

        inspection, neuron = self.inspection, self.selected
        samples = self.data.get("clean") or self.data.get("test")
        if inspection is None or neuron is None or samples is None:
            return
        trigger = self.trigger
        layer, channel = neuron
        key = LayerValueCache.key(inspection, samples, trigger, layer)
        cached = self._layer_values.get(key)
        if cached is not None:
            self.runner.cancel("neuron", notify=False)
            self._activations_ready(self._neuron_activations(inspection, neuron, cached))
            return

        def activations(job: Job):
            values = compute_layer_values(inspection, samples, trigger, layer, job.cancelled)
            return key, neuron, values

        def ready(result) -> None:
            key, neuron, values = result
            self._layer_values.put(key, values)
            if self.selected == neuron:
                self._activations_ready(self._neuron_activations(inspection, neuron, values))
            elif self.selected is not None:
                self._start_activations()
            self._start_curve()  # it stepped aside for the click

        if self.runner.is_running("curve"):
            self.runner.cancel("curve", notify=False)
        self.runner.start(
            "neuron",
            activations,
            done=self._for_model(inspection, ready),
            error=self._for_model(
                inspection, functools.partial(self._report_error, "Cannot plot the neuron")
            ),
        )

    @staticmethod
    def _neuron_activations(inspection, neuron: Neuron, values) -> NeuronActivations:
        layer, channel = neuron
        mean, var = inspection.running_stats(layer, channel)
        triggered = values.triggered[channel] if values.triggered is not None else None
        return NeuronActivations(layer, channel, values.clean[channel], triggered, mean, var)

    def _activations_ready(self, result: NeuronActivations) -> None:
        if self.selected != (result.layer, result.channel):
            return
        self.activations = result
        self.activations_changed.emit()
