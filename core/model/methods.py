"""The three pruning methods' names and rules, without torch: the window's menus and panels are
built from these before the engine (torch) has loaded (core.defense.inspection re-exports them)."""

from __future__ import annotations

METHODS = ("ep", "bnp", "clp")
METHOD_NAMES = {"ep": "EP", "bnp": "BNP", "clp": "CLP"}
# direction of the outlier rule and whether pruning also zeroes β (SPEC §1)
DIRECTION = {"ep": "low", "bnp": "high", "clp": "high"}
ZERO_BETA = {"ep": False, "bnp": False, "clp": True}
