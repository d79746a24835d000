"""Repair without knowing the attack, as the command line runs it (`bnp defend --auto`).

One call after the statistics pass: suspect samples and the target (`core.evidence.suspects`), the
repair when asked for (`core.evidence.repair_search`: pruning and recovery chosen on one part of the
data, judged on another), the label-free ASR estimate of any mask, and the report fields
`suspect_samples`, `target_estimate`, `suggestion`, `estimated_asr`. Also writes the suspect
list (data cleansing) as CSV or JSON.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.data.images import ImageSet
from core.defense.statistics import CancelCheck, Progress
from core.errors import BnpError
from core.evidence.repair_search import RepairOutcome, search_repair
from core.evidence.suggest import ACC_BUDGET
from core.evidence.suspects import (
    AsrEstimate,
    MaskProbe,
    SuspectAnalysis,
    analyse_suspects,
    estimate_asr,
    make_probe,
    reconstruction,
)
from core.model.masks import PruneMask


def check_acc_budget(value: float | None) -> float:
    """The accuracy budget in points: a finite number ≥ 0 (default 2)."""
    if value is None:
        return ACC_BUDGET
    if not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise BnpError(f"--acc-budget must be a finite number of points ≥ 0, got {value}.")
    if value < 0:
        raise BnpError(f"--acc-budget must be ≥ 0 points of clean accuracy, got {value:g}.")
    return float(value)


@dataclass
class Repair:
    """Suspects, target, (the repair) and the probe that evaluates masks on them."""

    analysis: SuspectAnalysis
    probe: MaskProbe
    train: ImageSet
    clean: ImageSet | None
    outcome: RepairOutcome | None = None

    @property
    def suggestion(self) -> RepairOutcome | None:
        """The repair chosen with --auto (None without)."""
        return self.outcome

    @property
    def target(self) -> int | None:
        """The inferred target label (None: no backdoor evidence)."""
        return self.analysis.target

    def estimate(self, mask: PruneMask | None) -> AsrEstimate:
        """Estimated ASR of `mask`: from clean samples stamped with a trigger reconstructed
        from the suspected samples where one holds, else from the suspected samples (never the
        real trigger)."""
        labels = self.clean.labels if self.clean is not None else None
        return estimate_asr(self.probe, self.analysis, mask, labels)

    def report(self, mask: PruneMask | None) -> dict:
        """The report fields: suspect samples, target estimate, estimated ASR (before/after),
        and the suggestion when there is one."""
        before = self.estimate(None)
        fields = {
            "target_estimate": self.analysis.target_dict(),
            "estimated_asr_before": before.percent,
            "suspect_samples": self.analysis.records(self.train.files),
        }
        if self.outcome is not None:  # the held-out estimate of the repaired model
            v = self.outcome.verdict
            fields["estimated_asr"] = v.estimate
            fields["estimate"] = {
                "percent": None if v.estimate is None else round(v.estimate, 2),
                "n_samples": v.n,
                "basis": v.basis,
                "source": self.outcome.source,
                "interval95": None if v.interval is None else [round(x, 2) for x in v.interval],
                "target": self.analysis.target,
                "is_estimate": True,
                "held_out": True,
                "describe": v.describe()
                + (f" ({self.outcome.source})" if self.outcome.source else ""),
            }
        else:
            after = self.estimate(mask)
            fields["estimated_asr"] = after.percent
            fields["estimate"] = after.to_dict() | {"describe": after.describe()}
        if self.analysis.target is not None:
            labels = self.clean.labels if self.clean is not None else None
            rebuilt = reconstruction(self.probe, self.analysis, labels)
            fields["trigger_reconstruction"] = {
                "used": rebuilt.accepted,
                "why": rebuilt.reason,
                "values": 0 if rebuilt.trigger is None else rebuilt.trigger.count,
            }
        if self.outcome is not None:
            fields["suggestion"] = self.outcome.to_dict()
        return fields


def run_repair(
    inspection,
    train: ImageSet,
    clean: ImageSet | None,
    *,
    auto: bool = False,
    acc_budget: float = ACC_BUDGET,
    recovery: bool = True,
    seed: int = 0,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    warn: Callable[[str], None] | None = None,
) -> Repair:
    """Analyse the suspect samples (statistics collected) and, with `auto`, find the repair
    (`recovery`: also try fine-tuning; `seed`: the held-out split's and the recovery's)."""
    probe = make_probe(inspection, train, clean)
    analysis = analyse_suspects(inspection, train, clean, probe=probe, cancel=cancel)
    for message in analysis.warnings:
        if warn is not None:
            warn(message)
    repair = Repair(analysis, probe, train, clean)
    if auto:
        if clean is None:
            raise BnpError("--auto checks the clean accuracy of every candidate: pass --clean DIR.")
        repair.outcome = search_repair(
            inspection, analysis, train, clean, probe=probe, acc_budget=acc_budget,
            recovery=recovery, seed=seed, progress=progress, cancel=cancel,
        )  # fmt: skip
    return repair


def write_suspects(path: str | Path, records: list[dict]) -> Path:
    """The suspect list (most suspicious first) as CSV or JSON, chosen by the extension."""
    from core.io.export import atomic_write, write_json

    path = Path(path)
    if path.suffix.lower() == ".json":
        return write_json(path, {"suspect_samples": records})
    if path.suffix.lower() != ".csv":
        raise BnpError(f"{path}: the suspect list is written as .csv or .json.")

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["file", "label", "score", "poisoned"])
            writer.writeheader()
            writer.writerows(records)

    atomic_write(path, write)
    return path
