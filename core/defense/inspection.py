"""One inspection of one checkpoint: the object the command line and the window drive.

It ties the engine together: the neuron graph and CLP scores right after loading, one
statistics pass per data set, scores and flags per method, combined masks with manual
overrides, and ACC/ASR of the model with any mask.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Literal

import torch

from core.data.checks import check_target
from core.data.images import ImageSet, InputSpec
from core.data.triggers import PatchTrigger, Trigger
from core.defense.checks import check_statistics, check_threshold, model_warnings
from core.defense.evaluation import Metrics, evaluate, sample_subset
from core.defense.scores import bnp_scores, clp_scores, ep_scores, outlier_flags, z_scores
from core.defense.statistics import CancelCheck, Progress, Statistics, collect_statistics
from core.errors import BnpError, DataError
from core.io.metadata import LoadedCheckpoint
from core.model.graph import NeuronLayer, discover_layers
from core.model.masks import Neuron, PruneMask
from core.model.methods import DIRECTION, METHOD_NAMES, METHODS, ZERO_BETA  # noqa: F401 - METHOD_NAMES: re-exported, as before

Scores = Mapping[str, Mapping[str, torch.Tensor]]  # method → layer → per-neuron scores


def method_flags(scores: Scores, method: str, k: float) -> dict[str, torch.Tensor]:
    """Neurons one method flags at threshold k (a finite number), from its scores."""
    return outlier_flags(dict(scores[method]), check_threshold(k), DIRECTION[method])


def build_mask(
    scores: Scores,
    methods: Mapping[str, float],
    combine: str = "union",
    force_prune: Iterable[Neuron] = (),
    keep: Iterable[Neuron] = (),
    channels: dict[str, int] | None = None,
) -> PruneMask:
    """Masks of several methods (method → threshold) combined, then manual overrides.

    Pure: callers that keep their own snapshot of the scores (a preview worker) get exactly
    what `Inspection.mask` gives.
    """
    if combine not in ("union", "intersection"):
        raise BnpError(f"Unknown combination {combine!r}: use 'union' or 'intersection'.")
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


def resolve_device(device: str | None = None) -> torch.device:
    """The requested device, or CUDA when available and the CPU otherwise."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise BnpError(f"Unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BnpError(f"Device {device!r} was asked for, but CUDA is not available here.")
    if resolved.type not in ("cpu", "cuda"):  # meta holds no data; xla, mps… are not built in
        raise BnpError(
            f"Device {device!r} cannot run the model here: use 'cpu', 'cuda' or 'cuda:N'."
        )
    return resolved


