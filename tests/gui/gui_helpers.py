"""Waiting helpers shared by the GUI tests (a uniquely named module, not conftest, so that it
never clashes with another conftest.py on sys.path)."""

from __future__ import annotations

# ms. Every wait in the GUI tests is a guard against a hang, never a latency bound (those live in
# bench/): on a shared 2-core machine under load a step that takes 2 s idle took over 120 s.
LONG = 1_800_000


def open_model(qtbot, window, checkpoint: str) -> None:
    with qtbot.waitSignal(window.session.checkpoint_changed, timeout=LONG):
        window.open_checkpoint(checkpoint)


def open_data(qtbot, window, roles) -> None:
    with qtbot.waitSignal(window.session.data_changed, timeout=LONG):
        window.open_data(roles)


def wait_full_preview(qtbot, session) -> None:
    qtbot.waitUntil(
        lambda: (
            session.preview is not None
            and session.preview.stage == "full"
            and not session.is_busy("preview")
            and not session.preview_pending
        ),
        timeout=LONG,
    )


def analyze(qtbot, window) -> None:
    with qtbot.waitSignal(window.session.analysis_finished, timeout=LONG):
        window.session.analyze()


def analysed(qtbot, window, model, *, defaults: bool = False, suspects: bool = False):
    """`model` (checkpoint, data roles) opened and analysed; the session. `defaults`: from the
    paper's defaults (earlier tests saved other settings); `suspects`: until the suspect-sample
    analysis is in too."""
    checkpoint, roles = model
    if defaults:
        window.tools.reset_to_defaults()
    open_model(qtbot, window, checkpoint)
    open_data(qtbot, window, roles)
    analyze(qtbot, window)
    s = window.session
    if suspects:
        qtbot.waitUntil(lambda: s.suspects.analysis is not None, timeout=LONG)
    return s
