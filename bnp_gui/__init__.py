"""BNP Inspector's window (PySide6 + pyqtgraph) over the Qt-free engine in ``core``."""

from bnp_gui import qt_compat as _qt_compat  # noqa: F401 - must run before any signal is emitted
