"""One streaming pass over a data set that collects everything EP, BNP and the plots need.

For every neuron (BatchNorm channel) the pass keeps the count, mean and sum of squared
deviations of its pre-activation (the BatchNorm's input), merged across samples with Chan et
al.'s pairwise update so shards combine exactly, plus each sample's spatial maximum (EP),
spatial mean (distribution plots) and spatial sum of squared deviations: with those three per
sample, the statistics of any subset of the samples follow without another pass
(`Statistics.subset`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from core.data.images import ImageSet, InputSpec
from core.errors import BnpError, Cancelled
from core.model.graph import NeuronLayer

Progress = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


@dataclass
class LayerStatistics:
    """Pre-activation statistics of one layer's neurons over the samples seen so far."""

    count: int
    mean: torch.Tensor  # C, float64
    m2: torch.Tensor  # C, float64: sum of squared deviations from the mean
    maxima: torch.Tensor  # N×C, float32: per-sample max over H×W
    means: torch.Tensor  # N×C, float32: per-sample mean over H×W
    # N×C, float32: per-sample sum of squared deviations from its own mean over H×W (None
    # where not kept: statistics made elsewhere, which then cannot be subset)
    m2s: torch.Tensor | None = None

    @property
    def var(self) -> torch.Tensor:
        """Unbiased variance over every (sample, position) element."""
        return self.m2 / max(self.count - 1, 1)

    def merge(self, other: LayerStatistics) -> LayerStatistics:
        """Statistics of the union of both sample sets (order: self, then other)."""
        mean, m2, count = _chan_merge(
            self.mean, self.m2, self.count, other.mean, other.m2, other.count
        )
        return LayerStatistics(
            count,
            mean,
            m2,
            torch.cat([self.maxima, other.maxima]),
            torch.cat([self.means, other.means]),
            None if self.m2s is None or other.m2s is None else torch.cat([self.m2s, other.m2s]),
        )

    def subset(self, rows: torch.Tensor) -> LayerStatistics:
        """The statistics of the samples `rows` alone, as a pass over them would give them
        (up to the order of float64 summation): from the per-sample rows, no forward pass."""
        if self.m2s is None:
            raise BnpError("These statistics keep no per-sample variances: collect them again.")
        n = len(self.means)
        hw = self.count // n if n else 0
        if n == 0 or hw * n != self.count:
            raise BnpError("These statistics do not hold whole samples: collect them again.")
        if len(rows) == 0:
            raise BnpError("A subset of no samples has no statistics.")
        means, m2s = self.means[rows], self.m2s[rows]
        mean, m2, count = _summarise_batch(means, m2s, hw)
        return LayerStatistics(count, mean, m2, self.maxima[rows], means, m2s)


@dataclass
class Statistics:
    """Per-layer statistics of one data set."""

    layers: dict[str, LayerStatistics]
    n_samples: int
    # N int64: the unpruned model's predicted class per sample (the pass runs the whole model
    # anyway); None where its output is not one row of class scores per sample
    predictions: torch.Tensor | None = None

    def merge(self, other: Statistics) -> Statistics:
        """Statistics of both data sets as if collected in one pass."""
        if self.layers.keys() != other.layers.keys():
            raise BnpError("Cannot merge statistics collected on different layers.")
        layers = {name: stats.merge(other.layers[name]) for name, stats in self.layers.items()}
        predictions = None
        if self.predictions is not None and other.predictions is not None:
            predictions = torch.cat([self.predictions, other.predictions])
        return Statistics(layers, self.n_samples + other.n_samples, predictions)

    def subset(self, rows: torch.Tensor) -> Statistics:
        """Statistics of the samples `rows` (indices into the samples, in their order) alone,
        without another pass over them (`LayerStatistics.subset`)."""
        rows = torch.as_tensor(rows, dtype=torch.long).flatten()
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= self.n_samples):
            raise BnpError(f"Rows outside the {self.n_samples} samples these statistics hold.")
        layers = {name: stats.subset(rows) for name, stats in self.layers.items()}
        predictions = None if self.predictions is None else self.predictions[rows]
        return Statistics(layers, len(rows), predictions)

    @property
    def can_subset(self) -> bool:
        """Whether every layer keeps the per-sample rows a subset is made from."""
        return all(stats.m2s is not None for stats in self.layers.values())


def _chan_merge(mean_a, m2_a, n_a, mean_b, m2_b, n_b):
    n = n_a + n_b
    if n_a == 0:
        return mean_b, m2_b, n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta.square() * (n_a * n_b / n)
    return mean, m2, n


# Per-sample m2 = Σz² − (Σz)²/n loses about eps32 · n·mean²/m2 of its value to cancellation;
# past this ratio the sample is recomputed two-pass (Σ(z − mean)²), which is exact.
_CANCELLATION_LIMIT = 1e3


