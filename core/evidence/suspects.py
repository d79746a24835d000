"""Which suspect training samples carry the backdoor, the attack's target class, and a
label-free ASR estimate for any prune mask — from the defender's data alone (no trigger).

The paper's premise (Zheng et al. 2022): a backdoor neuron's per-sample maxima over the suspect
set are bimodal, the poisoned samples forming the separate high mode. The clean labelled
samples give each neuron's reference: with no backdoor, clean and suspect samples are
exchangeable, so the number K of suspect samples above the clean maximum has
P(K ≥ k) = C(N, k) / C(N + n, k) (N suspect, n clean samples). Neurons where that is below
α / (number of neurons) carry *evidence*. A sample's score is its mean z-score (against the
clean mean and std) over the evidence neurons; a two-component Gaussian mixture on the scores
splits the poisoned (high) mode off. Behaviour confirms it: the model classifies the high-mode
samples as their common label (the target), and pruning the evidence neurons stops that.

Once a target is named, the suspect samples carrying its label are split by their late activations
(`core.evidence.activation_clusters`, Chen et al. 2018), anchored to the clean samples of the
target: this finds the poisoned samples whose neuron maxima stay low (a full-image blend). The split
is used only where the clean target samples stay on their side; a sample's score then adds its z on
the clean → poisoned axis to its neuron score. Without a target nothing is split, so a clean model
still gets no invented one.

Without clean samples the reference is the suspect set itself (median, MAD) and the evidence
neurons are EP's flags at k = 3 — weaker, and said so in the warnings.

The ASR estimate of a mask (`estimate_asr`) rests, where it can, on a trigger reconstructed from the
suspected samples (`core.evidence.reconstruct`): the share of clean non-target samples stamped with
it that the pruned model classifies as the target — the ASR's own definition, and right for
clean-label attacks, whose poisoned samples are genuine target images. Where no trigger is found or
it fails validation (a blend, a weak backdoor), it is the share of the suspected samples still
classified as the target, corrected for those of the target class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.func import functional_call

from core.data.images import ImageSet, InputSpec
from core.defense.inspection import batch_size_for
from core.defense.scores import ep_scores, outlier_flags
from core.defense.statistics import CancelCheck, Progress, Statistics
from core.errors import BnpError, Cancelled
from core.evidence.activation_clusters import ClusterSplit, split_target_class
from core.evidence.mixture import otsu_threshold, two_modes  # noqa: F401  (re-exported)
from core.evidence.reconstruct import Reconstruction, reconstruct
from core.model.masks import Neuron, PruneMask

ALPHA = 0.01  # family-wise error rate of the evidence-neuron test
MIN_SEPARATION = 2.0  # Ashman's D between the two modes: above 2 the mixture is bimodal
MIN_SAMPLES = 50  # fewer suspect samples: a warning, and confidence scaled down
MIN_MODE = 3  # a high mode of fewer samples is no evidence
PURITY_P = 1e-3  # the high mode's common label must be this unlikely by chance
MIN_OBEDIENCE = 0.5  # share of the high mode the model classifies as the target
FALLBACK_NEURONS = 16  # without evidence, rank samples by the most anomalous neurons


@dataclass
class SuspectAnalysis:
    """Suspect samples scored for the backdoor, the split into poisoned/clean, and the target."""

    scores: torch.Tensor  # N float64, higher = more suspicious
    poisoned: torch.Tensor  # N bool: the samples believed poisoned (analyst marks applied)
    labels: torch.Tensor  # N int64: labels as found in the suspect set
    target: int | None  # inferred target class, None: no backdoor evidence
    confidence: float  # 0..1
    reason: str  # one sentence: why this target (or why none)
    threshold: float | None = None  # score above which a sample is in the high mode
    separation: float = 0.0  # Ashman's D of the two modes
    evidence: dict[str, torch.Tensor] = field(default_factory=dict)  # layer → C bool
    reference: str = "clean"  # "clean" or "self" (no clean samples)
    obedience: float = 0.0  # share of the high mode the unpruned model classifies as target
    flips: torch.Tensor | None = None  # N bool: classified as label, not once evidence pruned
    warnings: list[str] = field(default_factory=list)
    detected: torch.Tensor | None = None  # N bool: the split before analyst marks
    marks: dict[int, bool] = field(default_factory=dict)  # index → analyst says poisoned?
    clusters: ClusterSplit | None = None  # the activation clusters within the target class

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def n_suspected(self) -> int:
        """Samples believed poisoned."""
        return int(self.poisoned.sum())

    def order(self) -> torch.Tensor:
        """Sample indices, most suspicious first (marked-poisoned first, marked-clean last)."""
        key = self.scores.clone()
        for index, poisoned in self.marks.items():
            key[index] = math.inf if poisoned else -math.inf
        return torch.argsort(key, descending=True, stable=True)

    def suspected_index(self) -> torch.Tensor:
        """Indices of the samples believed poisoned, most suspicious first."""
        order = self.order()
        return order[self.poisoned[order]]

    def evidence_neurons(self) -> list[Neuron]:
        """The neurons whose high mode carries the evidence, in layer order."""
        return [(name, int(c)) for name, f in self.evidence.items() for c in torch.nonzero(f)]

    def evidence_mask(self) -> PruneMask:
        """A mask pruning the evidence neurons (γ only, like EP and BNP)."""
        return PruneMask.from_flags(self.evidence, zero_beta=False)

    def with_marks(self, marks: Mapping[int, bool | None]) -> SuspectAnalysis:
        """This analysis with the analyst's marks: True poisoned, False clean, None: unmark."""
        merged = dict(self.marks)
        for index, value in marks.items():
            if not 0 <= int(index) < len(self):
                raise BnpError(f"No suspect sample {index}: the set has {len(self)}.")
            if value is None:
                merged.pop(int(index), None)
            else:
                merged[int(index)] = bool(value)
        base = self.detected if self.detected is not None else self.poisoned
        poisoned = base.clone()
        for index, value in merged.items():
            poisoned[index] = value
        return replace(self, poisoned=poisoned, marks=merged, detected=base)

    def records(self, files: list[str] | None = None) -> list[dict]:
        """Every sample, most suspicious first: file (or index), label, score, poisoned."""
        out = []
        for i in self.order().tolist():
            out.append(
                {
                    "file": files[i] if files is not None else i,
                    "label": int(self.labels[i]),
                    "score": round(float(self.scores[i]), 4),
                    "poisoned": bool(self.poisoned[i]),
                }
            )
        return out

    def target_dict(self) -> dict:
        """`{"label": int or None, "confidence": 0..1, "why": ...}` for reports."""
        return {
            "label": self.target,
            "confidence": round(self.confidence, 3),
            "why": self.reason,
            "suspected": self.n_suspected,
            "warnings": list(self.warnings),
        }


