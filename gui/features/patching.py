"""The Patch tab of "Compare with another prompt": run the prompt on screen with one component's output taken
from the second prompt (engine.patching through gui/core/mlp_jobs.py) and show how the next-token distribution
moved; and the layer × head activation-patching heatmap on logit(A) − logit(B), computed in the worker with
progress and Cancel. Positions pair up at the end (or the start); the caption says which map to which."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, QRectF, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core import mlp_jobs
from ..core.state import InspectorState
from ..core.worker import EngineClient
from ..rendering import colormaps

log = logging.getLogger(__name__)

COMPONENTS = (("head", "a head"), ("attn", "a layer's attention"), ("mlp", "an MLP"), ("neuron", "a neuron"),
              ("resid", "the residual stream after a layer"))
SWEEP_MAP = "CET-D1"
N_CANDIDATES = 8


def component_label(what: str, layer: int, index: int, kind: str = "self") -> str:
    """The engine's component syntax (engine.patching.Component.parse): L3.H7, L3.attn, L3.MLP, L3.N120, L3.resid."""
    stack = "E" if kind == "encoder" else "L"
    return {"head": f"{stack}{layer}.{'X' if kind == 'cross' else 'H'}{index}",
            "attn": f"{stack}{layer}.{'cross' if kind == 'cross' else 'attn'}", "mlp": f"{stack}{layer}.MLP",
            "neuron": f"{stack}{layer}.N{index}", "resid": f"{stack}{layer}.resid"}[what]


def describe_pairs(pairs: tuple[tuple[int, int], ...], n_this: int, align: str) -> str:
    """Which positions of this prompt took which of the second prompt's, in words."""
    if not pairs:
        return "no positions pair up"
    (a0, b0), (a1, b1) = pairs[0], pairs[-1]
    text = f"aligned at the {align}: this prompt's positions {a0}..{a1} ↔ the second prompt's {b0}..{b1}"
    kept = [p for p in range(n_this) if p not in dict(pairs)]
    if kept:
        text += f"; this prompt's {len(kept)} other position{'s' if len(kept) != 1 else ''} keep their own values"
    return text


class _Progress(QObject):
    """Lives in the GUI thread; the worker calls `report` (an emit), so the slot runs here (a queued connection)."""

    progressed = Signal(int, int)

    def report(self, done: int, total: int) -> None:
        self.progressed.emit(done, total)


