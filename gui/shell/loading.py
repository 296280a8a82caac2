"""Opening a model, as the status bar shows it: the name and size, a real progress bar, Cancel, and what
happened to the model that was open before (a failed or cancelled load leaves it working)."""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject

from ..core.load_jobs import LoadProgress, format_size
from ..core.worker import ModelInfo
from ..widgets.load_progress import LoadProgressWidget

log = logging.getLogger(__name__)


class LoadingController(QObject):
    """Owns the load strip in the main window's status bar; the window forwards load failures here first."""

    def __init__(self, window) -> None:  # noqa: ANN001 - MainWindow
        super().__init__(window)
        self.window = window
        self.client = window.client
        self.widget = LoadProgressWidget()
        self.widget.hide()
        self.widget.cancel_requested.connect(self.cancel)
        self.last_progress: LoadProgress | None = None
        self.cancelled_message = ""
        self.client.load_progress.connect(self._on_progress)
        self.client.busy_changed.connect(self._on_busy)
        self.client.model_loaded.connect(self._on_loaded)

    def begin(self, source: str) -> None:
        """A load was just requested (before the worker names the model and its size)."""
        self.last_progress = None
        self.widget.start(source)

    def cancel(self) -> None:
        if self.client.cancel_load():
            self.window.statusBar().showMessage("Cancelling the load …")

    def _on_progress(self, p: LoadProgress) -> None:
        self.last_progress = p
        if not self.widget.isVisible():
            self.widget.start(p.name)
        self.widget.set_title(p.name, format_size(p.size_bytes))
        self.widget.set_fraction(p.fraction, p.message)

    def _on_busy(self, busy: bool, _op: str) -> None:
        if not self.client.loading:
            self.widget.hide()

    def _on_loaded(self, _info: ModelInfo) -> None:
        self.widget.hide()

    def load_failed(self, message: str) -> bool:
        """The window's error handler asks first: True when this was a cancel (said here, no error banner)."""
        self.widget.hide()
        if not self.client.load_cancelled:
            return False
        name = self.last_progress.name if self.last_progress else "the model"
        current = self.window.state.model
        still = f"{current.name} is still open." if current is not None else "No model is open."
        self.cancelled_message = f"Loading {name} was cancelled. {still}"
        log.info("%s", self.cancelled_message)
        self.window.statusBar().showMessage(self.cancelled_message, 10000)
        return True
