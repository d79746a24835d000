"""SVG export of the plots with PySide6 6.12: pyqtgraph's SVGExporter reads the paths Qt's SVG
generator writes as "x,y" pairs, and Qt 6.12 closes a subpath with a bare "Z" token, on which the
exporter fails ("not enough values to unpack") for every plot (each has a closed frame).

``install()`` wraps the exporter's coordinate correction so that each "Z" becomes a line back to
the subpath's start ("L x,y"), the same shape as far as stroke and fill go; everything else is
left to pyqtgraph. Nothing changes where the exporter already copes.
"""

from __future__ import annotations

import importlib

_installed = False


def close_paths_explicitly(d: str) -> str:
    """An SVG path's ``d`` with every Z/z replaced by a line to its subpath's start point."""
    out, start = [], None
    for token in d.split():
        if token in ("Z", "z"):
            if start is not None:
                out.append(f"L{start}")
            continue
        if token[0] in "Mm":
            start = token[1:]
        out.append(token)
    return " ".join(out) + (" " if out else "")


def _normalised(node) -> None:
    for path in node.getElementsByTagName("path"):
        d = path.getAttribute("d")
        if "Z" in d or "z" in d:
            path.setAttribute("d", close_paths_explicitly(d))


def install() -> bool:
    """Patch pyqtgraph's SVG exporter once; True when patched by this call."""
    global _installed
    if _installed:
        return False
    module = importlib.import_module("pyqtgraph.exporters.SVGExporter")
    original = getattr(module, "correctCoordinates", None)
    if original is None:  # another pyqtgraph: leave it as it is
        return False

    def correct_coordinates(node, defs, item, options):
        _normalised(node)
        return original(node, defs, item, options)

    module.correctCoordinates = correct_coordinates
    _installed = True
    return True
