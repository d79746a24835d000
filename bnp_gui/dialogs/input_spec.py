"""Model › Input settings: channels, size and normalisation the model's inputs are conformed to
(inferred from the checkpoint; override when the metadata is missing or wrong)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from core.data.images import InputSpec


def _parse_floats(text: str) -> tuple[float, ...] | None:
    text = text.strip()
    if not text:
        return None
    return tuple(float(v) for v in text.replace(",", " ").split())


class InputSpecDialog(QDialog):
    """Edit an InputSpec's channels, size, mean and std."""

    def __init__(self, spec: InputSpec, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Input settings")
        self.channels = QSpinBox()
        self.channels.setRange(1, 4)
        self.channels.setValue(spec.channels)
        self.height = QSpinBox()
        self.width = QSpinBox()
        for box, value in ((self.height, spec.size[0]), (self.width, spec.size[1])):
            box.setRange(4, 4096)
            box.setValue(value)
        self.mean = QLineEdit(" ".join(f"{v:g}" for v in spec.mean) if spec.mean else "")
        self.std = QLineEdit(" ".join(f"{v:g}" for v in spec.std) if spec.std else "")
        for edit in (self.mean, self.std):
            edit.setPlaceholderText("none (inputs stay in [0, 1])")
            edit.setToolTip("One value, or one per channel, separated by spaces or commas")
        self.error = QLabel("")
        self.error.setStyleSheet("color: #d03030")
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow("Channels:", self.channels)
        form.addRow("Height:", self.height)
        form.addRow("Width:", self.width)
        form.addRow("Mean:", self.mean)
        form.addRow("Std:", self.std)
        layout = QVBoxLayout(self)
        layout.addWidget(
            QLabel(
                "Images are converted to these channels and this size, then "
                "normalised as (x − mean) / std."
            )
        )
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(buttons)
        self._changes: dict = {}

    def changes(self) -> dict:
        """Keyword arguments for ``Session.set_input_spec``."""
        return self._changes

    def _accept(self) -> None:
        try:
            mean, std = _parse_floats(self.mean.text()), _parse_floats(self.std.text())
        except ValueError:
            self.error.setText("Mean and std must be numbers.")
            return
        self._changes = {
            "channels": self.channels.value(),
            "size": (self.height.value(), self.width.value()),
            "mean": mean,
            "std": std,
        }
        self.accept()
