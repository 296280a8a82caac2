"""Exports: the trace as .npz (as the `export` command writes it), the view as PNG or SVG, the pattern on
screen as CSV or NPY, and a JSON summary of the trace. The shell puts them in the File menu."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QBuffer, QIODevice, QPoint, QRect, QSize
from PySide6.QtGui import QPainter
from PySide6.QtSvg import QSvgGenerator
from PySide6.QtWidgets import QFileDialog, QGraphicsView, QMainWindow, QWidget

from engine.export import atomic_write, save_npz, trace_arrays  # plain numpy I/O on the immutable Trace

log = logging.getLogger(__name__)


def _with_suffix(path: str, chosen_filter: str) -> str:
    """A name typed without a suffix gets the one of the chosen file type ("SVG (*.svg)" -> .svg)."""
    if Path(path).suffix or "*." not in chosen_filter:
        return path
    return path + "." + chosen_filter.split("*.", 1)[1].split(")", 1)[0]


class Exports:
    """`window` is the main window's public face: state, attention_view, show_error, statusBar;
    `view_state()` what the summary records about the view (the session files' view_state)."""

    def __init__(self, window: QMainWindow, view_state: Callable[[], dict]) -> None:
        self.window, self.view_state = window, view_state

    def export_trace(self, path: str) -> None:
        """Tokens, every pattern under its capture name, and the logits, as the `export` command writes them."""
        w = self.window
        if w.state.trace is None:
            w.show_error("nothing to export yet: open a model and type a prompt")
            return
        try:
            written = save_npz(w.state.trace, path)
        except OSError as exc:
            w.show_error(f"could not write {path}: {exc}")
            return
        w.statusBar().showMessage(f"Wrote {written}", 5000)

    def export_trace_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.window, "Export trace", "trace.npz", "NumPy archive (*.npz)")
        if path:
            self.export_trace(path)

    # -- exports -------------------------------------------------------------------------------
    def export_view(self, path: str) -> Path | None:
        """The attention heatmap with its axes and colour bar: PNG (pixels) or SVG (by suffix)."""
        return self.export_widget(self.window.attention_view.graphics, path)

    def export_widget(self, widget: QWidget, path: str) -> Path | None:
        """Any view as it is on screen (the head view's picture too): PNG (pixels) or SVG (by suffix)."""
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
                if isinstance(widget, QGraphicsView):
                    widget.render(painter)
                else:  # a plain widget with its children (the head view's legend and canvas)
                    widget.render(painter, QPoint())
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

    def export_widget_dialog(self, widget: QWidget, name: str = "view") -> None:
        path, chosen = QFileDialog.getSaveFileName(self.window, "Export view", f"{name}.png", "PNG (*.png);;SVG (*.svg)")
        if path:
            self.export_widget(widget, _with_suffix(path, chosen))

    def export_pattern_dialog(self) -> None:
        path, chosen = QFileDialog.getSaveFileName(self.window, "Export pattern", "pattern.csv",
                                              "CSV with token labels (*.csv);;NumPy array (*.npy)")
        if path:
            self.export_pattern(_with_suffix(path, chosen))

    def export_summary_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.window, "Export trace summary", "trace-summary.json", "JSON (*.json)")
        if path:
            self.export_summary(path)
