"""The banner above the panels: the newest error, warning or note, coloured by its level and
readable in light and dark palettes."""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QApplication,
    QFrame,
    QHBoxLayout,
    QLabel,
    QToolButton,
    QWidget,
)

from core.safety.paths import printable

BANNER_STYLE = {
    "error": "background:#f8d7da; color:#58151c; border:1px solid #f1aeb5;",
    "warning": "background:#fff3cd; color:#664d03; border:1px solid #ffe69c;",
    "info": "background:#cfe2ff; color:#052c65; border:1px solid #9ec5fe;",
}
BANNER_STYLE_DARK = {  # the same levels for a dark palette (Bootstrap's dark-mode colours)
    "error": "background:#2c0b0e; color:#ea868f; border:1px solid #842029;",
    "warning": "background:#332701; color:#ffda6a; border:1px solid #997404;",
    "info": "background:#031633; color:#6ea8fe; border:1px solid #084298;",
}


class MessageBanner(QFrame):
    """A dismissible message strip at the top of the window (errors never become tracebacks)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.PlainText)  # messages quote files: never read as markup
        self.label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        close = self.close_button = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Dismiss")
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(close, 0, Qt.AlignTop)
        self.level = ""
        self.dark = False
        self.hide()

    def show_message(self, level: str, text: str) -> None:
        self.level = level
        self.dark = self._palette_is_dark()
        style = (BANNER_STYLE_DARK if self.dark else BANNER_STYLE)[level]
        self.setStyleSheet(f"MessageBanner {{{style} border-radius:4px}}")
        colours = style.split(" border")[0]
        self.label.setStyleSheet(colours)
        self.close_button.setStyleSheet(f"QToolButton {{{colours} border:none}}")
        # control characters a file put in the message are written out (core.safety.paths)
        self.label.setText("\n".join(printable(line) for line in str(text).split("\n")))
        self.show()

    @staticmethod
    def _palette_is_dark() -> bool:
        return QApplication.palette().color(QPalette.Window).lightness() < 128

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt override
        # follow a light/dark switch (our own style sheets send palette changes too)
        if (
            event.type() == QEvent.PaletteChange
            and self.level
            and self._palette_is_dark() != self.dark
        ):
            self.show_message(self.level, self.label.text())
        super().changeEvent(event)

    def text(self) -> str:
        return self.label.text() if self.isVisible() else ""
