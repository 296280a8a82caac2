"""A widget that asks for its data only while it is on screen, once a burst of changes settles."""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QWidget


def on_screen(widget: QWidget) -> bool:
    """Shown and not behind another tab: Qt keeps a tabbed-away dock "visible" (isVisible() is true),
    only moved out of the window, so its visible region is what tells."""
    return widget.isVisible() and not widget.visibleRegion().isEmpty()


class RefreshWhenShown(QWidget):
    """Base for docks whose data is computed on request (logit lens, head statistics, inside a head):
    `refresh_soon()` starts a short single-shot timer that calls `refresh()`; being shown again (a tab
    brought to the front) does the same. Subclasses implement refresh() and call `refresh_soon()` on changes."""

    REFRESH_MS = 30

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)  # one request for a burst of changes
        self._timer.setSingleShot(True)
        self._timer.setInterval(self.REFRESH_MS)
        self._timer.timeout.connect(self.refresh)

    def refresh(self) -> None:
        raise NotImplementedError

    def refresh_soon(self) -> None:
        self._timer.start()

    def on_screen(self) -> bool:
        return on_screen(self)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self._timer.start()  # it was hidden (another tab): catch up
