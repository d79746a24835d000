"""Ask before unpickling a checkpoint that safe loading refused (pickles can run code)."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget


def confirm_trust(parent: QWidget, path: str, why: str) -> bool:
    """True when the user explicitly trusts the file; the default answer is No."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Warning)
    box.setWindowTitle("Trust this checkpoint?")
    box.setText(f"<b>{path}</b> cannot be loaded safely.")
    box.setInformativeText(
        "Loading it needs full unpickling, which can run arbitrary code on this computer. "
        "Only continue if you trust where the file comes from.\n\nLoad it anyway?"
    )
    box.setDetailedText(why)
    box.setStandardButtons(QMessageBox.Yes | QMessageBox.No)
    box.setDefaultButton(QMessageBox.No)
    box.button(QMessageBox.Yes).setText("Trust and load")
    return box.exec() == QMessageBox.Yes
