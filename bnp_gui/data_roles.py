"""Which data folder plays which role: clean samples, suspect training set, test set (Qt-free).

Clean samples feed BNP (and ACC when no test set is given), the suspect training set feeds EP,
the test set gives ACC and ASR. A parent folder such as the demo's (``clean/``,
``train_poisoned/``, ``test/``) is split into roles by its sub-folder names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import DataError

if TYPE_CHECKING:  # the engine (torch) is imported when data are read, on a worker thread
    from core.data.images import ImageSet

ROLES = ("clean", "train", "test")
ROLE_LABELS = {
    "clean": "Clean samples (BNP statistics)",
    "train": "Suspect training set (EP statistics, optional)",
    "test": "Test set (ACC and ASR)",
}
_HINTS = {
    "clean": ("clean", "defense", "defence", "holdout", "val"),
    "train": ("train_poisoned", "poisoned", "train", "suspect"),
    "test": ("test", "eval"),
}


@dataclass(frozen=True)
class DataRoles:
    """Paths of the three data roles; empty string when a role is not given."""

    clean: str = ""
    train: str = ""
    test: str = ""

    def get(self, role: str) -> str:
        return getattr(self, role)

    def with_role(self, role: str, path: str) -> DataRoles:
        return replace(self, **{role: path})

    def any(self) -> bool:
        return bool(self.clean or self.train or self.test)


def guess_roles(folder: str | Path) -> DataRoles:
    """Split a parent folder into roles by sub-folder names; a plain data folder is 'clean'."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise DataError(f"{p} is not a folder.")
    subdirs = {d.name.lower(): d for d in p.iterdir() if d.is_dir()}
    found: dict[str, str] = {}
    for role in ("train", "clean", "test"):
        for hint in _HINTS[role]:
            match = next(
                (
                    d
                    for name, d in sorted(subdirs.items())
                    if hint in name and str(d) not in found.values()
                ),
                None,
            )
            if match is not None:
                found[role] = str(match)
                break
    if not found:
        return DataRoles(clean=str(p))
    return DataRoles(**found)


def load_roles(roles: DataRoles, cancel=None) -> dict[str, ImageSet]:
    """Read every given role's images; raises DataError naming the role that failed."""
    from core.data.limited import read_images  # the isolated reader: time and memory limits

    sets: dict[str, ImageSet] = {}
    for role in ROLES:
        path = roles.get(role)
        if not path:
            continue
        if cancel is not None and cancel():
            break
        try:
            sets[role] = read_images(path, cancel=cancel)
        except DataError as exc:
            raise DataError(f"{ROLE_LABELS[role]}: {exc}") from exc
        if len(sets[role]) == 0:
            raise DataError(f"{ROLE_LABELS[role]}: {path} holds no samples.")
    return sets
