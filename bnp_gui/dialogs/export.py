"""File › Export: folder and model format for the pruned model and its report."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from bnp_gui.report import MODEL_FORMATS


class ExportDialog(QDialog):
    """Where to write, and in which format."""

    def __init__(self, folder: str, fmt: str = "seed", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export pruned model and report")
        self.folder = QLineEdit(folder)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        self.format = QComboBox()
        for key, text in MODEL_FORMATS.items():
            self.format.addItem(text, key)
        index = self.format.findData(fmt)
        self.format.setCurrentIndex(max(index, 0))
        form = QFormLayout()
        form.addRow("Folder:", row)
        form.addRow("Model format:", self.format)
        note = QLabel(
            "Measures exactly this mask on the full test set (a progress bar shows it; Esc "
            "cancels), then writes the pruned model, report.json (the keys of bnp defend "
            "--report, the decisions, sha256 of input and output, the reproducing command), "
            "report.html, heatmap.png, tradeoff.png and neuron_scores.csv."
        )
        note.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.Save | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)
        self.resize(560, self.sizeHint().height())

    def values(self) -> tuple[str, str]:
        return self.folder.text().strip(), self.format.currentData()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export folder", self.folder.text())
        if folder:
            self.folder.setText(folder)
