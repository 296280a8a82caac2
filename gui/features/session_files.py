"""File menu: save / open a session (engine.session_file, in the worker), export the view as PNG or SVG,
the pattern on screen as CSV or NPY, and a JSON summary of the trace.

A damaged or foreign session file becomes a message in the window; the open model and session stay."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
from PySide6.QtCore import QBuffer, QIODevice, QRect, QSize
from PySide6.QtGui import QAction, QKeySequence, QPainter
from PySide6.QtSvg import QSvgGenerator
from PySide6.QtWidgets import QFileDialog, QMainWindow, QMenu

from engine.export import atomic_write

from ..core import jobs

log = logging.getLogger(__name__)

SESSION_FILTER = "Attention Inspector session (*.json)"


def _with_suffix(path: str, chosen_filter: str) -> str:
    """A name typed without a suffix gets the one of the chosen file type ("SVG (*.svg)" -> .svg)."""
    if Path(path).suffix or "*." not in chosen_filter:
        return path
    return path + "." + chosen_filter.split("*.", 1)[1].split(")", 1)[0]


class SessionIO:
    def __init__(self, window: QMainWindow, rollout=None) -> None:  # noqa: ANN001 - aggregate.RolloutControl
        self.window, self.rollout = window, rollout
        self._open_rid = 0
        self.saved: str | None = None  # the last path a save reported back
        window.client.result_ready.connect(self._on_result)
        self._add_actions()

    # -- menu ----------------------------------------------------------------------------------
    def _file_menu(self) -> QMenu:
        mb = self.window.menuBar()
        for a in mb.actions():
            if a.menu() is not None and a.text().replace("&", "") == "File":
                return a.menu()
        return mb.addMenu("&File")

    def _add_actions(self) -> None:
        w, menu = self.window, self._file_menu()
        anchor = next((a for a in menu.actions() if a.text().replace("&", "").startswith("Export trace")), None)
        entries = [
            ("Open &session…", self.open_session_dialog, "Ctrl+Shift+O"),
            ("Sa&ve session…", self.save_session_dialog, QKeySequence.StandardKey.Save),
            None,
            ("Export &view as PNG / SVG…", self.export_view_dialog, None),
            ("Export &pattern as CSV / NPY…", self.export_pattern_dialog, None),
            ("Export trace s&ummary (.json)…", self.export_summary_dialog, None),
        ]
        self.actions: dict[str, QAction] = {}
        for entry in entries:
            if entry is None:
                if anchor is not None:
                    menu.insertSeparator(anchor)
                continue
            text, slot, shortcut = entry
            action = QAction(text, w)
            if shortcut is not None:
                action.setShortcut(QKeySequence(shortcut))
            action.triggered.connect(lambda _c=False, f=slot: f())
            if anchor is not None:
                menu.insertAction(anchor, action)
            else:
                menu.addAction(action)
            self.actions[text.replace("&", "")] = action

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
        w.prompt_panel.set_model_text(info.folder or info.name)
        w.prompt_panel.set_texts(payload["prompt"], payload["source"])
        s.set_trace(payload["trace"])
        view = payload["view"] or {}
        s.select(kind=view.get("kind"))
        s.select(layer=view.get("layer"), head=view.get("head"), query=view.get("query"),
                 source_query=view.get("source_query"), mean_heads=view.get("mean_heads"))
        if self.rollout is not None:
            self.rollout.set_active(bool(view.get("rollout")))
        if view.get("colormap"):
            w.attention_view.cmap_box.setCurrentText(str(view["colormap"]))
        if "log_scale" in view:
            w.attention_view.scale_box.setCurrentIndex(1 if view["log_scale"] else 0)
        self._apply_settings(payload.get("settings") or {})
        w.statusBar().showMessage(f"Opened session on {payload['info'].name}", 5000)

    def _apply_settings(self, st: dict) -> None:
        """The sampling controls show the session's settings (their change handlers update state and worker)."""
        p = self.window.prompt_panel
        try:
            p.mode_box.setCurrentText("greedy" if st.get("greedy", True) else "sample")
            p.temperature_spin.setValue(float(st.get("temperature", 1.0)))
            p.top_k_spin.setValue(int(st.get("top_k") or 0))
            p.top_p_spin.setValue(float(st.get("top_p") or 1.0))
            p.seed_spin.setValue(int(st.get("seed", 0)))
        except (TypeError, ValueError) as exc:
            log.warning("session settings not shown: %s", exc)

    def save_session_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.window, "Save session", "session.json", SESSION_FILTER)
        if path:
            self.save_session(path)

    def open_session_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.window, "Open session", "", SESSION_FILTER + ";;All files (*)")
        if path:
            self.open_session(path)

    # -- exports -------------------------------------------------------------------------------
    def export_view(self, path: str) -> Path | None:
        """The attention heatmap with its axes and colour bar: PNG (pixels) or SVG (by suffix)."""
        widget = self.window.attention_view.graphics
        path = Path(path)
        try:
            if path.suffix.lower() == ".svg":
                buffer = QBuffer()
                buffer.open(QIODevice.OpenModeFlag.WriteOnly)
                gen = QSvgGenerator()
                gen.setOutputDevice(buffer)
                gen.setSize(QSize(widget.width(), widget.height()))
                gen.setViewBox(QRect(0, 0, widget.width(), widget.height()))
                gen.setResolution(widget.logicalDpiX())  # else images and vectors disagree in scale
                gen.setTitle("Attention Inspector view")
                painter = QPainter(gen)
                widget.render(painter)
                painter.end()
                data = bytes(buffer.data())
                atomic_write(path, lambda f: f.write(data))
            else:
                if path.suffix.lower() != ".png":
                    path = path.with_suffix(path.suffix + ".png") if path.suffix else path.with_suffix(".png")
                buffer = QBuffer()
                buffer.open(QIODevice.OpenModeFlag.WriteOnly)
                widget.grab().save(buffer, "PNG")
                data = bytes(buffer.data())
                atomic_write(path, lambda f: f.write(data))
        except OSError as exc:
            self.window.show_error(f"could not write {path}: {exc}")
            return None
        self.window.statusBar().showMessage(f"Wrote {path}", 5000)
        return path

    def export_pattern(self, path: str) -> Path | None:
        """The [queries, keys] weights on screen (one head, mean of heads or rollout) as CSV (with token
        labels) or NPY."""
        w = self.window
        pattern = w.attention_view.pattern
        if pattern is None or w.state.trace is None:
            w.show_error("no pattern on screen to export")
            return None
        path = Path(path)
        try:
            if path.suffix.lower() == ".npy":
                atomic_write(path, lambda f: np.save(f, np.asarray(pattern, dtype=np.float32)))
            else:
                text = io.StringIO()
                writer = csv.writer(text)
                queries, keys = w.state.query_tokens(), w.state.key_tokens()
                writer.writerow(["query \\ key"] + [f"{i}:{t}" for i, t in enumerate(keys)])
                for q, row in enumerate(pattern):
                    writer.writerow([f"{q}:{queries[q]}"] + [f"{v:.6g}" for v in row])
                data = text.getvalue().encode("utf-8")
                atomic_write(path, lambda f: f.write(data))
        except OSError as exc:
            w.show_error(f"could not write {path}: {exc}")
            return None
        w.statusBar().showMessage(f"Wrote {path}", 5000)
        return path

    def summary(self) -> dict:
        s = self.window.state
        trace = s.trace
        from engine.export import trace_arrays  # plain numpy on the immutable Trace

        summary = json.loads(str(trace_arrays(trace)["summary_json"]))
        summary.update({"tokens": list(trace.tokens), "token_ids": list(trace.token_ids),
                        "source_tokens": list(trace.source_tokens) if trace.source_tokens else None,
                        "view": self.view_state()})
        return summary

    def export_summary(self, path: str) -> Path | None:
        if self.window.state.trace is None:
            self.window.show_error("nothing to export yet: open a model and type a prompt")
            return None
        data = json.dumps(self.summary(), indent=1, default=float).encode("utf-8")
        try:
            out = atomic_write(path, lambda f: f.write(data))
        except OSError as exc:
            self.window.show_error(f"could not write {path}: {exc}")
            return None
        self.window.statusBar().showMessage(f"Wrote {out}", 5000)
        return out

    def export_view_dialog(self) -> None:
        path, chosen = QFileDialog.getSaveFileName(self.window, "Export view", "attention.png", "PNG (*.png);;SVG (*.svg)")
        if path:
            self.export_view(_with_suffix(path, chosen))

    def export_pattern_dialog(self) -> None:
        path, chosen = QFileDialog.getSaveFileName(self.window, "Export pattern", "pattern.csv",
                                              "CSV with token labels (*.csv);;NumPy array (*.npy)")
        if path:
            self.export_pattern(_with_suffix(path, chosen))

    def export_summary_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.window, "Export trace summary", "trace-summary.json", "JSON (*.json)")
        if path:
            self.export_summary(path)
