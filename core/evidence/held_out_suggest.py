"""The window's Suggest: a pruning chosen on one part of the defender's data, judged on another.

`core.evidence.suggest.suggest` alone chooses a configuration and estimates its ASR on the same
samples, so its numbers are optimistic by construction (issue 17: "estimated ASR 0.0 % … sure" on a
model whose real ASR was 8.3 %). Here the pruning search runs on the selection part of the held-out
split and the verdict — *repairs*, *does not repair* or *unverified*, with its estimate, interval
and the samples it rests on — comes from the judging part only: exactly `bnp defend --auto
--no-recovery` (`core.evidence.repair_search.search_repair` with `recovery=False`). The pruning
applied is the one the held-out search applies: the selection part's suggestion, or nothing where
its held-out ASR is not shown lower than the unchanged model's.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.data.images import ImageSet
from core.defense.statistics import CancelCheck, Progress
from core.evidence.repair_search import RepairOutcome, search_repair
from core.evidence.suggest import describe
from core.evidence.suspects import MaskProbe, SuspectAnalysis
from core.evidence.verdict import ACC_BUDGET, ASR_GOAL, Verdict


@dataclass
class HeldOutSuggestion:
    """A pruning to set and its held-out verdict (the fields the window shows and exports)."""

    outcome: RepairOutcome

    @property
    def verdict(self) -> Verdict:
        """The held-out verdict on the pruning applied (or on the unchanged model)."""
        return self.outcome.verdict

    @property
    def repairs(self) -> bool:
        """Only what the held-out verdict says: its bounds, never a point estimate."""
        return self.outcome.repairs

    @property
    def methods(self) -> dict[str, float]:
        """Methods and thresholds to set ({}: prune nothing)."""
        s = self.outcome.suggestion
        return dict(s.methods) if s is not None and self.outcome.mask.count() else {}

    @property
    def combine(self) -> str:
        """Union or intersection: how the methods set combine."""
        s = self.outcome.suggestion
        return s.combine if s is not None and self.methods else "union"

    @property
    def pruned(self) -> int:
        """Neurons pruned (0: nothing)."""
        return self.outcome.mask.count()

    @property
    def mask(self):
        """The pruning applied (empty: nothing)."""
        return self.outcome.mask

    @property
    def name(self) -> str:
        """E.g. 'EP k=1.5 ∩ CLP k=1.5' ('no pruning' where nothing is set)."""
        return describe(self.methods, self.combine)

    @property
    def why(self) -> str:
        """The verdict first, then what is pruned, the held-out numbers and the reason."""
        v, o = self.verdict, self.outcome
        head = f"{v.verdict.capitalize()} (held out)"
        if self.pruned:
            what = f"prune {self.name} ({self.pruned} neurons)"
            if o.holdout is not None:
                h = o.holdout.to_dict()
                what += (
                    f", chosen on {h['suspected_select']} suspected and {h['clean_select']} "
                    "clean samples"
                )
            judged = "judged on the others"
        else:
            what, judged = "nothing pruned", "the unchanged model"
            for c in o.candidates:  # the pruning the selection part chose, and why not it
                what += (
                    f" ({c.steps[0].removeprefix('prune ')} was chosen on the selection "
                    f"samples, but {c.verdict.describe()}: {c.verdict.verdict})"
                )
        numbers = ""
        if v.estimate is not None:
            numbers = f"; {judged}: {v.describe()} ({v.confidence:.0f} % intervals)"
        return f"{head}: {what}{numbers}. {o.why}"

    def to_dict(self) -> dict:
        """The report's `suggestion` entry: `bnp defend --auto`'s held-out contract."""
        return self.outcome.to_dict() | {"why": self.why}


def suggest_held_out(
    inspection,
    analysis: SuspectAnalysis,
    train: ImageSet,
    clean: ImageSet,
    *,
    acc_budget: float = ACC_BUDGET,
    asr_goal: float = ASR_GOAL,
    probe: MaskProbe | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> HeldOutSuggestion:
    """The pruning search on the selection part, its verdict from the judging part."""
    outcome = search_repair(
        inspection, analysis, train, clean, probe=probe, acc_budget=acc_budget,
        asr_goal=asr_goal, recovery=False, seed=seed, progress=progress, cancel=cancel,
    )  # fmt: skip
    return HeldOutSuggestion(outcome)
