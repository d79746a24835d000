"""``--screenshot``: wait until the window shows an analysed session, then save it as a PNG."""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, QTimer, Signal

from bnp_gui.session import CURVE_KS, DIRECTION


class ScreenshotWhenReady(QObject):
    """Polls the session; once analysis, full preview, curve and neuron plot are in, grabs."""

    done = Signal(bool)  # whether everything was ready (False: grabbed at the time limit)

    def __init__(self, window, path: str, timeout_s: float = 180.0) -> None:
        super().__init__(window)
        self.window = window
        self.path = path
        self.deadline = time.monotonic() + timeout_s
        self.timer = QTimer(self)
        self.timer.setInterval(200)
        self.timer.timeout.connect(self._check)
        self.complete = False  # set when grabbed with everything ready

    def start(self) -> None:
        self.timer.start()

    def ready(self) -> bool:
        s = self.window.session
        if s.inspection is None or not ({"bnp", "ep"} & set(s.scores)):
            return False
        if s.preview is None or s.preview.stage != "full" or s.preview_pending:
            return False
        if s.selected is None:
            s.select_neuron(most_suspicious(s))
            return False
        if s.activations is None:
            return False
        tools = self.window.tools
        if tools.presentation.on and s.trigger is not None and not tools.examples.examples:
            return False  # the example strip is what an audience looks at
        return len(s.curves.get(s.view_method, [])) >= len(CURVE_KS)

    def failed(self) -> bool:
        """Nothing will come: the window shows an error and nothing runs (e.g. a bad file)."""
        s = self.window.session
        error = self.window.banner.level == "error" and self.window.banner.isVisible()
        return error and not any(
            s.is_busy(lane) for lane in ("load", "collect", "preview", "curve", "neuron")
        )

    def _check(self) -> None:
        ready = self.ready()
        # a failed load is shown as it is (the window's error message) instead of waiting
        timed_out = time.monotonic() > self.deadline or self.failed()
        if not (ready or timed_out) or self.window.session.is_busy("collect"):
            if not timed_out:
                return
        self.timer.stop()
        QTimer.singleShot(300, lambda: self._grab(ready))  # let the last repaint land

    def _grab(self, ready: bool) -> None:
        self.window.grab().save(self.path)
        self.complete = ready
        self.done.emit(ready)


def most_suspicious(session) -> tuple[str, int] | None:
    """For the demo picture: the most extreme flagged neuron of the deepest layer that has one
    (backdoor features live deep), else the most extreme neuron overall."""
    method = session.view_method
    zs = session.zscores.get(method) or {}
    flags = session.flags.get(method) or {}
    sign = 1.0 if DIRECTION[method] == "high" else -1.0
    import torch  # the engine has loaded: an analysis is on screen

    for layer, _ in reversed(session.layers):
        flagged = flags.get(layer)
        if flagged is not None and bool(flagged.any()) and zs.get(layer) is not None:
            values = torch.where(flagged, sign * zs[layer], torch.tensor(-float("inf")))
            return layer, int(torch.nan_to_num(values, nan=-float("inf")).argmax())
    best, best_z = None, -float("inf")
    for layer, z in zs.items():
        if z is None or z.numel() == 0:
            continue
        values = torch.nan_to_num(sign * z, nan=-float("inf"))
        ch = int(values.argmax())
        if float(values[ch]) > best_z:
            best, best_z = (layer, ch), float(values[ch])
    return best