# ---- neuron evidence ---------------------------------------------------------------------


def _log_binom(n: float, k: torch.Tensor) -> torch.Tensor:
    n_t = torch.tensor(float(n), dtype=torch.float64)
    return torch.lgamma(n_t + 1) - torch.lgamma(k + 1) - torch.lgamma(n_t - k + 1)


def exceedance_log_p(train: Statistics, clean: Statistics) -> dict[str, torch.Tensor]:
    """Per neuron, ln P(K ≥ k) of the k suspect samples above the clean maximum, if the two
    sets were exchangeable (no backdoor): C(N, k) / C(N + n, k)."""
    big_n, n = train.n_samples, clean.n_samples
    out = {}
    for name, layer in train.layers.items():
        above = (layer.maxima > clean.layers[name].maxima.max(0).values).sum(0).double()
        out[name] = _log_binom(big_n, above) - _log_binom(big_n + n, above)
    return out


def evidence_flags(
    train: Statistics, clean: Statistics | None, alpha: float = ALPHA
) -> dict[str, torch.Tensor]:
    """Neurons whose high mode over the suspect set is too large to be chance (Bonferroni α);
    without clean statistics, EP's flags at k = 3."""
    if clean is None:
        return outlier_flags(ep_scores(train), 3.0, "low")
    log_p = exceedance_log_p(train, clean)
    total = sum(p.numel() for p in log_p.values())
    limit = math.log(alpha / max(total, 1))
    return {name: p < limit for name, p in log_p.items()}


