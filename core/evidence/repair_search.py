"""The repair `bnp defend --auto` applies: the least change that holds on held-out samples.

1. Split the suspected samples and the clean samples into a selection and a judging part
   (`core.evidence.verdict.Holdout`). 2. On the selection part only: the suggested pruning
   (`core.evidence.suggest`, its ASR estimate and its trigger reconstruction made from the selection
   samples), and, unless switched off, the recovery (`core.evidence.recovery`) trained on two thirds
   of the selection part and stopped early on the other third.
3. Judge the candidates in the order of the change they make — pruning alone, pruning +
   recovery, recovery alone — on the judging part, each bound at a Bonferroni-adjusted
   confidence for the number of candidates; the first whose verdict is "repairs" is applied.
   With none, the candidate with the lowest held-out estimate whose accuracy-drop estimate
   stays within the budget is applied and the verdict says it is not a repair (nothing is
   applied where none stays within the budget).

The estimate rests, as elsewhere, on clean samples stamped with a trigger reconstructed from
the (selection) suspected samples where one passes validation, else on the judging suspected
samples still classified as the target (corrected for those of the target class).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.func import functional_call

from core.data.images import ImageSet
from core.defense.inspection import device_batch
from core.defense.statistics import CancelCheck, Progress
from core.errors import BnpError, Cancelled
from core.evidence.reconstruct import stamp
from core.evidence.recovery import Recovery, RecoveryData, recover
from core.evidence.suggest import Suggestion, describe, suggest, unpruned_predictions
from core.evidence.suspects import MaskProbe, SuspectAnalysis, make_probe, reconstruction
from core.evidence.verdict import (
    ACC_BUDGET,
    ASR_GOAL,
    REPAIRS,
    UNVERIFIED,
    Holdout,
    Verdict,
    judge,
    split_rows,
    stratified_split,
    z_for,
)
from core.model.masks import PruneMask

CHECK_SHARE = 1 / 3  # of the selection part: the recovery's early stopping, not trained on
STEPS = 1000  # progress resolution
# the recovery stops at this share of the goal on its check: the held-out bound, not the
# estimate, must reach the goal
STOP_SHARE = 0.5
UNSUSPECTED_PER_CLEAN = 3  # the recovery also trains on training samples nobody suspected


@dataclass
class Candidate:
    """One repair tried: what it changes, the model it gives, and its held-out verdict."""

    name: str  # "pruning", "pruning + recovery", "recovery"
    steps: list[str]
    model: nn.Module
    mask: PruneMask
    verdict: Verdict
    recovery: Recovery | None = None

    def to_dict(self) -> dict:
        """The candidate in the report: its name, steps, verdict and recovery history."""
        out = {"name": self.name, "steps": list(self.steps)} | self.verdict.to_dict()
        if self.recovery is not None:
            out["recovery_history"] = [
                {k: round(v, 2) if isinstance(v, float) else v for k, v in h.items()}
                for h in self.recovery.history
            ]
        return out


@dataclass
class RepairOutcome:
    """The repair applied (maybe none), its verdict, and everything tried."""

    verdict: Verdict
    steps: list[str]
    model: nn.Module  # the repaired weights (the mask is written in at export)
    mask: PruneMask
    suggestion: Suggestion | None  # the pruning chosen on the selection part
    candidates: list[Candidate] = field(default_factory=list)
    holdout: Holdout | None = None
    source: str = ""  # what the estimate rests on, in words
    applied: str | None = None  # the candidate applied
    acc_budget: float = ACC_BUDGET
    asr_goal: float = ASR_GOAL
    before: Verdict | None = None  # the unchanged model, judged on the same held-out samples

    @property
    def repairs(self) -> bool:
        """Whether the held-out verdict says it repairs."""
        return self.verdict.repairs

    @property
    def why(self) -> str:
        """The verdict's reason and what the ASR estimate rests on."""
        return self.verdict.reason + (f" (ASR estimate from {self.source})" if self.source else "")

    def to_dict(self) -> dict:
        """The report's `suggestion` entry (the keys of `Verdict.to_dict`, plus the steps,
        what was pruned and everything tried)."""
        s = self.suggestion
        applied_mask = self.mask.count() > 0
        out = self.verdict.to_dict() | {
            "steps": list(self.steps),
            "applied": self.applied,
            "repairs": self.repairs,
            "why": self.why,
            "estimate_basis": self.source,
            "methods": dict(s.methods) if s is not None and applied_mask else {},
            "combine": s.combine if s is not None and applied_mask else "union",
            "pruned": self.mask.count(),
            "weights_changed": any("recovery" in step for step in self.steps),
            "clean_acc_drop": None
            if self.verdict.acc_drop is None
            else round(self.verdict.acc_drop, 2),
            "acc_budget": self.acc_budget,
            "asr_goal": self.asr_goal,
            "sure": self.repairs,
            "holdout": None if self.holdout is None else self.holdout.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
        }
        if s is not None:  # the selection part's own numbers: optimistic, never a claim
            selection = s.to_dict()
            for claim in ("repairs", "sure"):
                selection.pop(claim, None)
            out["selection"] = selection | {"in_sample": True}
        if self.before is not None:
            b = self.before.to_dict()
            out["before"] = {k: b[k] for k in ("estimated_asr", "asr_interval", "asr_samples")}
        return out