def device_name(device: torch.device) -> str:
    """A human name for the device: the GPU's model, or 'CPU (N threads)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


# Pixels per batch above which batches shrink, so that a large input size cannot exhaust
# memory: 256 images of 224×224 (12.8 M pixels).
MAX_BATCH_PIXELS = 256 * 224 * 224


# Images per batch on the CPU: a batch's activations then stay in the caches. Forward passes
# ran 5–25 % faster per image in batches of 64 than of 256 on a 2-core CPU (ResNet-20 on
# 28×28, ResNet-18 and VGG-16-BN on 32×32; bench/bench_repair.py prints the effect).
CPU_BATCH = 64


def device_batch(requested: int, device=None) -> int:
    """``requested`` images per batch, at most CPU_BATCH on the CPU (`device`)."""
    if device is not None and torch.device(device).type == "cpu":
        return min(requested, CPU_BATCH)
    return requested


def batch_size_for(spec: InputSpec, requested: int, device=None) -> int:
    """``requested``, or fewer images per batch when the input is large (at least 1); on the
    CPU (`device`) at most CPU_BATCH."""
    requested = device_batch(requested, device)
    per_image = spec.size[0] * spec.size[1]
    return max(1, min(requested, MAX_BATCH_PIXELS // per_image))


def input_spec(ckpt: LoadedCheckpoint, overrides: Mapping | None = None) -> InputSpec:
    """The model's input spec from the checkpoint's metadata with ``overrides`` applied
    (channels, size, mean, std); DataError saying where a bad value came from."""
    meta = ckpt.metadata
    fields = {
        "channels": meta.in_channels,
        "size": tuple(meta.input_size),
        "mean": tuple(meta.mean) if meta.mean else None,
        "std": tuple(meta.std) if meta.std else None,
    }
    given = dict(overrides or {})
    fields.update(given)
    try:
        spec = InputSpec(**fields)
    except DataError as exc:
        try:  # the given values alone (metadata left out): if they pass, the metadata is bad
            InputSpec(**{"channels": fields["channels"], "size": (1, 1), **given})
        except DataError:
            raise exc from None
        raise DataError(f"the checkpoint's metadata: {exc}") from None
    if spec.channels != meta.in_channels:
        raise DataError(
            f"the model takes {meta.in_channels}-channel images (its first convolution has "
            f"{meta.in_channels} input channel{'s' if meta.in_channels != 1 else ''}), so its "
            f"input cannot be {spec.channels} channels; images are converted to the model's "
            "channels automatically: drop the channel override"
        )
    return spec


def checkpoint_trigger(ckpt: LoadedCheckpoint) -> Trigger | None:
    """The trigger the checkpoint itself carries (our metadata first, then the seed's patch)."""
    attack = ckpt.metadata.attack
    if attack and attack.get("trigger"):
        return Trigger.from_dict(attack["trigger"])
    if ckpt.trigger is not None:
        return PatchTrigger(ckpt.trigger)
    return None


class Inspection:
    """Scores, masks and metrics of one loaded checkpoint."""

    def __init__(
        self,
        ckpt: LoadedCheckpoint,
        device: str | None = None,
        *,
        overrides: Mapping | None = None,
    ):
        self.ckpt = ckpt
        self.model = ckpt.model.eval()
        meta = ckpt.metadata
        self.spec = input_spec(ckpt, overrides)
        # what makes this model's numbers meaningless (shown beside every result)
        self.warnings: list[str] = model_warnings(self.model, self.spec)
        self.device = resolve_device(device)
        self.device_name = device_name(self.device)
        self.model.to(self.device)
        example = torch.zeros(1, self.spec.channels, *self.spec.size, device=self.device)
        self.discovery = discover_layers(self.model, example)  # also lists skipped layers
        self.layers: list[NeuronLayer] = self.discovery.require()
        self.clp: dict[str, torch.Tensor] = clp_scores(self.model, self.layers)
        self.clean_stats: Statistics | None = None
        self.train_stats: Statistics | None = None
        self._scores: dict[str, dict[str, torch.Tensor]] = {"clp": self.clp}
        self.trigger: Trigger | None = checkpoint_trigger(ckpt)
        self.target: int | None = meta.target_label

    @property
    def channels(self) -> dict[str, int]:
        """Neurons per layer, in data-flow order."""
        return {layer.name: layer.channels for layer in self.layers}

    def collect(
        self,
        clean: ImageSet | None,
        train: ImageSet | None = None,
        *,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
        batch_size: int = 256,
    ) -> None:
        """One statistics pass over each given data set (clean → BNP, training → EP)."""
        sets = [
            (key, data) for key, data in (("clean", clean), ("train", train)) if data is not None
        ]
        for key, data in sets:
            if len(data) == 0:
                raise DataError(f"the {'clean' if key == 'clean' else 'training'} set is empty")
        batch_size = batch_size_for(self.spec, batch_size, self.device)
        total = sum(len(data) for _, data in sets)
        offset = 0
        results = {}
        for key, data in sets:

            def report(done, _n, offset=offset):
                if progress is not None:
                    progress(offset + done, total)

            results[key] = collect_statistics(
                self.model,
                data,
                self.spec,
                self.layers,
                device=self.device,
                batch_size=batch_size,
                progress=report,
                cancel=cancel,
            )
            check_statistics(results[key], "clean" if key == "clean" else "training")
            offset += len(data)
        # only replace what was collected, and only once everything finished
        if "clean" in results:
            self.clean_stats = results["clean"]
            self._scores.pop("bnp", None)
        if "train" in results:
            self.train_stats = results["train"]
            self._scores.pop("ep", None)

    def available(self, method: str) -> bool:
        """Whether `method` has what it needs (CLP: nothing; BNP: clean; EP: training data)."""
        return {
            "clp": True,
            "bnp": self.clean_stats is not None,
            "ep": self.train_stats is not None,
        }[method]

    def scores(self, method: str) -> dict[str, torch.Tensor]:
        """Per-layer neuron scores of one method (computed once per statistics pass)."""
        if method not in METHODS:
            raise BnpError(f"Unknown method {method!r}: use one of {', '.join(METHODS)}.")
        if method not in self._scores:
            if method == "bnp":
                if self.clean_stats is None:
                    raise BnpError("BNP needs statistics of clean samples: collect them first.")
                self._scores[method] = bnp_scores(self.model, self.clean_stats)
            else:
                if self.train_stats is None:
                    raise BnpError(
                        "EP needs statistics of the suspect training set: collect them first."
                    )
                self._scores[method] = ep_scores(self.train_stats)
        return self._scores[method]

    def z_scores(self, method: str) -> dict[str, torch.Tensor]:
        """Scores standardised within their layer, for display."""
        return z_scores(self.scores(method))

    def flags(self, method: str, k: float) -> dict[str, torch.Tensor]:
        """Neurons flagged by one method at threshold k."""
        return method_flags({method: self.scores(method)}, method, k)

    def method_mask(self, method: str, k: float) -> PruneMask:
        """The prune mask one method gives at threshold k."""
        return build_mask({method: self.scores(method)}, {method: k}, channels=self.channels)

    def mask(
        self,
        methods: dict[str, float],
        combine: str = "union",
        force_prune: Iterable[Neuron] = (),
        keep: Iterable[Neuron] = (),
    ) -> PruneMask:
        """Masks of several methods (method → threshold) combined, then manual overrides."""
        scores = {method: self.scores(method) for method in methods}
        return build_mask(scores, methods, combine, force_prune, keep, self.channels)

    def set_spec(self, **changes) -> InputSpec:
        """Override channels/size/normalisation of the input; collected statistics are dropped."""
        spec = dataclasses.replace(self.spec, **changes)
        if spec.channels != self.ckpt.metadata.in_channels:
            input_spec(self.ckpt, {"channels": spec.channels})  # raises, saying why
        self.spec = spec
        self.warnings = model_warnings(self.model, self.spec)
        self._drop_statistics()
        return self.spec

    def without_statistics(self) -> Inspection:
        """A view sharing this inspection's model, layers, spec and CLP scores but none of its
        statistics: what is collected into it leaves this one as it is."""
        view = copy.copy(self)
        view._drop_statistics()
        return view

    def _drop_statistics(self) -> None:
        self.clean_stats = self.train_stats = None
        self._scores = {"clp": self.clp}

    def evaluate(
        self,
        test: ImageSet,
        *,
        mask: PruneMask | None = None,
        trigger: Trigger | None | Literal["checkpoint"] = "checkpoint",
        target: int | None = None,
        poisoned: ImageSet | None = None,
        limit: int | None = None,
        progress: Progress | None = None,
        cancel: CancelCheck | None = None,
        batch_size: int = 256,
        model: torch.nn.Module | None = None,
    ) -> Metrics:
        """ACC/ASR with `mask` applied, weights untouched. The ASR's trigger is the checkpoint's
        unless another is given, None (no ASR) or `poisoned` samples that carry it already; the
        target label defaults to the checkpoint's. `model`: another model of the same
        architecture (a repaired copy) instead of the loaded one."""
        if isinstance(trigger, str):
            if trigger != "checkpoint":
                raise ValueError(f"trigger: a Trigger, None or 'checkpoint', not {trigger!r}")
            trigger = self.trigger if poisoned is None else None
        num_classes = self.ckpt.metadata.num_classes
        if target is not None:
            target = check_target(target, num_classes)
        elif self.target is not None:
            try:
                target = check_target(self.target, num_classes)
            except DataError as exc:
                raise DataError(f"the checkpoint's metadata: {exc}") from None
        return evaluate(
            self.model if model is None else model,
            test,
            self.spec,
            mask=mask,
            trigger=trigger,
            target=target,
            poisoned=poisoned,
            device=self.device,
            batch_size=batch_size_for(self.spec, batch_size, self.device),
            limit=limit,
            progress=progress,
            cancel=cancel,
            num_classes=num_classes,
        )

    def layer_activations(
        self,
        images: ImageSet,
        layer: str,
        channel: int,
        trigger: Trigger | None = None,
        limit: int = 512,
    ) -> torch.Tensor:
        """Every pre-activation value (samples × H × W) of one neuron, for distribution plots."""
        images = sample_subset(images, limit)
        module = dict(self.model.named_modules())[layer]
        values = []

        def hook(_module, inputs):
            values.append(inputs[0][:, channel].flatten().float().cpu())

        handle = module.register_forward_pre_hook(hook)
        try:
            with torch.inference_mode():
                step = batch_size_for(self.spec, 256, self.device)
                for start in range(0, len(images), step):
                    batch = images.images[start : start + step]
                    self.model(self.spec.prepare(batch, trigger).to(self.device))
        finally:
            handle.remove()
        return torch.cat(values)

    def running_stats(self, layer: str, channel: int) -> tuple[float, float]:
        """The BatchNorm's stored (running_mean, running_var) of one neuron."""
        bn = dict(self.model.named_modules())[layer]
        return float(bn.running_mean[channel]), float(bn.running_var[channel])
