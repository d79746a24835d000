"""BNP Inspector's window (PySide6 + pyqtgraph) over the Qt-free engine in ``core``."""

import os

# An interactive app shares the CPU (with its own UI thread and with whatever else runs): idle
# OpenMP workers must sleep, not spin. Spinning made previews 3-5x slower on a busy 2-core
# machine (bench/bench_preview.py). Read by libgomp when torch loads, so set before that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bnp_gui import qt_compat as _qt_compat  # noqa: E402, F401 - before any signal is emitted
