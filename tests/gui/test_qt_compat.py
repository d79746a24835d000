"""The PySide6 refcount workaround: signals and empty QVariants can be used without limit."""

import sys

from PySide6.QtCore import QObject, Signal

from bnp_gui import qt_compat


class _Source(QObject):
    fired = Signal(int)


def test_many_emits_and_empty_variants_do_not_exhaust_singletons():
    source = _Source()
    received = []
    source.fired.connect(received.append)
    for i in range(20000):
        source.fired.emit(i)
        source.property("missing")
    assert len(received) == 20000
    # without the workaround on an affected PySide, True/None would be near (or past) zero now
    assert sys.getrefcount(True) > 1000 and sys.getrefcount(None) > 1000
    assert isinstance(qt_compat.PATCHED, bool)
