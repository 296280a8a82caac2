"""A status-bar strip for a model being opened: its name and size, a progress bar of the real fraction
read so far, the engine's own words as a tooltip, and Cancel."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

STEPS = 1000  # the bar's resolution
NAME_CHARS = 32  # longer names are elided in the middle


class LoadProgressWidget(QWidget):
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel()
        self.bar = QProgressBar()
        self.bar.setRange(0, STEPS)
        self.bar.setTextVisible(True)
        self.bar.setFormat("%p%")
        self.bar.setFixedWidth(160)
        self.bar.setMaximumHeight(16)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop opening this model; the model open now stays")
        self.cancel_button.clicked.connect(self._cancel)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 0, 4, 0)
        layout.setSpacing(6)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        layout.addWidget(self.cancel_button)
        self.fraction = 0.0
        self.name = ""

    def start(self, name: str, size: str = "") -> None:
        self.fraction = 0.0
        self.bar.setValue(0)
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText("Cancel")
        self.set_title(name, size)
        self.show()

    def set_title(self, name: str, size: str = "") -> None:
        """'Loading <name> (<size>) …', the name shortened to its last part and elided in the middle when
        long (the full name in the tooltip), so the size always shows."""
        short = name.rstrip("/").rsplit("/", 1)[-1] or name
        if len(short) > NAME_CHARS:
            short = short[: NAME_CHARS // 2 - 1] + "…" + short[-(NAME_CHARS // 2):]
        self.label.setText(f"Loading {short}" + (f" ({size})" if size else "") + " …")
        self.name = name
        self.setToolTip(f"Loading {name}" + (f", {size} of weights" if size else ""))

    def set_fraction(self, fraction: float, message: str = "") -> None:
        self.fraction = max(0.0, min(1.0, float(fraction)))
        self.bar.setValue(round(self.fraction * STEPS))
        if message:
            self.bar.setToolTip(message)
            self.label.setToolTip(message)

    def _cancel(self) -> None:
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Cancelling …")
        self.cancel_requested.emit()