class _Collector:
    """Forward pre-hooks that summarise each BatchNorm input of one batch, per sample.

    The fast path is three plain reductions (Σz, ‖z‖², max), several times cheaper than
    `torch.var_mean`; samples whose maps are so offset that Σz² − (Σz)²/n would cancel are
    recomputed two-pass, so the variance stays accurate for any offset.
    """

    def __init__(self, model: nn.Module, layers: list[NeuronLayer]):
        modules = dict(model.named_modules())
        self.batch: dict[str, tuple] = {}
        self.handles = [
            modules[layer.name].register_forward_pre_hook(self._hook(layer.name))
            for layer in layers
        ]

    def _hook(self, name: str):
        def hook(_module, inputs):
            z = inputs[0]
            hw = z.shape[2] * z.shape[3]
            total = z.sum(dim=(2, 3))
            mean = total / hw
            if hw == 1:
                m2 = torch.zeros_like(mean)
            else:
                m2 = torch.linalg.vector_norm(z, dim=(2, 3)).square() - total * mean
                if (mean.square() * hw > _CANCELLATION_LIMIT * m2.abs()).any():
                    centred = z - mean[:, :, None, None]
                    m2 = torch.linalg.vector_norm(centred, dim=(2, 3)).square()
            self.batch[name] = (mean, m2.clamp_min(0), z.amax(dim=(2, 3)), hw)

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _summarise_batch(mean: torch.Tensor, m2: torch.Tensor, hw: int):
    """(mean, m2, count) of a whole batch from its per-sample means and m2 over H×W."""
    mean, m2 = mean.double(), m2.double()
    batch_mean = mean.mean(0)
    batch_m2 = m2.sum(0) + (mean - batch_mean).square().sum(0) * hw
    return batch_mean, batch_m2, mean.shape[0] * hw


class _Running:
    """One layer's statistics so far: Chan-merged moments and the per-sample rows."""

    def __init__(self, channels: int):
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.m2 = torch.zeros(channels, dtype=torch.float64)
        self.count = 0
        self.maxima: list[torch.Tensor] = []
        self.means: list[torch.Tensor] = []
        self.m2s: list[torch.Tensor] = []

    def add(self, means: torch.Tensor, m2: torch.Tensor, maxima: torch.Tensor, hw: int) -> None:
        b_mean, b_m2, b_n = _summarise_batch(means, m2, hw)
        self.mean, self.m2, self.count = _chan_merge(
            self.mean, self.m2, self.count, b_mean, b_m2, b_n
        )
        self.maxima.append(maxima.float())
        self.means.append(means.float())
        self.m2s.append(m2.float())

    def result(self) -> LayerStatistics:
        return LayerStatistics(
            self.count,
            self.mean,
            self.m2,
            torch.cat(self.maxima),
            torch.cat(self.means),
            torch.cat(self.m2s),
        )


def collect_statistics(
    model: nn.Module,
    images: ImageSet,
    spec: InputSpec,
    layers: list[NeuronLayer],
    *,
    trigger=None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> Statistics:
    """One pass over `images`: per-neuron mean/variance, per-sample maxima and means.

    On CUDA an out-of-memory error halves the batch and goes on. `cancel()` returning True
    stops the pass at the next batch with `Cancelled`.
    """
    if len(images) == 0:
        raise BnpError("The data set is empty: no statistics can be collected.")
    device = torch.device(device)
    model.eval().to(device)
    running = {layer.name: _Running(layer.channels) for layer in layers}
    collector = _Collector(model, layers)
    total, done = len(images), 0
    predictions: list[torch.Tensor] | None = []
    try:
        with torch.inference_mode():
            while done < total:
                if cancel is not None and cancel():
                    raise Cancelled("Collection cancelled.")
                end = min(done + batch_size, total)
                x = spec.prepare(images.images[done:end], trigger).to(device)
                try:
                    collector.batch.clear()
                    out = model(x)
                except torch.OutOfMemoryError:
                    if batch_size == 1 or device.type != "cuda":
                        raise
                    batch_size //= 2
                    torch.cuda.empty_cache()
                    continue
                for name, (means, m2, maxima, hw) in collector.batch.items():
                    running[name].add(means.cpu(), m2.cpu(), maxima.cpu(), hw)
                if predictions is not None:
                    if isinstance(out, torch.Tensor) and out.ndim == 2 and len(out) == len(x):
                        predictions.append(out.argmax(1).cpu())
                    else:
                        predictions = None
                done = end
                if progress is not None:
                    progress(done, total)
    finally:
        collector.remove()
    stats = {name: r.result() for name, r in running.items()}
    return Statistics(stats, total, torch.cat(predictions) if predictions else None)
