"""Work around PySide6 6.12 reference-count bugs on Python < 3.12, before any Qt call.

PySide6 6.12 drops references it does not own: ``SignalInstance.emit()`` returns ``True``
without a new reference, and converting an empty ``QVariant`` to Python (``itemData``,
``property``, ``QAction.data`` ...) returns ``None`` without one. From Python 3.12 on these
singletons are immortal and nothing happens; on 3.11 every such call takes one reference away and
after some thousands the interpreter aborts ("bool_dealloc: deallocating True or False",
"none_dealloc" at exit). Both leaks are probed here, and only when one is present are ``None``,
``True`` and ``False`` given a reserve of references that no session can exhaust: the
immortality Python 3.12 gives them.
"""

from __future__ import annotations

import ctypes
import sys

_PROBES = 16
_RESERVE = 1 << 40  # references added to each singleton (3.12 uses a similar immortal count)


def _leaks() -> bool:
    from PySide6.QtCore import QObject, Signal

    class Probe(QObject):
        fired = Signal(int)

    probe = Probe()
    true_before, none_before = sys.getrefcount(True), sys.getrefcount(None)
    for i in range(_PROBES):
        probe.fired.emit(i)
        probe.property("bnp_probe_missing")  # an invalid QVariant, converted to None
    emit_leak = sys.getrefcount(True) - true_before <= -_PROBES // 2
    none_leak = sys.getrefcount(None) - none_before <= -_PROBES // 2
    return emit_leak or none_leak


def install() -> bool:
    """Pin None/True/False when this PySide leaks their references; True when it did."""
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    if not _leaks():
        return False
    for singleton in (None, True, False):
        # ob_refcnt is the first field of every CPython object
        ctypes.c_ssize_t.from_address(id(singleton)).value += _RESERVE
    return True


PATCHED = install()
