"""Where the engine runs: File → Connect to engine… / Reconnect to engine, and the status bar's "engine:"
label. The worker talks to one engine interface (gui/core/engine_jobs.py swaps the implementation), so
nothing else in the window changes when the engine is on another machine; this module only says where it
is and, when it went away (the trace on screen stays), tries to reconnect with backoff (1, 2, 4 … 30 s,
a short handshake each, so the worker is never held long) and offers File → Reconnect to engine."""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QDialog, QLabel

from ..core.engine_jobs import connect_engine, reconnect, use_this_computer
from .connect_dialog import LOCAL, ConnectDialog

log = logging.getLogger(__name__)

RETRY_FIRST_S, RETRY_MAX_S, RETRIES = 1.0, 30.0, 8  # about 2 minutes of tries, then Reconnect is by hand
RETRY_HANDSHAKE_S = 2.0


class RemoteEngineController(QObject):
    def __init__(self, window: Any) -> None:  # MainWindow
        super().__init__(window)
        self.window = window
        self.client = window.client
        self.label = QLabel()
        self.label.setContentsMargins(6, 0, 6, 0)
        window.statusBar().addPermanentWidget(self.label)
        self.last_target: dict = {}
        self._reopen: str | None = None
        self._retries = 0  # automatic reconnects tried since the engine went away (0: none under way)
        self._retry_timer = QTimer(self)
        self._retry_timer.setSingleShot(True)
        self._retry_timer.timeout.connect(self._retry)
        window.registry.bind("file.connect_engine", self.show_dialog)
        window.registry.bind("file.reconnect_engine", self.reconnect)
        self.client.result_ready.connect(self._on_result)
        self.client.error.connect(self._on_error)
        self.client.model_loaded.connect(lambda _info: self.refresh())
        self.client.trace_ready.connect(self._on_trace)  # a reconnect answers with the restored trace
        self.refresh()

    def refresh(self) -> None:
        engine = self.client.engine
        gone = engine.gone
        self.label.setText(f"engine: {engine.where()}" + (" — gone (File → Reconnect to engine)" if gone else ""))
        self.label.setToolTip(gone or "where models are loaded and run (File → Connect to engine…)")

    def show_dialog(self) -> None:
        dialog = ConnectDialog(self.window, self.client.engine.where(), self.last_target)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return
        self.connect_to(dialog.target())

    def connect_to(self, target: Any) -> int:
        """Switch the engine (LOCAL, or a target for engine.remote.launch.open_remote); the model that was
        open is opened again on the new engine."""
        recent = self.window.recent_models()
        self._reopen = recent[0] if recent else None
        if target == LOCAL:
            self.window.statusBar().showMessage("Switching to the engine on this computer …")
            return self.client.call("engine", use_this_computer())
        self.last_target = {k: v for k, v in target.items() if k != "token"}  # the token is never kept
        where = target.get("ssh_host") or target.get("address")
        self.window.statusBar().showMessage(f"Connecting to the engine at {where} …")
        return self.client.call("engine", connect_engine(target))

    def reconnect(self) -> int:
        self.window.statusBar().showMessage("Reconnecting to the engine …")
        return self.client.call("reconnect", reconnect())

    def _retry(self) -> None:
        if not self.client.engine.gone:
            self._retries = 0
            return
        self._retries += 1
        self.label.setText(f"engine: reconnecting to {self.client.engine.address} (try {self._retries} of {RETRIES}) …")
        self.client.call("reconnect", reconnect(quiet=True, timeout=RETRY_HANDSHAKE_S))

    def _schedule_retry(self) -> None:
        if self._retries >= RETRIES:
            self._retries = 0
            self.refresh()
            self.window.statusBar().showMessage("The engine did not come back; File → Reconnect to engine when it runs",
                                                15000)
            return
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** max(0, self._retries - 1))
        self._retry_timer.start(int(delay * 1000))

    def _on_result(self, _rid: int, op: str, payload: object) -> None:
        if op not in ("engine", "reconnect"):
            return
        if op == "reconnect" and isinstance(payload, dict) and payload.get("reconnected") is False:
            log.info("reconnect failed: %s", payload.get("why"))
            self._schedule_retry()
            return
        self._retries = 0
        self._retry_timer.stop()
        self.refresh()
        self.window.statusBar().showMessage(f"Engine: {self.client.engine.where()}", 8000)
        if op == "engine" and isinstance(payload, dict):
            panel = self.window.prompt_panel  # the new engine's devices; "auto" lets it pick its GPU
            for device in payload.get("devices", ()):
                panel.set_device(device)
            panel.set_device(None)
        if op == "engine" and self._reopen:
            source, self._reopen = self._reopen, None
            self.window.open_model(source, device=None)

    def _on_trace(self, _trace: object, op: str) -> None:
        if op == "reconnect":
            self._on_result(0, op, None)

    def _on_error(self, op: str, message: str) -> None:
        self.refresh()  # an engine that went away says so in the label
        if op in ("engine", "reconnect"):
            log.warning("engine connection: %s", message)
        if self.client.engine.gone and not self._retries and not self._retry_timer.isActive():
            self._schedule_retry()  # the first try after RETRY_FIRST_S


def install(window: Any) -> RemoteEngineController:
    return RemoteEngineController(window)
