"""Ask before a session file opens paths outside its own folder (it may come from someone else)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QWidget

from core.safety.paths import printable


def confirm_outside(parent: QWidget, session: str, paths: list[str]) -> bool:
    """True when the user agrees to open ``paths``; the default answer is No."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Warning)
    box.setTextFormat(Qt.PlainText)
    box.setWindowTitle("Open files outside the session's folder?")
    box.setText(
        f"The session {printable(session)} points at {len(paths)} file(s) or folder(s) outside "
        "its own folder. A session from someone else can point anywhere on this computer."
    )
    box.setInformativeText("Open them?")
    box.setDetailedText("\n".join(printable(p) for p in paths))
    box.setStandardButtons(QMessageBox.Yes | QMessageBox.No)
    box.setDefaultButton(QMessageBox.No)
    box.button(QMessageBox.Yes).setText("Open them")
    return box.exec() == QMessageBox.Yes
