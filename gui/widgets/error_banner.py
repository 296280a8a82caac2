"""An inline error message above the attention view: the app keeps working and nothing modal pops up."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QWidget


class ErrorBanner(QFrame):
    """An inline, dismissable error message: never blocks the window (or a test, or a screenshot)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel()
        self.label.setObjectName("banner")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 0)
        layout.addWidget(self.label, 1)
        layout.addWidget(close)
        self.setStyleSheet("QLabel#banner { background: #fbe3e3; color: #5c1010; border: 1px solid #e0a0a0; }")
        self.hide()

    def show_message(self, text: str) -> None:
        self.label.setText(text)
        self.show()