class PatchPanel(QWidget):
    """Patch one component, or sweep every head; the second prompt comes from the compare dialog's fields."""

    def __init__(self, state: InspectorState, client: EngineClient, texts, parent: QWidget | None = None) -> None:  # noqa: ANN001
        super().__init__(parent)
        self.state, self.client, self.texts = state, client, texts  # texts() -> (second prompt, second source)
        self.result = None  # engine.patching.PatchResult on screen
        self.sweep = None  # engine.patching.SweepResult on screen
        self._patch_rid = self._sweep_rid = 0
        self._cancel: threading.Event | None = None
        self.progress = _Progress(self)
        self.progress.progressed.connect(self._on_progress)

        self.what = QComboBox()
        for key, text in COMPONENTS:
            self.what.addItem(text, key)
        self.layer = QSpinBox()
        self.layer.setPrefix("layer ")
        self.index = QSpinBox()
        self.index.setRange(0, 1_000_000)
        self.align = QComboBox()
        self.align.addItem("align at the end", "end")
        self.align.addItem("align at the start", "start")
        self.align.setToolTip("How positions pair up when the prompts differ in length: the last tokens together "
                              "(end), or the first (start)")
        self.components_edit = QLineEdit()
        self.components_edit.setToolTip("What is patched, in the engine's syntax; add more with commas (L3.H3, L3.H7), "
                                        "or write L3.attn, L3.MLP, L3.N120, L3.resid")
        self.components_edit.setMaximumWidth(200)
        self.patch_button = QPushButton("Patch")
        self.patch_button.setToolTip("Run this prompt with the chosen component's output taken from the second prompt")
        row = QHBoxLayout()
        row.addWidget(QLabel("take"))
        for w in (self.what, self.layer, self.index, QLabel("="), self.components_edit, QLabel("from the second prompt,"),
                  self.align, self.patch_button):
            row.addWidget(w)
        row.addStretch(1)
        self.patch_caption = QLabel("Type a second prompt above, choose a component and press Patch.")
        self.patch_caption.setWordWrap(True)
        self.patch_caption.setObjectName("caption")
        self.movers = QTableWidget(0, 5)
        self.movers.setHorizontalHeaderLabels(["token", "this prompt", "patched", "change", "second prompt"])
        self.movers.verticalHeader().hide()
        self.movers.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.movers.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.movers.verticalHeader().setDefaultSectionSize(18)

        self.token_a, self.token_b = QComboBox(), QComboBox()
        for combo in (self.token_a, self.token_b):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
            combo.setMinimumContentsLength(12)
        self.sweep_button = QPushButton("Patch every head")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(160)
        self.bar.hide()
        sweep_row = QHBoxLayout()
        sweep_row.addWidget(QLabel("heatmap: logit("))
        sweep_row.addWidget(self.token_a)
        sweep_row.addWidget(QLabel(") − logit("))
        sweep_row.addWidget(self.token_b)
        sweep_row.addWidget(QLabel(")"))
        for w in (self.sweep_button, self.cancel_button, self.bar):
            sweep_row.addWidget(w)
        sweep_row.addStretch(1)
        self.graphics = pg.GraphicsLayoutWidget()
        self.plot = self.graphics.addPlot(row=0, col=0)
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.invertY(True)
        self.plot.setLabel("left", "layer")
        self.plot.setLabel("bottom", "head")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.colorbar = pg.ColorBarItem(values=(-1, 1), colorMap=colormaps.colormap(SWEEP_MAP), interactive=False,
                                        label="(patched − this) / (second − this)")
        self.colorbar.setImageItem(self.image, insert_in=self.plot)
        self.image.mouseClickEvent = self._on_heatmap_click
        self.sweep_caption = QLabel("The activation-patching figure: each cell runs this prompt with one head's output "
                                    "taken from the second prompt; 1 = that head alone moves the logit difference as "
                                    "far as the second prompt does. Click a cell to patch that head.")
        self.sweep_caption.setWordWrap(True)
        self.sweep_caption.setObjectName("caption")

        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.patch_caption)
        layout.addWidget(self.movers, 1)
        layout.addLayout(sweep_row)
        layout.addWidget(self.graphics, 2)
        layout.addWidget(self.sweep_caption)

        self.what.currentIndexChanged.connect(lambda _i: self._fit_index())
        self.layer.valueChanged.connect(lambda _v: self._fit_index())
        self.index.valueChanged.connect(lambda _v: self._fit_index())
        self.components_edit.returnPressed.connect(self.run_patch)
        self.patch_button.clicked.connect(self.run_patch)
        self.sweep_button.clicked.connect(self.run_sweep)
        self.cancel_button.clicked.connect(self.cancel)
        client.result_ready.connect(self._on_result)
        client.error.connect(self._on_error)
        state.model_changed.connect(self._on_model)
        state.trace_changed.connect(lambda _t: self._fill_candidates())
        self._on_model(state.model)

    # -- choices ---------------------------------------------------------------------------------
    def _on_model(self, info: object) -> None:
        self.result = self.sweep = None
        if info is not None:
            self.layer.setRange(0, max(0, info.n_layers - 1))
        self._fit_index()
        self._fill_candidates()
        self.movers.setRowCount(0)
        self.image.clear()

    def _fit_index(self) -> None:
        what = self.what.currentData()
        info = self.state.model
        self.index.setVisible(what in ("head", "neuron"))
        self.index.setPrefix("head " if what == "head" else "neuron ")
        if info is not None and what == "head":
            self.index.setMaximum(max(0, info.n_heads - 1))
        elif what == "neuron":
            self.index.setMaximum(1_000_000)  # the engine says the layer's size if it is too large
        self.components_edit.setText(self.component())

    def kind(self) -> str:
        info = self.state.model
        return "encoder" if info is not None and info.family == "encoder" else "self"

    def component(self) -> str:
        """What the choices above name (the text field may add more)."""
        return component_label(self.what.currentData(), self.layer.value(), self.index.value(), self.kind())

    def components(self) -> str:
        return self.components_edit.text().strip() or self.component()

    def _fill_candidates(self) -> None:
        trace, info = self.state.trace, self.state.model
        if trace is None or info is None or trace.logit_rows is None:
            return
        keep_a, keep_b = self.token_a.currentData(), self.token_b.currentData()
        logits = trace.logits_at(len(trace) - 1)
        top = [int(t) for t in np.argsort(-logits, kind="stable")[:N_CANDIDATES]]
        for combo, keep, none in ((self.token_a, keep_a, False), (self.token_b, keep_b, True)):
            combo.blockSignals(True)
            combo.clear()
            if none:
                combo.addItem("(nothing: logit(A) alone)", None)
            for t in top:
                combo.addItem(f"“{info.vocab[t]}”", t)
            i = combo.findData(keep)
            combo.setCurrentIndex(i if i >= 0 else (min(2, combo.count() - 1) if none else 0))
            combo.blockSignals(False)

    def select_head(self, layer: int, head: int) -> None:
        self.what.setCurrentIndex([k for k, _t in COMPONENTS].index("head"))
        self.layer.setValue(layer)
        self.index.setValue(head)

    # -- requests --------------------------------------------------------------------------------
    def _ready(self) -> bool:
        if self.state.model is None or self.state.trace is None:
            self.patch_caption.setText("Open a model and type a prompt first.")
            return False
        return True

    def run_patch(self) -> int | None:
        if not self._ready():
            return None
        prompt, source = self.texts()
        self.patch_caption.setText(f"patching {self.components()} …")
        self._patch_rid = self.client.call("patch", mlp_jobs.patch(self.state.trace, prompt, source, self.components(),
                                                                   self.align.currentData()))
        return self._patch_rid

    def run_sweep(self) -> int | None:
        if not self._ready() or self.token_a.currentData() is None:
            return None
        prompt, source = self.texts()
        self._cancel = threading.Event()
        self.bar.setRange(0, 0)
        self.bar.show()
        self.cancel_button.setEnabled(True)
        self.sweep_button.setEnabled(False)
        self._sweep_rid = self.client.call("patch_sweep", mlp_jobs.patch_sweep(
            self.state.trace, prompt, source, self.kind(), int(self.token_a.currentData()),
            self.token_b.currentData(), self.align.currentData(), self.progress.report, self._cancel))
        return self._sweep_rid

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
        self.cancel_button.setEnabled(False)

    def _on_progress(self, done: int, total: int) -> None:
        self.bar.setRange(0, total)
        self.bar.setValue(done)
        self.bar.setFormat(f"{done}/{total} forwards")

    def _sweep_finished(self) -> None:
        self.bar.hide()
        self.cancel_button.setEnabled(False)
        self.sweep_button.setEnabled(True)

    def _on_error(self, op: str, message: str) -> None:
        if op == "patch":
            self.patch_caption.setText(f"Could not patch: {message}")
        elif op == "patch_sweep":
            self._sweep_finished()
            self.sweep_caption.setText(f"Could not sweep: {message}")

    def _on_result(self, rid: int, op: str, payload: object) -> None:
        if op == "patch" and rid == self._patch_rid and isinstance(payload, dict):
            if "error" in payload:
                self.patch_caption.setText(payload["error"])
            else:
                self.show_patch(payload["patch"])
        elif op == "patch_sweep" and rid == self._sweep_rid and isinstance(payload, dict):
            self._sweep_finished()
            if "error" in payload:
                self.sweep_caption.setText(payload["error"])
            else:
                self.show_sweep(payload["sweep"])

    # -- drawing ---------------------------------------------------------------------------------
    def show_patch(self, r) -> None:  # noqa: ANN001 - engine.patching.PatchResult
        self.result = r
        vocab = self.state.model.vocab
        top0, top1 = int(np.argmax(r.before)), int(np.argmax(r.after))
        same = "top token unchanged" if top0 == top1 else f"top token “{vocab[top0]}” → “{vocab[top1]}”"
        pairs = describe_pairs(r.pairs, len(r.clean_tokens), r.align)
        self.patch_caption.setText(f"<b>{r.label}</b> taken from the second prompt · {pairs} · next-token "
                                   f"distribution after position {r.position} (“{r.clean_tokens[r.position]}”), T=1: "
                                   f"total variation {r.total_variation:.3f}, {same}.")
        self.patch_caption.setToolTip("position pairs (this ↔ second): " + ", ".join(
            f"{a} “{r.clean_tokens[a]}” ↔ {b} “{r.corrupt_tokens[b]}”" for a, b in r.pairs))
        self.movers.setRowCount(len(r.movers))
        for row, (tid, _tok, p0, p1) in enumerate(r.movers):
            d = p1 - p0
            items = [QTableWidgetItem(vocab[tid]), QTableWidgetItem(f"{p0:.4f}"), QTableWidgetItem(f"{p1:.4f}"),
                     QTableWidgetItem(f"{d:+.4f}"), QTableWidgetItem(f"{float(r.corrupt[tid]):.4f}")]
            items[3].setForeground(QColor(30, 140, 60) if d > 0 else QColor(200, 50, 50))
            for c, item in enumerate(items):
                self.movers.setItem(row, c, item)

    def show_sweep(self, s) -> None:  # noqa: ANN001 - engine.patching.SweepResult
        self.sweep = s
        values = s.normalised
        if not np.isfinite(values).any():
            values = s.effect
        img = np.where(np.isfinite(values), values, np.nan).astype(np.float32)
        m = max(float(np.nanmax(np.abs(img))) if np.isfinite(img).any() else 1.0, 1e-6)
        m = max(m, 1.0) if np.isfinite(s.normalised).any() else m
        self.image.setLookupTable(colormaps.lookup_table(SWEEP_MAP))
        self.image.setImage(img, autoLevels=False, levels=(-m, m))
        self.colorbar.setLevels((-m, m))
        n_layers, n_heads = img.shape
        self.image.setRect(QRectF(-0.5, -0.5, n_heads, n_layers))
        self.plot.getAxis("bottom").setTicks([[(h, str(h)) for h in range(n_heads)]])
        self.plot.getAxis("left").setTicks([[(n, str(n)) for n in range(n_layers)]])
        self.plot.setRange(xRange=(-0.5, n_heads - 0.5), yRange=(-0.5, n_layers - 0.5), padding=0)
        vocab = self.state.model.vocab
        what = f"logit(“{vocab[s.token_a]}”)" + (f" − logit(“{vocab[s.token_b]}”)" if s.token_b is not None else "")
        best = np.unravel_index(np.nanargmax(np.abs(s.effect)), s.effect.shape) if np.isfinite(s.effect).any() else None
        strongest = (f" Strongest: layer {best[0]} head {best[1]} (moves the difference by {s.effect[best]:+.3f})."
                     if best is not None else "")
        trace = self.state.trace
        stack = "encoder" if s.kind == "encoder" else "decoder"
        without = {n: (getattr(trace, "no_attention", None) or {}).get(f"{stack}.{n}.attn") for n in range(n_layers)}
        blank = ", ".join(f"{n} ({kind})" for n, kind in without.items() if kind and np.isnan(s.patched[n]).all())
        if blank:  # a hybrid's layers without attention have no heads to patch
            strongest += f" Blank rows: layers without attention, {blank}."
        self.sweep_caption.setText(
            f"{what}: this prompt {s.clean_metric:+.3f}, second prompt {s.corrupt_metric:+.3f}. Each cell: (patched − "
            f"this) / (second − this) with that head's output taken from the second prompt at "
            f"{len(s.pairs)} aligned positions.{strongest}" + (" Cancelled: blank cells were not computed." if s.cancelled
                                                               else "") + " Click a cell to patch that head.")

    def _on_heatmap_click(self, event) -> None:  # noqa: ANN001 - pyqtgraph MouseClickEvent
        if self.sweep is None:
            return
        p = event.pos()  # in the image's own pixels, from its corner
        n_layers, n_heads = self.sweep.patched.shape
        layer, head = int(p.y()), int(p.x())
        if 0 <= layer < n_layers and 0 <= head < n_heads:
            self.select_head(layer, head)
            self.run_patch()
