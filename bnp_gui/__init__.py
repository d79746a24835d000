"""BNP Inspector's window (PySide6 + pyqtgraph) over the Qt-free engine in ``core``."""