def _reference(train: Statistics, clean: Statistics | None, name: str):
    """(centre, scale, top) of one layer's maxima: the clean set's mean, std and maximum, or
    the suspect set's median, 1.4826·MAD and median + 6 MADs."""
    if clean is not None:
        ref = clean.layers[name].maxima.double()
        return ref.mean(0), ref.std(0), ref.max(0).values
    ref = train.layers[name].maxima.double()
    centre = ref.median(0).values
    scale = 1.4826 * (ref - centre).abs().median(0).values
    return centre, scale, centre + 6 * scale


def high_mode(
    train: Statistics, clean: Statistics | None, layer: str, channel: int
) -> torch.Tensor:
    """Suspect samples in one neuron's high mode: maxima above every clean sample's."""
    _centre, _scale, top = _reference(train, clean, layer)
    return train.layers[layer].maxima[:, channel].double() > top[channel]


def neuron_z(train: Statistics, clean: Statistics | None, name: str) -> torch.Tensor:
    """N×C z-scores of the suspect maxima against the reference of their neuron."""
    centre, scale, _ = _reference(train, clean, name)
    z = (train.layers[name].maxima.double() - centre) / scale
    return torch.where(scale > 0, z, 0.0)


def sample_scores(
    train: Statistics, clean: Statistics | None, evidence: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Each suspect sample's mean z over the evidence neurons (or, with none, over the
    `FALLBACK_NEURONS` neurons whose high mode is least likely by chance)."""
    columns = []
    for name, flags in evidence.items():
        if flags.any():
            columns.append(neuron_z(train, clean, name)[:, flags])
    if not columns:
        if clean is not None:
            log_p = exceedance_log_p(train, clean)
            ranked = sorted(
                ((float(p), name, c) for name, ps in log_p.items() for c, p in enumerate(ps)),
                key=lambda t: t[0],
            )[:FALLBACK_NEURONS]
        else:
            ranked = []
            for name in train.layers:
                z = neuron_z(train, None, name)
                ranked += [(-float(v), name, c) for c, v in enumerate(z.amax(0))]
            ranked = sorted(ranked, key=lambda t: t[0])[:FALLBACK_NEURONS]
        for _p, name, c in ranked:
            columns.append(neuron_z(train, clean, name)[:, c : c + 1])
    if not columns:
        return torch.zeros(train.n_samples, dtype=torch.float64)
    z = torch.cat(columns, dim=1)
    return torch.nan_to_num(z, nan=0.0, posinf=1e6, neginf=-1e6).mean(1)


def exceedance_share(
    train: Statistics, clean: Statistics | None, evidence: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Per suspect sample, the share of evidence neurons on which it is in the high mode."""
    columns = []
    for name, flags in evidence.items():
        if flags.any():
            _centre, _scale, top = _reference(train, clean, name)
            columns.append(train.layers[name].maxima[:, flags].double() > top[flags])
    if not columns:
        return torch.zeros(train.n_samples, dtype=torch.float64)
    return torch.cat(columns, dim=1).double().mean(1)


# ---- the split -----------------------------------------------------------------------------


def _binomial_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    p = min(max(p, 1e-12), 1 - 1e-12)
    ks = torch.arange(k, n + 1, dtype=torch.float64)
    log_terms = (
        _log_binom(n, ks) + ks * math.log(p) + (n - ks) * math.log(1 - p)
    )  # ln C(n,k) p^k (1-p)^(n-k)
    return float(torch.logsumexp(log_terms, 0).exp().clamp(max=1.0))


# ---- model side ------------------------------------------------------------------------------


