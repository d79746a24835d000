"""Choose the architecture when detection cannot decide (or the user wants to force one): a
registered architecture, any model of the libraries' registries (timm/<name>, torchvision), or
the analyst's own model code (`FILE.py:CALLABLE`, which runs that code); and, for files that
hold an EMA copy beside the model's weights, which weight set to use."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QCompleter,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

CODE_WARNING = (
    "Your own code builds the model: the file is run as Python on this computer and "
    "CALLABLE() must return the torch.nn.Module the weights load into (strictly). Only for "
    "code you trust."
)
WEIGHTS = (("The model's weights (default)", None), ("The EMA copy, where the file has one", "ema"))


def architecture_names() -> list[tuple[str, str]]:
    """(label, name) of every architecture the engine can build: registered ones first."""
    from core.model import library_models
    from core.model.architectures import ARCHITECTURES, HAND_REGISTERED

    names = [(f"{n} ({ARCHITECTURES[n].family})", n) for n in HAND_REGISTERED]
    for library in library_models.LIBRARIES:
        for name in sorted(library_models.known_descriptions(library)):  # never computed here
            if name not in HAND_REGISTERED:
                names.append((f"{name} ({library})", name))
    return names


class ArchitectureDialog(QDialog):
    """A list of the architectures (or your model code), with the engine's explanation."""

    def __init__(
        self, path: str, why: str, parent: QWidget | None = None, *, forced: bool = False
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Choose the architecture")
        self.combo = QComboBox()
        self.combo.setEditable(True)  # type to search among ~1500 names (<arch>+groupnorm too)
        self.combo.setInsertPolicy(QComboBox.NoInsert)
        for label, name in architecture_names():  # torch: the window opens it once loaded
            self.combo.addItem(label, name)
        self.combo.completer().setFilterMode(Qt.MatchContains)
        self.combo.completer().setCompletionMode(QCompleter.PopupCompletion)
        self.use_arch = QRadioButton("An architecture:")
        self.use_code = QRadioButton("My own model code (FILE.py:CALLABLE):")
        self.use_arch.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.use_arch)
        group.addButton(self.use_code)
        self.code = QLineEdit()
        self.code.setPlaceholderText("nets.py:build_model")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        code_row = QHBoxLayout()
        code_row.addWidget(self.code)
        code_row.addWidget(browse)
        code_note = QLabel(CODE_WARNING)
        code_note.setWordWrap(True)
        self.weight_set = QComboBox()
        for label, value in WEIGHTS:
            self.weight_set.addItem(label, value)
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
        layout.addWidget(self.use_arch)
        layout.addWidget(self.combo)
        layout.addWidget(self.use_code)
        layout.addLayout(code_row)
        layout.addWidget(code_note)
        layout.addWidget(QLabel("Weights:"))
        layout.addWidget(self.weight_set)
        layout.addWidget(details)
        layout.addWidget(buttons)
        self.code.textEdited.connect(lambda _: self.use_code.setChecked(True))
        self.combo.activated.connect(lambda _: self.use_arch.setChecked(True))

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model code", "", "Python (*.py)")
        if path:
            name = self.code.text().rpartition(":")[2] or "build"
            self.code.setText(f"{path}:{name}")
            self.use_code.setChecked(True)

    def arch(self) -> str | None:
        if self.use_code.isChecked():
            return None
        index = self.combo.findText(self.combo.currentText())
        if index >= 0:
            return self.combo.itemData(index)
        return self.combo.currentText().split(" (")[0].strip() or None  # a name typed in

    def model_code(self) -> str | None:
        return self.code.text().strip() or None if self.use_code.isChecked() else None

    def weights(self) -> str | None:
        return self.weight_set.currentData()

    def choice(self) -> dict:
        """The keyword arguments of the open: arch or model_code, and weights."""
        return {"arch": self.arch(), "model_code": self.model_code(), "weights": self.weights()}
