"""Model properties: what was opened, in one persistent pane (architecture, input, classes,
attack, trigger image, target class; the layers the engine skips grouped by reason, which
methods apply and why not, the file's notices), or the empty-state hint before anything is
open."""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget

from bnp_gui.class_names import class_names, label_text
from bnp_gui.image_util import tensor_pixmap
from bnp_gui.session import Session
from core.model.methods import METHOD_NAMES
from core.safety.paths import printable


def escape(text: object) -> str:
    """A file's string for a rich-text field: control characters written out, HTML escaped."""
    return html.escape(printable(text))


EMPTY_HINT = (
    "<b>No model open.</b><br>Open or drop a checkpoint here (File › Open Checkpoint…, Ctrl+O), "
    "then its data (File › Open Data…, Ctrl+D) — or try File › Open Demo."
)
TRIGGER_SIDE = 72
MAX_WIDTH = 280  # a side pane: the heatmap keeps the room


class ModelPropertiesPanel(QWidget):
    """Architecture, input, classes, attack and trigger of the open checkpoint."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.hint = QLabel(EMPTY_HINT)
        self.hint.setWordWrap(True)
        self.fields: dict[str, QLabel] = {}
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.WrapAllRows)  # values get the pane's full width
        for key, title in (
            ("file", "File"),
            ("arch", "Architecture"),
            ("input", "Input"),
            ("classes", "Classes"),
            ("neurons", "BatchNorm neurons"),
            ("attack", "Attack"),
            ("target", "Target class"),
            ("trigger", "ASR trigger"),
            ("methods", "Methods"),
            ("skipped", "Skipped layers"),
            ("notices", "About the file"),
        ):
            label = QLabel("–")
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextSelectableByMouse)
            if key in ("methods", "skipped", "notices"):
                label.setTextFormat(Qt.RichText)  # lines joined by <br>, the text escaped
            else:  # a file's strings are never read as markup
                label.setTextFormat(Qt.PlainText)
            form.addRow(f"{title}:", label)
            self.fields[key] = label
        self.trigger_image = QLabel()
        self.trigger_image.setFixedSize(TRIGGER_SIDE, TRIGGER_SIDE)
        self.trigger_image.setAlignment(Qt.AlignCenter)
        self.trigger_image.setToolTip("The trigger that measures the ASR (pixels enlarged)")
        form.addRow("Trigger image:", self.trigger_image)
        self.form_layout = form
        self.form = QWidget()
        self.form.setLayout(form)
        self.setMaximumWidth(MAX_WIDTH)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.hint)
        layout.addWidget(self.form)
        layout.addStretch(1)
        for signal in (session.checkpoint_changed, session.trigger_changed, session.data_changed):
            signal.connect(self.refresh)
        self.refresh()

    def set_compact(self, compact: bool) -> None:
        """Presentation mode: only attack, target, trigger (what an audience needs)."""
        for row, key in enumerate(self.fields):
            self.form_layout.setRowVisible(row, not compact or key in ("attack", "target"))

    def text(self, key: str) -> str:
        return self.fields[key].text()

    def refresh(self) -> None:
        s = self.session
        loaded = s.inspection is not None
        self.hint.setVisible(not loaded)
        self.form.setVisible(loaded)
        if not loaded:
            return
        ckpt = s.inspection.ckpt
        meta = ckpt.metadata
        spec = s.inspection.spec
        names = class_names(s)
        f = self.fields
        f["file"].setText(f"{Path(s.checkpoint_path).name} ({ckpt.format} format)")
        f["file"].setToolTip(s.checkpoint_path)
        dataset = f", trained on {printable(meta.dataset, 200)}" if meta.dataset else ""
        f["arch"].setText(printable(meta.arch) + dataset)
        norm = f"; normalised mean {spec.mean}, std {spec.std}" if spec.mean else ""
        f["input"].setText(f"{spec.channels}×{spec.size[0]}×{spec.size[1]}{norm}")
        shown = ", ".join(names) if names else "names unknown (labels shown as numbers)"
        f["classes"].setText(f"{meta.num_classes}: {shown}")
        f["neurons"].setText(
            f"{sum(c for _, c in s.layers)} in {len(s.layers)} layers; computed on "
            f"{s.inspection.device_name}"
        )
        attack = meta.attack or {}
        if attack:
            details = [attack.get("kind", "?")]
            if attack.get("rate") is not None:
                details.append(f"poisoning rate {attack['rate']:g}")
            if attack.get("size"):
                details.append(f"{attack['size']}×{attack['size']} patch")
            shown = ", ".join(printable(d, 200) for d in details)
            f["attack"].setText(shown + " (from the checkpoint)")
        else:
            f["attack"].setText("not recorded in the checkpoint")
        trigger = s.trigger
        target = trigger.target if trigger is not None else meta.target_label
        f["target"].setText(label_text(names, target))
        if trigger is not None:
            f["trigger"].setText(trigger.source.describe())
        else:
            f["trigger"].setText(f"none ({s.trigger_error})" if s.trigger_error else "none")
        self.trigger_image.setPixmap(self._trigger_pixmap())
        self._layers_and_methods()

    def _layers_and_methods(self) -> None:
        """What the engine leaves out and why: as `bnp info` lists it, in the pane."""
        inspection = self.session.inspection
        found = inspection.discovery
        lines = []
        from core.model.graph import method_availability

        for method, (applies, why) in method_availability(inspection.model, found).items():
            verdict = "applies" if applies else "<b>cannot apply</b>"
            lines.append(f"{METHOD_NAMES[method]} {verdict}: {escape(why)}")
        self.fields["methods"].setText("<br>".join(lines))
        groups: dict[tuple[str, str], list[str]] = {}
        for skipped in found.skipped:  # one entry per kind and reason, as in `bnp info`
            groups.setdefault((skipped.kind, skipped.reason), []).append(skipped.name)
        entries = []
        for (kind, reason), names in groups.items():
            shown = ", ".join(names[:3]) + (f", … (+{len(names) - 3})" if len(names) > 3 else "")
            entries.append(f"{len(names)} {escape(kind)} ({escape(shown)}): {escape(reason)}")
        self.fields["skipped"].setText(
            "<br>".join(entries) if entries else f"none (layers traced by {found.traced_by})"
        )
        notices = inspection.ckpt.notices
        self.fields["notices"].setText(
            "<br>".join(f"• {escape(n)}" for n in notices) if notices else "nothing to note"
        )

    def _trigger_pixmap(self):
        from PySide6.QtGui import QPixmap

        trigger = self.session.trigger
        if trigger is None:
            return QPixmap()
        if trigger.trigger is not None and hasattr(trigger.trigger, "tensor"):
            return tensor_pixmap(trigger.trigger.tensor, self.trigger_image.width())
        if trigger.poisoned is not None and len(trigger.poisoned):
            return tensor_pixmap(trigger.poisoned.images[0], self.trigger_image.width())
        return QPixmap()