class MaskProbe:
    """Predicted labels of fixed sample sets under many prune masks; inputs prepared once and
    the weights never touched (`torch.func.functional_call`, as the previews do)."""

    def __init__(
        self,
        model: nn.Module,
        spec: InputSpec,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
    ) -> None:
        self.model = model.eval()
        self.spec = spec
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.inputs: dict[str, torch.Tensor] = {}
        self.forwards = 0  # samples run so far (for benchmarks)
        self.reconstructions: dict = {}  # (target, suspected rows) → Reconstruction

    def add(self, name: str, images: torch.Tensor) -> None:
        """Prepare a set of raw images once (conform, normalise, move to the device)."""
        chunks = [
            self.spec.prepare(images[i : i + self.batch_size]).to(self.device)
            for i in range(0, len(images), self.batch_size)
        ]
        self.inputs[name] = (
            torch.cat(chunks) if chunks else torch.zeros(0, self.spec.channels, *self.spec.size)
        )

    def predict(
        self,
        name: str,
        mask: PruneMask | None = None,
        *,
        index: torch.Tensor | None = None,
        cancel: CancelCheck | None = None,
    ) -> torch.Tensor:
        """Predicted labels of one prepared set (or the `index` rows of it) under `mask`."""
        x = self.inputs[name]
        if index is not None:
            x = x[index.to(x.device)]
        params = mask.parameters(self.model) if mask is not None else {}
        out = []
        with torch.inference_mode():
            for start in range(0, len(x), self.batch_size):
                if cancel is not None and cancel():
                    raise Cancelled("Cancelled.")
                batch = x[start : start + self.batch_size]
                logits = (
                    functional_call(self.model, params, (batch,)) if params else self.model(batch)
                )
                out.append(logits.argmax(1).cpu())
                self.forwards += len(batch)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@dataclass
class AsrEstimate:
    """The label-free ASR estimate of one mask: percent, from how many samples, 95 % interval,
    and its basis: "suspected" (the suspected poisoned samples still classified as the target)
    or "stamped" (clean samples stamped with a trigger reconstructed from them)."""

    percent: float | None
    n: int  # samples it rests on: suspected ones, or stamped clean ones
    low: float | None = None
    high: float | None = None
    target: int | None = None
    raw: float | None = None  # share of those samples classified as the target
    basis: str = "suspected"
    n_suspected: int | None = None  # suspected samples behind it (None: n)

    @property
    def suspected(self) -> int:
        """Suspected poisoned samples the estimate comes from."""
        return self.n if self.n_suspected is None else self.n_suspected

    def source(self) -> str:
        """E.g. '48 suspected samples' or '451 clean samples stamped with a trigger
        reconstructed from 48 suspected samples'."""
        if self.basis == "stamped":
            return (
                f"{self.n} clean samples stamped with a trigger reconstructed from "
                f"{self.suspected} suspected samples"
            )
        return f"{self.n} suspected samples"

    def describe(self) -> str:
        """E.g. 'estimated ASR 3.9 % (estimate from 48 suspected samples)'."""
        if self.percent is None:
            return "no ASR estimate (no backdoor evidence)"
        return f"estimated ASR {self.percent:.1f} % (estimate from {self.source()})"

    def to_dict(self) -> dict:
        """The report's estimate entry (rounded, with its basis)."""
        return {
            "percent": None if self.percent is None else round(self.percent, 2),
            "n_suspected": self.suspected,
            "n_samples": self.n,
            "basis": self.basis,
            "source": self.source(),
            "interval95": None if self.low is None else [round(self.low, 2), round(self.high, 2)],
            "target": self.target,
            "is_estimate": True,
        }