def subset(images: ImageSet, rows: torch.Tensor) -> ImageSet:
    """The `rows` of an image set (files kept)."""
    files = [images.files[i] for i in rows.tolist()] if images.files is not None else None
    return ImageSet(
        images.images[rows], images.labels[rows], images.class_names, images.source, files
    )


def predict(
    model: nn.Module, mask: PruneMask | None, x: torch.Tensor, cancel=None, batch_size: int = 256
) -> torch.Tensor:
    """Predicted labels of prepared inputs `x` with `mask` applied (weights untouched)."""
    batch_size = device_batch(batch_size, x.device)
    params = mask.parameters(model) if mask is not None and mask.count() else {}
    out = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            if cancel is not None and cancel():
                raise Cancelled("Repair cancelled.")
            batch = x[start : start + batch_size]
            logits = functional_call(model, params, (batch,)) if params else model(batch)
            out.append(logits.argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's outputs for prepared inputs `x` (no mask)."""
    batch_size = device_batch(batch_size, x.device)
    model.eval()
    with torch.inference_mode():
        out = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(out).clone() if out else torch.zeros(0)


def _stage(progress: Progress | None, lo: float, hi: float) -> Progress | None:
    """A progress callback mapping a stage's (done, total) into [lo, hi] of the whole."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        share = min(max(done / max(total, 1), 0.0), 1.0)
        progress(min(int(STEPS * (lo + (hi - lo) * share)), STEPS - 1), STEPS)

    return report


@dataclass
class _AsrSet:
    """Samples an ASR estimate rests on: prepared inputs, basis, and the correction."""

    x: torch.Tensor
    basis: str
    clean_labels: torch.Tensor  # labels of the clean samples judged beside it
    clean_x: torch.Tensor


def _measure(model, mask, asr_set: _AsrSet, target: int, cancel, clean_pred=None):
    """(predictions of the ASR samples, predictions of the clean samples, prior, recall);
    `clean_pred`: the clean samples' predictions where already made."""
    if clean_pred is None:
        clean_pred = predict(model, mask, asr_set.clean_x, cancel)
    asr_pred = predict(model, mask, asr_set.x, cancel)
    prior, recall = 0.0, None
    if asr_set.basis == "suspected" and len(asr_set.clean_labels):
        own = asr_set.clean_labels == target
        if own.any():
            prior = float(own.double().mean())
            recall = float((clean_pred[own] == target).double().mean())
    return asr_pred, clean_pred, prior, recall


def search_repair(
    inspection,
    analysis: SuspectAnalysis,
    train: ImageSet,
    clean: ImageSet,
    *,
    probe: MaskProbe | None = None,
    acc_budget: float = ACC_BUDGET,
    asr_goal: float = ASR_GOAL,
    recovery: bool = True,
    seed: int = 0,
    recovery_options: dict | None = None,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> RepairOutcome:
    """The least change that repairs on held-out samples (see the module docstring)."""
    if clean is None or len(clean) == 0:
        raise BnpError("A repair needs clean labelled samples: pass --clean.")
    if probe is None:
        probe = make_probe(inspection, train, clean)
    model, target = inspection.model, analysis.target
    holdout = Holdout.split(analysis.suspected_index(), clean.labels, seed)
    clean_x = probe.inputs["clean"]
    judge_x = clean_x[holdout.clean_judge.to(clean_x.device)]
    judge_y = clean.labels[holdout.clean_judge]
    # the unpruned model's predictions the statistics pass made, where it saw these sets
    known = unpruned_predictions(inspection, train, clean)
    if "clean" in known:
        before_judge = known["clean"][holdout.clean_judge]
    else:
        before_judge = predict(model, None, judge_x, cancel)
    if target is None:
        verdict = judge(
            None,
            None,
            "none",
            before_judge,
            before_judge,
            judge_y,
            goal=asr_goal,
            budget=acc_budget,
        )
        verdict.reason = f"Nothing changed: {analysis.reason[:1].lower()}{analysis.reason[1:]}"
        if progress is not None:
            progress(STEPS, STEPS)
        return RepairOutcome(
            verdict,
            [],
            model,
            PruneMask(),
            None,
            [],
            holdout,
            acc_budget=acc_budget,
            asr_goal=asr_goal,
        )

    # ---- selection: the pruning suggested from the selection part alone
    poisoned = torch.zeros(len(analysis), dtype=torch.bool)
    poisoned[holdout.suspected_select] = True
    analysis_sel = replace(analysis, poisoned=poisoned)
    clean_sel = subset(clean, holdout.clean_select)
    if "clean" in known:  # for the selection part
        known["clean"] = known["clean"][holdout.clean_select]
    probe_sel = MaskProbe(model, inspection.spec, inspection.device, probe.batch_size)
    probe_sel.inputs["train"] = probe.inputs["train"]
    probe_sel.inputs["clean"] = clean_x[holdout.clean_select.to(clean_x.device)]
    shares = (0.3, 0.65) if recovery else (0.9, 0.9)
    # the neuron scores (BNP's clean statistics, EP's training statistics) from the selection
    # part only: the judging samples must not choose the neurons they then judge
    inspection_sel = selection_inspection(
        inspection, train, clean_sel, holdout, cancel, _stage(progress, 0.0, 0.05)
    )
    suggestion = suggest(
        inspection_sel,
        analysis_sel,
        train,
        clean_sel,
        acc_budget=acc_budget,
        asr_goal=asr_goal,
        probe=probe_sel,
        progress=_stage(progress, 0.05, shares[0]),
        cancel=cancel,
        unpruned=known,
    )
    rebuilt = reconstruction(probe_sel, analysis_sel, clean_sel.labels, cancel)
    trigger = rebuilt.trigger if rebuilt.accepted else None

    # ---- the judging sets
    if trigger is not None:
        other = judge_y != target
        judge_set = _AsrSet(
            stamp(judge_x[other.to(judge_x.device)], trigger), "stamped", judge_y, judge_x
        )
        source = (
            f"{len(judge_set.x)} held-out clean samples stamped with a trigger "
            f"reconstructed from {rebuilt.n_suspected} suspected samples"
        )
    else:
        train_x = probe.inputs["train"]
        judge_set = _AsrSet(
            train_x[holdout.suspected_judge.to(train_x.device)], "suspected", judge_y, judge_x
        )
        source = f"{len(judge_set.x)} held-out suspected samples"

    mask = suggestion.mask
    plans: list[str] = []
    if mask.count() > 0:
        plans.append("pruning")
    if recovery:
        if mask.count() > 0:
            plans.append("pruning + recovery")
        plans.append("recovery")
    z = z_for(max(1, len(plans)))

    def verdict_of(net, m) -> Verdict:
        # the unchanged model's held-out clean predictions are made already
        known_clean = before_judge if net is model and (m is None or m.count() == 0) else None
        asr_pred, clean_pred, prior, recall = _measure(
            net, m, judge_set, target, cancel, known_clean
        )
        return judge(
            asr_pred,
            target,
            judge_set.basis,
            before_judge,
            clean_pred,
            judge_y,
            goal=asr_goal,
            budget=acc_budget,
            z=z,
            prior=prior,
            recall=recall,
        )

    chosen_name = describe(suggestion.methods, suggestion.combine)
    prune_step = f"prune {chosen_name} ({mask.count()} neurons)"
    data = check = acc_ref = None
    if recovery:
        data, check, acc_ref = _recovery_parts(
            probe, clean, holdout, target, trigger, model, seed, cancel, train
        )
    unchanged = verdict_of(model, None)
    candidates: list[Candidate] = []
    chosen = None
    span = (shares[1] - shares[0]) / max(1, sum(p != "pruning" for p in plans))
    at = shares[0]
    for plan in plans:
        if plan == "pruning":
            cand = Candidate(plan, [prune_step], model, mask, verdict_of(model, mask))
        else:
            start_mask = mask if plan == "pruning + recovery" else PruneMask()
            rec = recover(
                model,
                start_mask,
                data,
                check=check,
                acc_reference=acc_ref,
                goal=asr_goal * STOP_SHARE,
                budget=acc_budget,
                seed=seed,
                progress=_stage(progress, at, at + span),
                cancel=cancel,
                **(recovery_options or {}),
            )
            at += span
            steps = ([prune_step] if start_mask.count() else []) + [rec.describe()]
            cand = Candidate(
                plan, steps, rec.model, start_mask, verdict_of(rec.model, start_mask), rec
            )
        candidates.append(cand)
        if cand.verdict.verdict == REPAIRS:
            chosen = cand
            break
    if chosen is None:
        chosen = _fallback(candidates, acc_budget, unchanged)
    if progress is not None:
        progress(STEPS, STEPS)
    if chosen is None:
        verdict = replace(unchanged)
        verdict.reason = (
            "Nothing changed: no candidate lowers the held-out ASR below the unchanged model's "
            "estimate within the accuracy budget"
            + (f" ({', '.join(c.name for c in candidates)} tried)" if candidates else "")
            + f"; the unchanged model: {verdict.reason[:1].lower()}{verdict.reason[1:]}"
        )
        return RepairOutcome(
            verdict,
            [],
            model,
            PruneMask(),
            suggestion,
            candidates,
            holdout,
            source,
            None,
            acc_budget,
            asr_goal,
            unchanged,
        )
    return RepairOutcome(
        chosen.verdict,
        chosen.steps,
        chosen.model,
        chosen.mask,
        suggestion,
        candidates,
        holdout,
        source,
        chosen.name,
        acc_budget,
        asr_goal,
        unchanged,
    )


def selection_inspection(inspection, train, clean_sel, holdout, cancel=None, progress=None):
    """A view of `inspection` (same model, layers and CLP scores) whose statistics come from
    the selection part only: the clean samples chosen to select, and the training samples
    without the held-out suspected ones. The scores a suggestion prunes by are then made
    without the samples that judge it (BNP's scores depend on the clean samples, EP's on the
    training samples). Where the inspection's statistics are those of these very sets (their
    sizes match) and keep their per-sample rows, the selection part's are taken from those
    rows (`Statistics.subset`); otherwise they are collected again."""
    view = inspection.without_statistics()
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[holdout.suspected_judge] = False
    train_rows = keep.nonzero().flatten()
    clean_stats, train_stats = inspection.clean_stats, inspection.train_stats
    n_clean = len(holdout.clean_select) + len(holdout.clean_judge)
    if (clean_stats is None or clean_stats.n_samples == n_clean and clean_stats.can_subset) and (
        train_stats is None or train_stats.n_samples == len(train) and train_stats.can_subset
    ):
        view.clean_stats = None if clean_stats is None else clean_stats.subset(holdout.clean_select)
        view.train_stats = None if train_stats is None else train_stats.subset(train_rows)
        if progress is not None:
            progress(1, 1)
        return view
    view.collect(
        clean_sel if clean_stats is not None else None,
        subset(train, train_rows) if train_stats is not None else None,
        progress=progress,
        cancel=cancel,
    )
    return view


def _fallback(
    candidates: list[Candidate], budget: float, unchanged: Verdict | None = None
) -> Candidate | None:
    """No candidate repairs: among those whose accuracy-drop estimate stays within the budget
    and whose held-out ASR is shown lower than the unchanged model's (its upper bound below
    the unchanged estimate: a change that does not lower it is not worth making), the
    unverified ones before the failed ones, then the lowest held-out estimate (the earlier on
    ties). None: leave the model as it is."""

    def lowers(c: Candidate) -> bool:
        if unchanged is None or unchanged.estimate is None:
            return True
        return c.verdict.interval is not None and c.verdict.interval[1] < unchanged.estimate

    within = [
        c
        for c in candidates
        if c.verdict.acc_drop is not None and c.verdict.acc_drop <= budget + 1e-9 and lowers(c)
    ]
    if not within:
        return None
    return min(
        within,
        key=lambda c: (
            c.verdict.verdict != UNVERIFIED,
            c.verdict.estimate or 0.0,
            candidates.index(c),
        ),
    )


def unsuspected_rows(n_train: int, holdout, seed: int, limit: int) -> torch.Tensor:
    """Up to `limit` training rows (at random, fixed by the seed) that neither part of the
    suspected samples holds: they judge nothing (the ASR is judged on suspected or stamped
    samples, the accuracy on clean ones), so the recovery may train on them."""
    free = torch.ones(n_train, dtype=torch.bool)
    free[holdout.suspected_select] = False
    free[holdout.suspected_judge] = False
    rows = free.nonzero().flatten()
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
    return rows[torch.randperm(len(rows), generator=g)[: max(0, limit)]].sort().values


def _recovery_parts(probe, clean, holdout, target, trigger, model, seed, cancel, train):
    """The recovery's training data (two thirds of the selection part, and up to
    UNSUSPECTED_PER_CLEAN times as many training samples nobody suspected) and its
    early-stopping check (the other third of the selection part): (RecoveryData, check, the
    unrepaired accuracy on the check)."""
    clean_x, train_x = probe.inputs["clean"], probe.inputs["train"]
    fit_c, check_c = stratified_split(
        clean.labels, seed, CHECK_SHARE, "check", rows=holdout.clean_select
    )
    fit_s, check_s = split_rows(holdout.suspected_select, seed, "suspected-check", CHECK_SHARE)
    dev = clean_x.device
    fx, fy = clean_x[fit_c.to(dev)], clean.labels[fit_c].to(dev)
    extra = torch.zeros(0, dtype=torch.long)
    if len(train) == len(train_x):
        extra = unsuspected_rows(len(train), holdout, seed, UNSUSPECTED_PER_CLEAN * len(fit_c))
    if len(extra):  # distilled like the clean samples: the unrepaired model's outputs kept
        fx = torch.cat([fx, train_x[extra.to(train_x.device)].to(dev)])
        fy = torch.cat([fy, train.labels[extra].to(dev)])
    cx, cy = clean_x[check_c.to(dev)], clean.labels[check_c]
    stamped_x = stamped_y = None
    if trigger is not None:  # the clean samples stamped, not the unsuspected ones (measured:
        # stamping those too cost the demo its "repairs" and BadNets-40k 0.3 points)
        other = fy != target
        other[len(fit_c) :] = False
        stamped_x, stamped_y = stamp(fx[other], trigger), fy[other]
        check_set = _AsrSet(stamp(cx[(cy != target).to(dev)], trigger), "stamped", cy, cx)
    else:
        check_set = _AsrSet(train_x[check_s.to(train_x.device)], "suspected", cy, cx)
    unlearn = train_x[fit_s.to(train_x.device)] if len(fit_s) else None
    clean_soft = logits(model, fx)
    stamped_soft = clean_soft[other.to(dev)] if trigger is not None else None
    data = RecoveryData(
        fx, fy, target, stamped_x, stamped_y, unlearn, clean_soft, stamped_soft, len(extra)
    )
    ref = float((predict(model, None, cx, cancel) == cy).double().mean()) * 100

    def check(net: nn.Module) -> tuple[float, float]:
        asr_pred, clean_pred, prior, recall = _measure(net, None, check_set, target, cancel)
        share = float((asr_pred == target).double().mean()) if len(asr_pred) else 0.0
        if recall is not None and 0 < prior < 1:
            share = min(max((share - prior * recall) / (1 - prior), 0.0), 1.0)
        return 100 * share, 100 * float((clean_pred == cy).double().mean())

    return data, check, ref
