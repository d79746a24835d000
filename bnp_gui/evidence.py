"""The evidence found without the trigger, in the export: the inferred target and the reasons
behind it, the estimated ASR of the exported mask (with its 95 % interval and the samples it
rests on), the suggestion and whether it was applied, the suspect list, and the analyst's steps.

``plan_evidence`` snapshots the session's suspect analysis on the main thread;
``evidence_report`` runs in the export job (it evaluates the exact exported mask) and returns the
fields ``bnp defend --auto --report`` writes (``core.evidence.repair.Repair.report``:
``target_estimate``, ``estimated_asr``, ``estimate``, ``suspect_samples``, ``suggestion`` …) plus
the window's own (``evidence_trust``, ``suggestion_applied``, ``repair_steps``); ``evidence_html``
renders them. Qt-free.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Any

SHOWN_SUSPECTS = 20  # rows of the HTML report's suspect table (report.json holds them all)


@dataclasses.dataclass
class EvidencePlan:
    analysis: Any  # core.evidence.suspects.SuspectAnalysis (marks applied)
    probe: Any  # core.evidence.suspects.MaskProbe
    train: Any  # ImageSet of the suspect samples
    clean: Any  # ImageSet or None
    suggestion: Any  # core.evidence.held_out_suggest.HeldOutSuggestion or None
    applied: bool  # the exported decisions are the suggestion's
    trust: str  # the window's sentence on how far to trust the estimates
    contradicted: bool  # no evidence, but the measured ASR is high
    steps: list[str]


def suggestion_applied(session, suggestion) -> bool:
    """The session's decisions are the suggestion's (methods, thresholds, combination)."""
    same = session.mask_methods() == {m: float(k) for m, k in suggestion.methods.items()}
    return same and (len(suggestion.methods) < 2 or session.combine == suggestion.combine)


def plan_evidence(session, steps: list[str] | tuple[str, ...] = ()) -> EvidencePlan | None:
    """The session's suspect analysis for the export job, None when there is none."""
    state = session.suspects
    if state.analysis is None or state.probe is None or state.train is None:
        return None
    suggestion = state.suggestion
    applied = suggestion is not None and suggestion_applied(session, suggestion)
    return EvidencePlan(
        state.analysis,
        state.probe,
        state.train,
        session.data.get("clean"),
        suggestion,
        applied,
        state.trust(),
        state.contradicted(),
        list(steps),
    )


def evidence_report(plan: EvidencePlan, mask) -> dict:
    """The report fields of the evidence, for exactly ``mask`` (worker thread)."""
    from core.evidence.repair import Repair

    # the suggestion exported as it is: its held-out estimate is the exported mask's (the one
    # from the samples that chose it would be optimistic); otherwise the label-free estimate
    held_out = plan.suggestion.outcome if plan.suggestion is not None and plan.applied else None
    fields = Repair(plan.analysis, plan.probe, plan.train, plan.clean, held_out).report(mask)
    if plan.suggestion is not None:  # the window's Suggest: held-out, as `bnp defend --auto`
        fields["suggestion"] = plan.suggestion.to_dict()
    fields["evidence_trust"] = plan.trust
    fields["evidence_contradicted_by_measured_asr"] = plan.contradicted
    fields["suggestion_applied"] = plan.applied if plan.suggestion is not None else None
    fields["repair_steps"] = list(plan.steps)
    return fields


def _interval(estimate: dict) -> str:
    interval = estimate.get("interval95")
    if not interval:
        return ""
    return f" (95 % interval {interval[0]:.1f}–{interval[1]:.1f} %)"


def evidence_html(report: dict) -> str:
    """The evidence section of report.html ("" when the export had no suspect analysis)."""
    if "target_estimate" not in report:
        return ""
    e = html.escape
    target = report["target_estimate"]
    parts = ["<h2>Evidence without the trigger</h2>", f"<p>{e(report['evidence_trust'])}</p>"]
    if target.get("label") is not None:
        parts.append(
            f"<p><b>Inferred target: {e(str(target['label']))}</b> (confidence "
            f"{target['confidence']:.2f}, {target['suspected']} suspected samples). "
            f"Why: {e(target['why'])}</p>"
        )
    else:
        parts.append(f"<p>No target inferred: {e(target['why'])}</p>")
    for warning in target.get("warnings") or []:
        parts.append(f"<p><i>{e(warning)}</i></p>")
    estimate = report.get("estimate") or {}
    before, after = report.get("estimated_asr_before"), report.get("estimated_asr")
    if after is not None:
        was = f"{before:.1f} % before pruning → " if before is not None else ""
        parts.append(
            f"<p><b>Estimated ASR</b> of the exported mask: {was}{after:.1f} %"
            f"{_interval(estimate)}, from {e(estimate.get('source', ''))} — an estimate, not a "
            "measurement.</p>"
        )
    suggestion = report.get("suggestion")
    if suggestion is not None:  # its verdict and numbers are the held-out ones, said in `why`
        applied = "applied in this export" if report.get("suggestion_applied") else "not applied"
        parts.append(f"<p><b>Suggestion</b> ({applied}): {e(suggestion['why'])}</p>")
    rows = "".join(
        f"<tr><td>{e(str(r['file']))}</td><td>{r['label']}</td><td>{r['score']:.2f}</td>"
        f"<td>{'yes' if r['poisoned'] else 'no'}</td></tr>"
        for r in (report.get("suspect_samples") or [])[:SHOWN_SUSPECTS]
    )
    if rows:
        total = len(report["suspect_samples"])
        parts.append(
            f"<h3>Most suspicious training samples ({min(total, SHOWN_SUSPECTS)} of {total}; "
            "all in report.json)</h3><table><tr><th>file</th><th>label</th><th>score</th>"
            f"<th>believed poisoned</th></tr>{rows}</table>"
        )
    steps = report.get("repair_steps") or []
    if steps:
        items = "".join(f"<li>{e(step)}</li>" for step in steps)
        parts.append(f"<h3>The analyst's steps (undo history)</h3><ol>{items}</ol>")
    return "\n".join(parts) + "\n"