def _wilson(successes: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 100.0
    z = 1.96
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def asr_from_predictions(
    suspected_pred: torch.Tensor,
    target: int | None,
    target_prior: float = 0.0,
    target_recall: float | None = None,
) -> AsrEstimate:
    """Estimated ASR from the predictions of the suspected poisoned samples under a mask.

    A share `target_prior` of poisoned samples were of the target class before the attacker
    relabelled them; once repaired they are still classified as the target, as often as clean
    target samples are (`target_recall`). Those are taken out:
    ASR ≈ (p − prior·recall) / (1 − prior), p the share still classified as the target.
    """
    n = len(suspected_pred)
    if target is None or n == 0:
        return AsrEstimate(None, n, target=target)
    hits = int((suspected_pred == target).sum())
    raw = hits / n
    if target_recall is not None and 0 < target_prior < 1:
        value = (raw - target_prior * target_recall) / (1 - target_prior)
    else:
        value = raw
    value = min(max(value, 0.0), 1.0)
    low, high = _wilson(round(value * n), n)
    return AsrEstimate(100 * value, n, low, high, target, 100 * raw)


def asr_from_stamped(stamped_pred: torch.Tensor, target: int, n_suspected: int) -> AsrEstimate:
    """Estimated ASR from the predictions of the clean samples stamped with the reconstructed
    trigger: the share classified as the target (the ASR's definition, no correction)."""
    n = len(stamped_pred)
    hits = int((stamped_pred == target).sum())
    low, high = _wilson(hits, n)
    share = 100 * hits / max(n, 1)
    return AsrEstimate(share, n, low, high, target, share, "stamped", n_suspected)


def reconstruction(
    probe: MaskProbe,
    analysis: SuspectAnalysis,
    clean_labels: torch.Tensor | None,
    cancel: CancelCheck | None = None,
    clean_predictions: torch.Tensor | None = None,
) -> Reconstruction:
    """The trigger reconstructed from the suspected samples, validated on the unpruned model
    (`core.evidence.reconstruct`; cached in the probe per suspected set). `clean_predictions`: the
    unpruned model's predictions of the clean set, where already known."""
    return reconstruct(
        probe, analysis.suspected_index(), clean_labels, analysis.target, cancel,
        clean_predictions,
    )  # fmt: skip


def estimate_asr(
    probe: MaskProbe,
    analysis: SuspectAnalysis,
    mask: PruneMask | None,
    clean_labels: torch.Tensor | None = None,
    cancel: CancelCheck | None = None,
    basis: str = "auto",
) -> AsrEstimate:
    """Estimated ASR of `mask`. Where a trigger reconstructed from the suspected samples
    passes validation (`core.evidence.reconstruct`): the share of the clean samples stamped with it
    that the pruned model classifies as the target. Otherwise (or with `basis="suspected"`):
    the suspected poisoned samples (probe set "train") still classified as the inferred
    target, corrected for those of the target class with the clean set's share and recall of
    the target (probe set "clean")."""
    target = analysis.target
    index = analysis.suspected_index()
    if target is None or len(index) == 0:
        return AsrEstimate(None, len(index), target=target)
    if basis == "auto":
        found = reconstruction(probe, analysis, clean_labels, cancel)
        if found.accepted:
            pred = probe.predict(found.name, mask, cancel=cancel)
            return asr_from_stamped(pred, target, found.n_suspected)
    pred = probe.predict("train", mask, index=index, cancel=cancel)
    prior, recall = target_correction(probe, clean_labels, target, mask, cancel)
    return asr_from_predictions(pred, target, prior, recall)


def target_correction(
    probe: MaskProbe,
    clean_labels: torch.Tensor | None,
    target: int,
    mask: PruneMask | None,
    cancel: CancelCheck | None = None,
) -> tuple[float, float | None]:
    """(share of the target class among clean samples, their recall under `mask`)."""
    if clean_labels is None or "clean" not in probe.inputs:
        return 0.0, None
    of_target = torch.nonzero(clean_labels == target).flatten()
    if len(of_target) == 0:
        return 0.0, None
    pred = probe.predict("clean", mask, index=of_target, cancel=cancel)
    return len(of_target) / len(clean_labels), float((pred == target).double().mean())


# ---- the analysis ------------------------------------------------------------------------------


def analyse_suspects(
    inspection,
    train: ImageSet,
    clean: ImageSet | None = None,
    *,
    probe: MaskProbe | None = None,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> SuspectAnalysis:
    """Score every suspect sample, split off the poisoned mode and infer the target.

    Needs the inspection's statistics of `train` (and of `clean`, the reference) collected.
    `probe`: a MaskProbe with the sets "train" (and "clean") prepared, reused by callers that
    go on to estimate or suggest; made here when not given.
    """
    train_stats, clean_stats = inspection.train_stats, inspection.clean_stats
    if train_stats is None:
        raise BnpError("Suspect samples need the suspect training set: pass --train DIR.")
    if train_stats.n_samples != len(train):
        raise BnpError("The suspect statistics were collected on another set: analyse again.")
    if clean is None:
        clean_stats = None
    warnings = []
    n = len(train)
    if n < MIN_SAMPLES:
        warnings.append(
            f"Only {n} suspect samples (fewer than {MIN_SAMPLES}): the split and the target "
            "are uncertain."
        )
    if clean_stats is None:
        warnings.append(
            "No clean samples: the suspect set is its own reference and EP's flags are the "
            "evidence; the split is less reliable."
        )
    labels = train.labels
    classes = torch.unique(labels)
    if progress is not None:
        progress(0, 3)
    evidence = evidence_flags(train_stats, clean_stats)
    scores = sample_scores(train_stats, clean_stats, evidence)
    in_high, cut, separation = two_modes(scores)
    n_evidence = int(sum(int(f.sum()) for f in evidence.values()))
    if progress is not None:
        progress(1, 3)

    def result(poisoned, target, confidence, reason, **extra) -> SuspectAnalysis:
        return SuspectAnalysis(
            scores,
            poisoned,
            labels,
            target,
            confidence,
            reason,
            threshold=cut,
            separation=separation,
            evidence=evidence,
            reference="clean" if clean_stats is not None else "self",
            warnings=warnings,
            detected=poisoned.clone(),
            **extra,
        )

    nothing = torch.zeros(n, dtype=torch.bool)
    if n_evidence == 0:
        return result(
            nothing, None, 0.0, "No neuron has a high mode beyond chance: no backdoor evidence."
        )
    mode = int(in_high.sum())
    few_warning = None
    if separation < MIN_SEPARATION or mode < MIN_MODE or mode > n // 2:
        # no clean two-mode split of the mean z (e.g. one evidence neuron with a heavy tail):
        # the samples above the clean maximum on most evidence neurons, when a minority
        above = exceedance_share(train_stats, clean_stats, evidence) >= 0.5
        if clean_stats is not None and MIN_MODE <= int(above.sum()) <= n // 2:
            in_high, mode = above, int(above.sum())
            few_warning = (
                f"The suspect scores form no clean two-mode split (separation "
                f"{separation:.1f}); the suspected samples are the {mode} above every clean "
                "sample on most evidence neurons — fewer, and the estimate rests on them."
            )
            warnings.append(few_warning)
        else:
            why = (
                f"the suspect scores form no separate minority mode (separation "
                f"{separation:.1f}, {mode} samples)"
            )
            return result(nothing, None, 0.0, f"No backdoor evidence: {why}.")
    if len(classes) < 2:
        warnings.append(
            "The suspect set holds a single class: its labels cannot single out a target."
        )
        return result(in_high, None, 0.0, "A single-class suspect set names no target.")
    counts = torch.bincount(labels[in_high], minlength=int(labels.max()) + 1)
    target = int(counts.argmax())
    purity = float(counts[target]) / mode
    if clean is not None:
        base = _label_share(clean, target)
    else:
        base = float((labels == target).double().mean())
    chance = _binomial_tail(int(counts[target]), mode, base)
    if chance > PURITY_P:
        return result(
            nothing,
            None,
            0.0,
            f"No backdoor evidence: the separate mode of {mode} samples is not one class "
            f"({purity:.0%} label {target}, chance {chance:.1g}).",
        )
    # the attacker relabels every poisoned sample with the target: the rest of the mode is not
    in_high &= labels == target
    mode_all, mode = mode, int(in_high.sum())
    if progress is not None:
        progress(2, 3)
    # within the target class, the activation clusters anchored to its clean samples
    split = None
    if clean_stats is not None:
        split = split_target_class(train_stats, clean_stats, labels, clean.labels, target, in_high)
    found = split.poisoned if split is not None and split.accepted else in_high
    if probe is None:
        probe = make_probe(inspection, train, clean)
    rows = torch.nonzero(in_high | found).flatten()
    before = probe.predict("train", None, index=rows, cancel=cancel)
    after = probe.predict("train", analysis_mask(evidence), index=rows, cancel=cancel)
    obedience = float((before[in_high[rows]] == target).double().mean())
    flips = torch.zeros(n, dtype=torch.bool)
    own = labels[rows]
    flips[rows] = (before == own) & (after != own)
    if progress is not None:
        progress(3, 3)
    if obedience < MIN_OBEDIENCE:
        return result(
            nothing,
            None,
            0.0,
            f"No backdoor evidence: the model classifies only {obedience:.0%} of the separate "
            f"mode as its common label {target}.",
            obedience=obedience,
            flips=flips,
            clusters=split,
        )
    confidence = purity * obedience * min(1.0, n / MIN_SAMPLES)
    if not any(labels == target):
        warnings.append(f"The suspect set has no sample of the inferred target {target}.")
    stopped = float(flips[in_high].double().mean())
    # the suspected samples are those of the mode labelled with the target: say how many, so
    # that the count the estimate names ("from 39 suspected samples") is the one said here
    labelled = (
        f"{purity:.0%} of them are labelled {target}"
        if mode == mode_all
        else f"{mode} of them ({purity:.0%}) are labelled {target}, the suspected samples"
    )
    reason = (
        f"{mode_all} suspect samples form a separate high mode on {n_evidence} neurons; "
        f"{labelled}; the model classifies {obedience:.0%} of them as {target}, and "
        f"{stopped:.0%} stop once those neurons are pruned."
    )
    if split is not None and split.accepted:
        # a sample's score: its neuron evidence plus where its late activations lie between
        # the clean target samples and the poisoned cluster (z against the clean ones)
        scores = scores + split.margin
        if few_warning is not None:
            warnings.remove(few_warning)  # the clusters found the rest
        cut = float(scores[found].min()) if found.any() else cut
        reason += (
            f" Among the {int((labels == target).sum())} samples labelled {target}, "
            f"{int(found.sum())} form their own activation cluster, apart from "
            f"{1 - split.clean_share:.0%} of the clean samples of {target}."
        )
    if clean is not None and not bool((clean.labels == target).any()):
        warnings.append(
            f"The clean samples hold no sample of the inferred target {target}: the ASR "
            "estimate cannot correct for poisoned samples of the target class."
        )
    return result(
        found, target, confidence, reason, obedience=obedience, flips=flips, clusters=split
    )


def _label_share(images: ImageSet, label: int) -> float:
    share = float((images.labels == label).double().mean()) if len(images) else 0.0
    return share if share > 0 else 1.0 / max(images.num_classes, 2)


def analysis_mask(evidence: Mapping[str, torch.Tensor]) -> PruneMask:
    """The mask pruning the evidence neurons (γ only)."""
    return PruneMask.from_flags(dict(evidence), zero_beta=False)


def make_probe(inspection, train: ImageSet | None, clean: ImageSet | None) -> MaskProbe:
    """A MaskProbe over the inspection's model with the sets "train" and "clean" prepared."""
    batch = batch_size_for(inspection.spec, 256, inspection.device)
    probe = MaskProbe(inspection.model, inspection.spec, inspection.device, batch)
    if train is not None:
        probe.add("train", train.images)
    if clean is not None:
        probe.add("clean", clean.images)
    return probe
