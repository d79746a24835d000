"""The bundled demo as the window opens it: checkpoint and data roles (from ``core.demo``)."""

from __future__ import annotations

from bnp_gui.data_roles import DataRoles


def demo_files() -> tuple[str, DataRoles]:
    """(checkpoint, data roles) of the demo; raises BnpError when it is not installed."""
    from core.demo import demo_paths

    paths = demo_paths()
    roles = DataRoles(clean=str(paths.clean), train=str(paths.train), test=str(paths.test))
    return str(paths.checkpoint), roles
