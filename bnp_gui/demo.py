"""Where the bundled demo lives: its checkpoint and data roles (one place; the engine's
``core.demo.demo_paths`` when available)."""

from __future__ import annotations

from pathlib import Path

from bnp_gui.data_roles import DataRoles
from core.errors import BnpError

DEMO_DIR = Path(__file__).resolve().parent.parent / "resources" / "demo"
DEMO_MODEL = "fmnist_resnet20_badnets.pth"


def _field(paths, *names):
    for name in names:
        value = paths.get(name) if isinstance(paths, dict) else getattr(paths, name, None)
        if value:
            return str(value)
    return ""


def demo_files() -> tuple[str, DataRoles]:
    """(checkpoint, data roles) of the demo; raises BnpError when it is not installed."""
    checkpoint, roles = (
        str(DEMO_DIR / DEMO_MODEL),
        DataRoles(
            clean=str(DEMO_DIR / "clean"),
            train=str(DEMO_DIR / "train_poisoned"),
            test=str(DEMO_DIR / "test"),
        ),
    )
    try:
        from core.demo import demo_paths
    except ImportError:
        pass
    else:
        paths = demo_paths()
        checkpoint = _field(paths, "checkpoint", "model") or checkpoint
        roles = DataRoles(
            clean=_field(paths, "clean") or roles.clean,
            train=_field(paths, "train", "train_poisoned") or roles.train,
            test=_field(paths, "test") or roles.test,
        )
    if not Path(checkpoint).is_file():
        raise BnpError(
            f"The demo model is not installed ({checkpoint} is missing). Create it with `bnp demo`."
        )
    return checkpoint, roles
