"""File › Open Data: a folder per role (clean samples, suspect training set, test set) and the
trigger source for ASR. A parent folder fills the roles from its sub-folder names."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from bnp_gui.data_roles import ROLE_LABELS, ROLES, DataRoles, guess_roles
from bnp_gui.dialogs.trigger import TriggerWidget
from bnp_gui.trigger_source import TriggerSource
from core.errors import BnpError


class OpenDataDialog(QDialog):
    """Choose the data folder of each role and the trigger source."""

    def __init__(
        self, roles: DataRoles, trigger: TriggerSource, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open data")
        self.edits: dict[str, QLineEdit] = {}
        self.note = QLabel(
            "Formats: data.npy + labels.npy, an ImageFolder tree, (Fashion-)MNIST idx files, "
            "cifar-10-batches-py. Choose a parent folder to fill the roles from its sub-folders "
            "(clean/, train_poisoned/, test/)."
        )
        self.note.setWordWrap(True)
        parent_button = QPushButton("Fill from parent folder…")
        parent_button.setToolTip("Pick a folder holding clean/, train*/ and test/ sub-folders")
        parent_button.clicked.connect(self._from_parent)

        roles_box = QGroupBox("Data roles")
        form = QFormLayout(roles_box)
        for role in ROLES:
            edit = QLineEdit(roles.get(role))
            edit.setPlaceholderText("not used" if role != "clean" else "required for BNP")
            browse = QPushButton("…")
            browse.setToolTip(f"Choose the folder of: {ROLE_LABELS[role]}")
            browse.setProperty("role", role)
            browse.clicked.connect(self._browse)
            row = QHBoxLayout()
            row.addWidget(edit, 1)
            row.addWidget(browse)
            form.addRow(ROLE_LABELS[role] + ":", row)
            self.edits[role] = edit
        trigger_box = QGroupBox("Trigger source for ASR")
        self.trigger = TriggerWidget(trigger)
        QVBoxLayout(trigger_box).addWidget(self.trigger)

        buttons = QDialogButtonBox(QDialogButtonBox.Open | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.note)
        layout.addWidget(parent_button)
        layout.addWidget(roles_box)
        layout.addWidget(trigger_box)
        layout.addWidget(buttons)
        self.resize(640, self.sizeHint().height())

    def roles(self) -> DataRoles:
        return DataRoles(**{role: self.edits[role].text().strip() for role in ROLES})

    def trigger_source(self) -> TriggerSource:
        return self.trigger.source()

    def set_parent_folder(self, folder: str) -> None:
        try:
            roles = guess_roles(folder)
        except BnpError as exc:
            self.note.setText(f"<span style='color:#d03030'>{exc}</span>")
            return
        for role in ROLES:
            self.edits[role].setText(roles.get(role))

    def _from_parent(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Parent data folder")
        if folder:
            self.set_parent_folder(folder)

    def _browse(self) -> None:
        role = self.sender().property("role")
        folder = QFileDialog.getExistingDirectory(self, ROLE_LABELS[role])
        if folder:
            self.edits[role].setText(folder)
