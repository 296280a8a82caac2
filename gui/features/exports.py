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
from PySide6.QtCore import QBuffer, QIODevice, QPoint, QRect, QSize, Qt
from PySide6.QtGui import QPainter
from PySide6.QtSvg import QSvgGenerator
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QGraphicsView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QVBoxLayout,
    QWidget,
)

from engine import PENDING, EngineError
from engine.export import atomic_write, pattern_bytes, pattern_names, trace_arrays  # numpy I/O on the Trace

from ..core import jobs
from ..widgets import file_dialogs

log = logging.getLogger(__name__)

EXPORT_ASK_BYTES = 256 * 1024**2  # a whole-trace export whose patterns exceed this asks which layers to write
MAX_PATTERN_CELLS = 16 * 1024**2  # the visible region of a long pattern exported exactly (64 MB of float32)
WHOLE_LIMIT = 4 * 1024**3  # the engine refuses a layer's whole pattern beyond this (engine.trace.DENSE_LIMIT)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def choose_layers_dialog(parent: QWidget, sizes: dict[str, int]) -> list[str] | None:
    """Which capture points to write, each with its uncompressed size; None when cancelled."""
    dialog = QDialog(parent)
    dialog.setWindowTitle("Export trace: choose layers")
    total = sum(sizes.values())
    text = QLabel(f"Every pattern of this trace would take {_size(total)} before compression. Choose the layers "
                  "to write (tokens, logits and the summary are always written).")
    text.setWordWrap(True)
    items = QListWidget()
    for name, size in sizes.items():
        item = QListWidgetItem(f"{name}  —  {_size(size)}" + ("  (too big to write whole)" if size > WHOLE_LIMIT else ""))
        item.setData(Qt.ItemDataRole.UserRole, name)
        flags = item.flags() | Qt.ItemFlag.ItemIsUserCheckable
        if size > WHOLE_LIMIT:
            flags &= ~Qt.ItemFlag.ItemIsEnabled
        item.setFlags(flags)
        item.setCheckState(Qt.CheckState.Unchecked)
        items.addItem(item)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    layout = QVBoxLayout(dialog)
    for w in (text, items, buttons):
        layout.addWidget(w)
    dialog.resize(460, 360)
    if dialog.exec() != QDialog.DialogCode.Accepted:
        return None
    return [items.item(i).data(Qt.ItemDataRole.UserRole) for i in range(items.count())
            if items.item(i).checkState() == Qt.CheckState.Checked]


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
        self.choose_layers = choose_layers_dialog  # (parent, {name: bytes}) -> names | None; tests replace it
        self.written: str | None = None  # the last trace export's file
        window.client.result_ready.connect(self._on_result)

    def export_trace(self, path: str, layers: list[str] | None = None) -> int | None:
        """Tokens, every pattern under its capture name (or those of `layers`, capture names), and the logits,
        as the `export` command writes them; written by the engine's worker thread (-> the request id)."""
        w = self.window
        if w.state.trace is None:
            w.show_error("nothing to export yet: open a model and type a prompt")
            return None
        w.statusBar().showMessage(f"Exporting the trace to {path} …")
        return w.client.call("export_trace", jobs.export_trace(w.state.trace, str(path), layers))

    def _on_result(self, _rid: int, op: str, payload: object) -> None:
        if op == "export_trace":
            self.written = payload["path"]
            self.window.statusBar().showMessage(f"Wrote {self.written}", 5000)

    def layer_sizes(self) -> dict[str, int]:
        """Capture name -> bytes of its whole pattern, for the trace on screen."""
        trace = self.window.state.trace
        return {n: pattern_bytes(trace, n) for n in pattern_names(trace)} if trace is not None else {}

    def export_trace_dialog(self) -> None:
        """A huge context asks first which layers to write (the whole trace could take many GB)."""
        layers = None
        sizes = self.layer_sizes()
        if sum(sizes.values()) > EXPORT_ASK_BYTES:
            layers = self.choose_layers(self.window, sizes)
            if layers is None:
                return
        path, _ = file_dialogs.save_path(self.window, "Export trace", "trace.npz", "NumPy archive (*.npz)")
        if path:
            self.export_trace(path, layers)

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
        pattern, q0, k0 = w.attention_view.pattern, 0, 0
        if pattern is None and w.state.trace is not None and w.attention_view.tiled:
            view = w.attention_view  # a long pattern: the region in view, exactly
            q0, q1, k0, k1 = view.visible_region()
            if (q1 - q0) * (k1 - k0) > MAX_PATTERN_CELLS:
                w.show_error(f"the region in view has {(q1 - q0) * (k1 - k0):,} cells; zoom in to at most "
                             f"{MAX_PATTERN_CELLS:,} to export it")
                return None
            try:  # not here yet: fetched in the background, and this export runs again once it landed
                pattern = view.region_now(q0, q1, k0, k1, lambda: self.export_pattern(path))
            except EngineError as exc:
                w.show_error(f"could not export the pattern: {exc}")
                return None
            if pattern is PENDING:
                w.statusBar().showMessage(f"Fetching the region to write {path}…", 5000)
                return None
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
                n_q, n_k = pattern.shape
                writer.writerow(["query \\ key"] + [f"{i}:{keys[i]}" for i in range(k0, k0 + n_k)])
                for q, row in enumerate(pattern, start=q0):
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
        summary = json.loads(str(trace_arrays(trace, layers=())["summary_json"]))  # no pattern is assembled
        summary["patterns"] = pattern_names(trace)
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
        path, chosen = file_dialogs.save_path(self.window, "Export view", "attention.png", "PNG (*.png);;SVG (*.svg)")
        if path:
            self.export_view(_with_suffix(path, chosen))

    def export_widget_dialog(self, widget: QWidget, name: str = "view") -> None:
        path, chosen = file_dialogs.save_path(self.window, "Export view", f"{name}.png", "PNG (*.png);;SVG (*.svg)")
        if path:
            self.export_widget(widget, _with_suffix(path, chosen))

    def export_pattern_dialog(self) -> None:
        path, chosen = file_dialogs.save_path(self.window, "Export pattern", "pattern.csv",
                                              "CSV with token labels (*.csv);;NumPy array (*.npy)")
        if path:
            self.export_pattern(_with_suffix(path, chosen))

    def export_summary_dialog(self) -> None:
        path, _ = file_dialogs.save_path(self.window, "Export trace summary", "trace-summary.json", "JSON (*.json)")
        if path:
            self.export_summary(path)
