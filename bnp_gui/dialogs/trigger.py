"""Trigger source for ASR: the checkpoint's own trigger, a trigger image (patch or blend α), or a
folder of poisoned samples, with the attack's target label."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from bnp_gui.trigger_source import TriggerSource


class TriggerWidget(QWidget):
    """Edits a TriggerSource; embedded in the data dialog and in its own dialog."""

    def __init__(self, source: TriggerSource, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.kind_buttons: dict[str, QRadioButton] = {}
        group = QButtonGroup(self)
        kinds = QHBoxLayout()
        for kind, text, tip in (
            ("checkpoint", "Checkpoint's trigger", "Use the trigger stored with the checkpoint"),
            ("image", "Trigger image", "Stamp an image (PNG/.npy) onto the test samples"),
            ("folder", "Poisoned samples", "A folder of samples that already carry the trigger"),
            ("none", "None", "Measure ACC only"),
        ):
            button = QRadioButton(text)
            button.setToolTip(tip)
            group.addButton(button)
            kinds.addWidget(button)
            self.kind_buttons[kind] = button
            button.toggled.connect(self._update_enabled)
        self.path = QLineEdit(source.path)
        self.path.setPlaceholderText("trigger image, or folder of poisoned samples")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path, 1)
        path_row.addWidget(browse)
        self.placement = QComboBox()
        self.placement.addItem("patch (pasted bottom-right)", "patch")
        self.placement.addItem("blend over the whole image", "blend")
        self.placement.addItem("patch in all four corners (clean-label attack)", "four-corner")
        self.placement.setCurrentIndex(max(0, self.placement.findData(source.placement)))
        self.alpha = QDoubleSpinBox()
        self.alpha.setRange(0.01, 1.0)
        self.alpha.setSingleStep(0.05)
        self.alpha.setValue(source.alpha)
        self.alpha.setToolTip("Blend weight α: image becomes (1−α)·image + α·pattern")
        self.size = QSpinBox()
        self.size.setRange(0, 1024)
        self.size.setSpecialValueText("image's own size")
        self.size.setValue(source.size or 0)
        self.size.setToolTip("Patch side in pixels (0: the trigger image's own size)")
        self.target = QSpinBox()
        self.target.setRange(-1, 100000)
        self.target.setSpecialValueText("from checkpoint")
        self.target.setValue(-1 if source.target is None else source.target)
        self.target.setToolTip("The attack's target label (blank: the checkpoint's metadata)")

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Source:", kinds)
        form.addRow("File / folder:", path_row)
        form.addRow("Placement:", self.placement)
        form.addRow("Blend α:", self.alpha)
        form.addRow("Patch size:", self.size)
        form.addRow("Target label:", self.target)
        self.kind_buttons.get(source.kind, self.kind_buttons["checkpoint"]).setChecked(True)
        self.placement.currentIndexChanged.connect(self._update_enabled)
        self._update_enabled()

    def kind(self) -> str:
        return next(k for k, b in self.kind_buttons.items() if b.isChecked())

    def source(self) -> TriggerSource:
        target = self.target.value()
        return TriggerSource(
            kind=self.kind(),  # type: ignore[arg-type]
            path=self.path.text().strip(),
            placement=self.placement.currentData(),
            alpha=self.alpha.value(),
            size=self.size.value() or None,
            target=None if target < 0 else target,
        )

    def _update_enabled(self) -> None:
        kind = self.kind() if any(b.isChecked() for b in self.kind_buttons.values()) else ""
        self.path.setEnabled(kind in ("image", "folder"))
        self.placement.setEnabled(kind == "image")
        self.alpha.setEnabled(kind == "image" and self.placement.currentData() == "blend")
        self.size.setEnabled(kind == "image")
        self.target.setEnabled(kind != "none")

    def _browse(self) -> None:
        if self.kind() == "folder":
            path = QFileDialog.getExistingDirectory(self, "Folder of poisoned samples")
        else:
            path, _ = QFileDialog.getOpenFileName(
                self, "Trigger image", "", "Images (*.png *.jpg *.jpeg *.bmp *.npy);;All (*)"
            )
        if path:
            self.path.setText(path)


class TriggerDialog(QDialog):
    """Data › Trigger source…"""

    def __init__(self, source: TriggerSource, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Trigger source for ASR")
        self.editor = TriggerWidget(source)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.editor)
        layout.addWidget(buttons)

    def source(self) -> TriggerSource:
        return self.editor.source()
