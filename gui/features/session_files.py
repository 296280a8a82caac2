"""Session files: save and reopen a session (engine.session_file, in the worker) with its view and ablations.

A damaged or foreign session file becomes a message in the window; the open model and session stay.
The shell puts these in the File menu (gui/shell/actions.py)."""

from __future__ import annotations

import logging

from PySide6.QtWidgets import QMainWindow

from ..core import jobs
from ..panels.prompt import model_text
from ..rendering import colormaps
from ..widgets import file_dialogs
from .aggregate import RolloutControl

log = logging.getLogger(__name__)

SESSION_FILTER = "Attention Inspector session (*.json)"


class SessionFiles:
    """`window` is the main window's public face: state, client, prompt_panel, banner, show_error, statusBar."""

    def __init__(self, window: QMainWindow, rollout: RolloutControl | None = None) -> None:
        self.window, self.rollout = window, rollout
        self._open_rid = 0
        self.saved: str | None = None  # the last path a save reported back
        window.client.result_ready.connect(self._on_result)

    # -- sessions ------------------------------------------------------------------------------
    def view_state(self) -> dict:
        s = self.window.state
        return {"kind": s.kind, "layer": s.layer, "head": s.head, "query": s.query, "source_query": s.source_query,
                "mean_heads": s.mean_heads, "rollout": bool(self.rollout and self.rollout.box.isChecked()),
                "colormap": s.colormap, "log_scale": s.log_scale}

    def save_session(self, path: str) -> int | None:
        if self.window.state.trace is None:
            self.window.show_error("nothing to save yet: open a model and type a prompt")
            return None
        return self.window.client.call("save_session", jobs.save_session(str(path), self.view_state()))

    def open_session(self, path: str) -> int:
        self.window.statusBar().showMessage(f"Opening session {path} …")
        self._open_rid = self.window.client.call("open_session", jobs.open_session(str(path)))
        return self._open_rid

    def _on_result(self, rid: int, op: str, payload: object) -> None:
        if op == "save_session":
            self.saved = payload["path"]
            self.window.statusBar().showMessage(f"Saved session to {self.saved}", 5000)
        elif op == "open_session" and rid == self._open_rid:
            self._apply_opened(payload)

    def _apply_opened(self, payload: dict) -> None:
        w = self.window
        s = w.state
        w.banner.hide()
        info = payload["info"]
        s.set_model(info)  # panels reset for the (possibly other) model
        w.prompt_panel.set_model_text(model_text(info))  # a bundled model by its name, not its folder
        # the boxes hold what the session holds (a chat: system, turns and user message), no new session
        w.prompt_panel.show_session(payload["prompt"], payload["source"], payload.get("messages"))
        s.set_trace(payload["trace"])
        view = payload["view"] or {}
        s.select(kind=view.get("kind"))
        s.select(layer=view.get("layer"), head=view.get("head"), query=view.get("query"),
                 source_query=view.get("source_query"), mean_heads=view.get("mean_heads"))
        if self.rollout is not None:
            self.rollout.set_active(bool(view.get("rollout")))
        if view.get("colormap") in colormaps.COLORMAPS:
            s.set_display(colormap=str(view["colormap"]))
        if "log_scale" in view:
            s.set_display(log_scale=bool(view["log_scale"]))
        w.prompt_panel.show_sampling(payload.get("settings") or {})
        w.statusBar().showMessage(f"Opened session on {payload['info'].name}", 5000)

    def save_session_dialog(self) -> None:
        path, _ = file_dialogs.save_path(self.window, "Save session", "session.json", SESSION_FILTER)
        if path:
            self.save_session(path)

    def open_session_dialog(self) -> None:
        path, _ = file_dialogs.open_path(self.window, "Open session", SESSION_FILTER + ";;All files (*)")
        if path:
            self.open_session(path)
