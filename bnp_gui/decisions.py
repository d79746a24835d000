"""The analyst's decisions as one value: thresholds, enabled methods, combination, overrides.

Undo/redo, the session file and Reset to defaults all read and write the session through
``capture`` and ``apply``; ``PAPER_DEFAULTS`` are the published settings (k = 3, EP and BNP
combined by union, CLP off, no overrides) that ``--demo`` always starts from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.model.methods import METHODS

DEFAULT_K = 3.0
DEFAULT_ENABLED = {"ep": True, "bnp": True, "clp": False}

Neuron = tuple[str, int]


@dataclass(frozen=True)
class Decisions:
    """Everything that decides the prune mask (hashable, comparable)."""

    thresholds: tuple[tuple[str, float], ...]
    enabled: tuple[tuple[str, bool], ...]
    combine: str = "union"
    force_prune: frozenset[Neuron] = field(default_factory=frozenset)
    keep: frozenset[Neuron] = field(default_factory=frozenset)

    def to_dict(self) -> dict:
        return {
            "thresholds": dict(self.thresholds),
            "enabled": dict(self.enabled),
            "combine": self.combine,
            "force_prune": [list(n) for n in sorted(self.force_prune)],
            "keep": [list(n) for n in sorted(self.keep)],
        }

    @staticmethod
    def from_dict(d: dict) -> Decisions:
        """From ``to_dict``'s form; missing entries take the paper's defaults."""
        thresholds = {m: DEFAULT_K for m in METHODS}
        thresholds.update({m: float(k) for m, k in (d.get("thresholds") or {}).items()})
        enabled = dict(DEFAULT_ENABLED)
        enabled.update({m: bool(v) for m, v in (d.get("enabled") or {}).items()})
        combine = d.get("combine", "union")
        if combine not in ("union", "intersection"):
            raise ValueError(f"combine must be 'union' or 'intersection', not {combine!r}")
        return Decisions(
            tuple((m, thresholds[m]) for m in METHODS),
            tuple((m, enabled[m]) for m in METHODS),
            combine,
            frozenset((str(n[0]), int(n[1])) for n in d.get("force_prune") or ()),
            frozenset((str(n[0]), int(n[1])) for n in d.get("keep") or ()),
        )

    def describe_change(self, before: Decisions) -> str:
        """A short text for the undo menu: what differs from ``before``."""
        from core.model.methods import METHOD_NAMES

        t0, t1 = dict(before.thresholds), dict(self.thresholds)
        for m in METHODS:
            if t0[m] != t1[m]:
                return f"{METHOD_NAMES[m]} k = {t1[m]:g}"
        e0, e1 = dict(before.enabled), dict(self.enabled)
        for m in METHODS:
            if e0[m] != e1[m]:
                return f"{'use' if e1[m] else 'drop'} {METHOD_NAMES[m]}"
        if before.combine != self.combine:
            return self.combine
        if (before.force_prune, before.keep) != (self.force_prune, self.keep):
            return "neuron override"
        return "decision"


PAPER_DEFAULTS = Decisions.from_dict({})


def capture(session) -> Decisions:
    """The session's current decisions."""
    return Decisions(
        tuple((m, float(session.thresholds[m])) for m in METHODS),
        tuple((m, bool(session.enabled[m])) for m in METHODS),
        session.combine,
        frozenset(session.force_prune),
        frozenset(session.keep),
    )


def apply(session, decisions: Decisions) -> None:
    """Put ``decisions`` into the session through its intents (one preview, debounced)."""
    for m, k in decisions.thresholds:
        session.set_threshold(m, k)
    for m, on in decisions.enabled:
        session.set_enabled(m, on)
    session.set_combine(decisions.combine)
    wanted = (decisions.force_prune, decisions.keep)
    if (frozenset(session.force_prune), frozenset(session.keep)) == wanted:
        return
    if not decisions.force_prune and not decisions.keep:
        session.clear_overrides()
        return
    session.force_prune.clear()
    session.keep.clear()
    session.force_prune.update(decisions.force_prune)
    session.keep.update(decisions.keep)
    # re-set one of them through the intent: flags, mask and preview follow
    if decisions.force_prune:
        session.set_override(min(decisions.force_prune), "prune")
    else:
        session.set_override(min(decisions.keep), "keep")
