"""Choose the architecture when detection cannot decide (or the user wants to force one)."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)


class ArchitectureDialog(QDialog):
    """A list of the registered architectures, with the engine's explanation."""

    def __init__(
        self, path: str, why: str, parent: QWidget | None = None, *, forced: bool = False
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Choose the architecture")
        from core.architectures import ARCHITECTURES  # torch: the window opens it once loaded

        self.combo = QComboBox()
        for name, spec in ARCHITECTURES.items():
            self.combo.addItem(f"{name} ({spec.family})", name)
        details = QPlainTextEdit(why)
        details.setReadOnly(True)
        details.setMaximumHeight(140)
        details.setVisible(bool(why))
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        intro = (
            f"Load <b>{path}</b> as:"
            if forced
            else f"The architecture of <b>{path}</b> could not be detected. Load it as:"
        )
        label = QLabel(intro)
        label.setWordWrap(True)
        layout.addWidget(label)
        layout.addWidget(self.combo)
        layout.addWidget(details)
        layout.addWidget(buttons)

    def arch(self) -> str:
        return self.combo.currentData()
