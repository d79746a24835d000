"""Entry point of ``bnp-gui``: command line, QApplication, the window, and the screenshot mode.

Start-up paints the window before anything imports torch (seconds on a busy machine): the engine
loads on a worker thread (bnp_gui/engine.py) and what the command line opens waits for it;
`bnp-gui -h` imports neither Qt nor torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

APP_NAME = "bnp-gui"
ORG_NAME = "BNP Inspector"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bnp-gui", description="Find and prune backdoor neurons (EP, BNP, CLP)."
    )
    parser.add_argument("checkpoint", nargs="?", help="checkpoint to open")
    parser.add_argument(
        "--data", metavar="DIR", help="data folder (clean/, train_poisoned/, test/)"
    )
    parser.add_argument("--demo", action="store_true", help="open the bundled demo and analyse it")
    parser.add_argument(
        "--screenshot", metavar="FILE.png", help="render the analysed window to FILE and exit"
    )
    parser.add_argument("--size", default="1440x900", help="window size for --screenshot")
    parser.add_argument(
        "--presentation", action="store_true", help="start in presentation mode (F11)"
    )
    parser.add_argument("--dark", action="store_true", help="use a dark palette")
    parser.add_argument(
        "--screenshot-timeout",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="grab the window after this long even if the analysis is not complete (exit 1)",
    )
    return parser.parse_args(argv)


def import_pyqtgraph():
    """pyqtgraph, without the CUDA runtime bindings its RawImageWidget (unused here) tries at
    import: with torch's CUDA packages installed they cost 0.2–0.5 s of the window's start.
    They are hidden only while pyqtgraph imports; torch imports them as usual later."""
    hidden = "cuda.bindings.runtime"
    if "pyqtgraph" in sys.modules or hidden in sys.modules:
        import pyqtgraph

        return pyqtgraph
    sys.modules[hidden] = None  # an import of it raises ImportError, which pyqtgraph expects
    try:
        import pyqtgraph
    finally:
        if hidden in sys.modules and sys.modules[hidden] is None:
            del sys.modules[hidden]
    return pyqtgraph


def make_application(argv: list[str] | None = None):
    """The QApplication, named so that QSettings find the right place, pyqtgraph configured."""
    from PySide6.QtWidgets import QApplication

    pg = import_pyqtgraph()

    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv[:1])
    app.setOrganizationName(ORG_NAME)
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName("BNP Inspector")
    pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)
    from bnp_gui import svg_export

    svg_export.install()  # the plots' Export… › SVG works with PySide6 6.12
    from PySide6.QtGui import QIcon

    app.setWindowIcon(QIcon(str(Path(__file__).with_name("icon.svg"))))
    _collect_garbage_on_gui_thread()
    return app


_collector = None


def _collect_garbage_on_gui_thread() -> None:
    """Python's cycle collector runs in whichever thread happens to allocate; when it frees Qt
    objects from a worker thread, Qt crashes (seen: a segfault in a worker's torch.load while
    collecting). pyqtgraph's GarbageCollector turns automatic collection off and collects from a
    timer on the GUI thread instead."""
    global _collector
    if _collector is None:
        from pyqtgraph.util.garbage_collector import GarbageCollector

        _collector = GarbageCollector(interval=0.5)


def install_excepthook(window) -> None:
    """A bug in a slot becomes a message in the window (and a log line), not a dead app."""
    import logging
    import traceback

    def hook(kind, value, tb):
        logging.getLogger("bnp_gui").error("".join(traceback.format_exception(kind, value, tb)))
        try:
            window.show_message("error", f"Internal error ({kind.__name__}): {value}")
        except RuntimeError:  # the window is already gone
            pass

    sys.excepthook = hook


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    app = make_application()
    from bnp_gui.data_roles import guess_roles
    from bnp_gui.engine import Engine, start_after_first_paint
    from bnp_gui.mainwindow import MainWindow

    if args.dark:
        from bnp_gui.palette import dark_palette

        app.setStyle("Fusion")  # the platform style may ignore a palette
        app.setPalette(dark_palette())
    engine = Engine()  # torch loads on a worker thread once the window has painted
    window = MainWindow(persist=not args.screenshot, interactive=not args.screenshot, engine=engine)
    install_excepthook(window)
    if args.screenshot:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            print(f"bnp-gui: --size must look like 1440x900, not {args.size!r}", file=sys.stderr)
            return 2
        window.resize(w, h)
    if args.presentation:
        window.tools.presentation_action.setChecked(True)
        window.tools.presentation.set(True)
    window.show()
    start_after_first_paint(window, engine.start)
    # what the command line asks for waits in the engine's queue, in this order
    if args.demo:
        window.open_demo(analyze=True)
    else:
        if args.checkpoint:
            window.session.auto_analyze = bool(args.data)
            window.open_checkpoint(args.checkpoint)
        if args.data:
            if Path(args.data).is_dir():
                window.open_data(guess_roles(args.data))
            else:
                window.show_message("error", f"--data: {args.data} is not a folder.")
    if args.screenshot:
        from bnp_gui.screenshot import ScreenshotWhenReady

        shooter = ScreenshotWhenReady(window, args.screenshot, args.screenshot_timeout)
        shooter.done.connect(app.quit)
        shooter.start()
    code = app.exec()
    engine.wait()  # an import cannot be interrupted: let it end before the thread is destroyed
    window.session.shutdown()  # quit without closing the window (--screenshot): join workers
    if args.screenshot:  # the picture is written either way; say whether it shows an analysis
        return 0 if Path(args.screenshot).is_file() and shooter.complete else 1
    return code


if __name__ == "__main__":
    sys.exit(main())
