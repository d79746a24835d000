"""Example strip: a few test images carrying the trigger, with the model's prediction before and
after pruning (class names), so an audience sees the backdoor fire and then fail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from bnp_gui.class_names import class_names
from bnp_gui.image_util import tensor_pixmap
from bnp_gui.session import Session

if TYPE_CHECKING:  # torch is imported where it is used, once the engine has loaded
    import torch

N_EXAMPLES = 6


@dataclass
class Example:
    """One triggered image, its true label and the predictions without and with the mask."""

    image: torch.Tensor  # C×H×W float [0, 1], as the model sees it before normalisation
    label: int
    before: int
    after: int


def pick_examples(session, n: int = N_EXAMPLES) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(raw images, labels, needs trigger): one sample per non-target class, in class order."""
    trigger = session.trigger
    if trigger.poisoned is not None:
        data, stamp = trigger.poisoned, False
    else:
        data, stamp = session.eval_set(), True
    chosen, seen = [], set()
    for i, label in enumerate(data.labels.tolist()):
        if label != trigger.target and label not in seen:
            chosen.append(i)
            seen.add(label)
            if len(chosen) == n:
                break
    import torch

    index = torch.tensor(chosen, dtype=torch.long)
    return data.images[index], data.labels[index], stamp


def compute_examples(inspection, images, labels, trigger, mask) -> list[Example]:
    """Predictions of the unpruned and the masked model on the triggered images (engine)."""
    from core.defense.evaluation import predict

    spec = inspection.spec
    shown = spec.conform(images)
    if trigger is not None:
        shown = trigger.apply(shown)
    common = dict(trigger=trigger, device=inspection.device)
    before = predict(inspection.model, images, spec, **common)
    after = predict(inspection.model, images, spec, mask=mask, **common)
    return [
        Example(shown[i], int(labels[i]), int(before[i]), int(after[i])) for i in range(len(labels))
    ]


class ExampleStripPanel(QWidget):
    """Triggered test images with predictions before/after the current mask."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.side = 72
        self.caption_font: QFont | None = None  # presentation: captions smaller than the rest
        self.examples: list[Example] = []
        self.status = QLabel("Open a model, its test data and a trigger to see examples.")
        self.status.setWordWrap(True)
        self.grid = QGridLayout()
        self.grid.setHorizontalSpacing(10)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.status)
        layout.addLayout(self.grid)
        layout.addStretch(1)
        session.preview_changed.connect(self._preview_changed)
        session.checkpoint_changed.connect(self._clear)
        session.trigger_changed.connect(self._clear)

    def set_side(self, side: int, caption_font: QFont | None = None) -> None:
        """Thumbnail size in pixels (presentation mode shows them larger) and the captions'
        font (None: the panel's own)."""
        self.side = side
        self.caption_font = caption_font
        self.status.setFont(caption_font or QFont())  # QFont(): inherit every attribute
        self._render()

    def _clear(self) -> None:
        self.examples = []
        self._render()

    def _preview_changed(self) -> None:
        s = self.session
        p = s.preview
        if p is None or p.stage != "full" or s.preview_pending:
            return
        self.start()

    def start(self) -> None:
        """Compute the strip for the current mask on a worker (after the full preview)."""
        s = self.session
        if s.inspection is None or s.trigger is None or s.eval_set() is None:
            self._clear()
            return
        images, labels, stamp = pick_examples(s)
        if len(labels) == 0:
            self._clear()
            return
        inspection, mask = s.inspection, s.display_mask
        trigger = s.trigger.trigger if stamp else None

        def run(job):
            return compute_examples(inspection, images, labels, trigger, mask)

        s.runner.start("examples", run, done=self._ready, error=lambda exc: None)

    def _ready(self, examples: list[Example]) -> None:
        self.examples = examples
        self._render()

    def _render(self) -> None:
        while self.grid.count():
            item = self.grid.takeAt(0)
            widget = item.widget()
            if widget is not None:
                widget.hide()  # gone from the picture now, deleted at the next loop pass
                widget.deleteLater()
        if not self.examples:
            self.status.setText("Examples appear once ACC/ASR are measured on the full set.")
            return
        s = self.session
        names = class_names(s)
        target = s.trigger.target if s.trigger is not None else None

        def name(label: int) -> str:
            return names[label] if names and 0 <= label < len(names) else str(label)

        fired = sum(e.before == target for e in self.examples)
        fixed = sum(e.after == e.label for e in self.examples)
        self.status.setText(
            f"Triggered test images (target: {name(target) if target is not None else '–'}). "
            f"Before pruning {fired} of {len(self.examples)} go to the target; after pruning "
            f"{fixed} are classified correctly."
        )
        for col, e in enumerate(self.examples):
            image = QLabel()
            image.setPixmap(tensor_pixmap(e.image, self.side))
            image.setAlignment(Qt.AlignCenter)
            ok_before = "✓" if e.before == e.label else "✗"
            ok_after = "✓" if e.after == e.label else "✗"
            text = QLabel(
                f"<b>{name(e.label)}</b><br>before: {name(e.before)} {ok_before}"
                f"<br>after: {name(e.after)} {ok_after}"
            )
            text.setAlignment(Qt.AlignHCenter | Qt.AlignTop)
            if self.caption_font is not None:
                text.setFont(self.caption_font)
            text.setToolTip(
                f"true class {e.label}; predicted {e.before} before pruning, {e.after} after"
            )
            self.grid.addWidget(image, 0, col)
            self.grid.addWidget(text, 1, col)
