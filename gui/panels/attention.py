"""One head's attention pattern, large: heatmap with token axes, colour bar and hover readout.

Features extend it without reaching inside: `add_control()` puts a widget in its control row, and
`set_pattern_source()` lets one supply the pattern on screen (rollout)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, QSignalBlocker, Qt
from PySide6.QtGui import QColor, QCursor, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGraphicsRectItem,
    QHBoxLayout,
    QSpinBox,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from ..core.state import InspectorState
from ..rendering import colormaps, display
from ..rendering.labels import kind_name
from ..widgets.token_axis import TokenAxis

log = logging.getLogger(__name__)

PatternSource = Callable[[object], "tuple[np.ndarray, str] | None"]  # (engine.Trace) -> (pattern, title) | None

class AttentionView(QWidget):
    def __init__(self, state: InspectorState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.pattern: np.ndarray | None = None  # the [queries, keys] weights on screen (before scaling)
        self.hover_text = ""
        self._pattern_source: PatternSource | None = None

        # -- controls --------------------------------------------------------------------------
        self.kind_box = QComboBox()
        self.kind_box.setToolTip("Which attention to show")
        self.kind_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.layer_spin = QSpinBox()
        self.layer_spin.setPrefix("layer ")
        self.layer_spin.setToolTip("Layer (↑ / ↓)")
        self.head_spin = QSpinBox()
        self.head_spin.setPrefix("head ")
        self.head_spin.setToolTip("Head ([ / ])")
        self.mean_box = QCheckBox("mean of heads")
        self.cmap_box = QComboBox()
        self.cmap_box.addItems(colormaps.COLORMAPS)
        self.cmap_box.setToolTip("Colour map of the heatmap and the head grid")
        self.scale_box = QComboBox()
        self.scale_box.addItems(["linear", "log"])
        self.scale_box.setToolTip("Colour scale: linear weights, or log10 (faint attention becomes visible)")
        controls = self._controls = QHBoxLayout()
        controls.setContentsMargins(4, 2, 4, 2)
        for w in (self.kind_box, self.layer_spin, self.head_spin, self.mean_box):
            controls.addWidget(w)
        controls.addStretch(1)  # added controls go before it, colour map and scale after it
        controls.addWidget(self.cmap_box)
        controls.addWidget(self.scale_box)

        # -- plot --------------------------------------------------------------------------------
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.ci.layout.setContentsMargins(2, 2, 2, 2)
        self.left_axis = TokenAxis("left")
        self.bottom_axis = TokenAxis("bottom")
        self.plot = self.graphics.addPlot(row=0, col=0, axisItems={"left": self.left_axis, "bottom": self.bottom_axis})
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.invertY(True)  # query 0 at the top, as in a matrix
        self.plot.setAspectLocked(False)
        self.plot.getViewBox().setMouseEnabled(x=True, y=True)
        self.plot.setLabel("left", "query")
        self.plot.setLabel("bottom", "key")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.row_box = QGraphicsRectItem()
        self.row_box.setBrush(Qt.BrushStyle.NoBrush)
        self.row_box.setZValue(10)
        self.plot.addItem(self.row_box)
        self.colorbar = pg.ColorBarItem(values=display.LINEAR_LEVELS, colorMap=colormaps.colormap("viridis"),
                                        interactive=False, width=14)
        self.graphics.addItem(self.colorbar, row=0, col=1)
        self.empty_text = pg.TextItem("", anchor=(0.5, 0.5))
        self.plot.addItem(self.empty_text)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addLayout(controls)
        layout.addWidget(self.graphics, 1)

        # -- wiring ------------------------------------------------------------------------------
        self.kind_box.activated.connect(lambda i: state.select(kind=self.kind_box.itemData(i)))
        self.layer_spin.valueChanged.connect(lambda v: state.select(layer=v))
        self.head_spin.valueChanged.connect(lambda v: state.select(head=v))
        self.mean_box.toggled.connect(lambda on: state.select(mean_heads=on))
        self.cmap_box.currentTextChanged.connect(lambda name: state.set_display(colormap=name))
        self.scale_box.currentTextChanged.connect(lambda s: state.set_display(log_scale=s == "log"))
        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.graphics.scene().sigMouseClicked.connect(self._on_clicked)
        state.model_changed.connect(self._on_model)
        state.trace_changed.connect(lambda _t: self.redraw())
        state.selection_changed.connect(self.redraw)  # draws every selection field: once per change
        state.colormap_changed.connect(self._show_colormap)
        state.log_scale_changed.connect(self._show_scale)
        state.display_changed.connect(self._on_display)
        self._on_display()
        self._show_empty("Open a model to see attention")

    # -- extension points (features) -------------------------------------------------------------------
    def add_control(self, widget: QWidget) -> None:
        """A feature's control in the row after kind / layer / head / mean of heads."""
        self._controls.insertWidget(self._controls.count() - 3, widget)  # before the stretch, colour map, scale

    def set_pattern_source(self, source: PatternSource | None) -> None:
        """`source(trace)` -> (pattern [queries, keys], title) to show instead of the selected head, or None
        to show it. The head control is off while another pattern is shown (it is not one head's)."""
        self._pattern_source = source
        self.redraw()

    # -- state -> widgets ------------------------------------------------------------------------
    def _on_model(self, info) -> None:  # noqa: ANN001 - ModelInfo
        with QSignalBlocker(self.kind_box):
            self.kind_box.clear()
            for k in info.kinds:
                self.kind_box.addItem(kind_name(k, info.family), k)
        self.kind_box.setMinimumWidth(self.kind_box.sizeHint().width())  # never squeezed into "cross-att…"
        self._sync_controls()
        self.plot.enableAutoRange()
        self._show_empty("Type a prompt")

    def _sync_controls(self) -> None:
        s = self.state
        for w, value, maximum in ((self.layer_spin, s.layer, s.n_layers - 1), (self.head_spin, s.head, s.n_heads - 1)):
            with QSignalBlocker(w):
                w.setRange(0, max(0, maximum))
                w.setValue(value)
        i = self.kind_box.findData(s.kind)
        if i >= 0 and i != self.kind_box.currentIndex():
            self.kind_box.setCurrentIndex(i)
        self.head_spin.setEnabled(not s.mean_heads)
        with QSignalBlocker(self.mean_box):
            self.mean_box.setChecked(s.mean_heads)

    def _show_colormap(self, name: str) -> None:
        """The state's colour map in the box (it may come from a session file or the settings)."""
        with QSignalBlocker(self.cmap_box):
            self.cmap_box.setCurrentText(name)

    def _show_scale(self, log_scale: bool) -> None:
        with QSignalBlocker(self.scale_box):
            self.scale_box.setCurrentIndex(1 if log_scale else 0)

    def _on_display(self) -> None:
        s = self.state
        self.image.setLookupTable(colormaps.lookup_table(s.colormap))
        self.colorbar.setColorMap(colormaps.colormap(s.colormap))
        self.colorbar.setLevels(display.LOG_LEVELS if s.log_scale else display.LINEAR_LEVELS)
        self.colorbar.axis.setLabel("log₁₀ weight" if s.log_scale else "weight")
        self.redraw()

    def _show_empty(self, text: str) -> None:
        self.pattern = None
        self.image.clear()
        self.row_box.hide()
        self.empty_text.setText(text)
        self.empty_text.setColor(self.palette().windowText().color())
        self.empty_text.setPos(0.5, 0.5)
        self.empty_text.show()
        self.plot.setTitle("")
        self.plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
        self.left_axis.set_tokens(())
        self.bottom_axis.set_tokens(())

    def redraw(self) -> None:
        s, trace = self.state, self.state.trace
        self._sync_controls()
        if trace is None or s.model is None or s.kind not in trace.kinds:
            return
        override = self._pattern_source(trace) if self._pattern_source is not None else None
        if override is not None:
            pattern = override[0]
            self.head_spin.setEnabled(False)
        elif s.mean_heads:
            pattern = trace.attention(s.kind, s.layer).mean(axis=0)  # [heads, queries, keys] -> [queries, keys]
        else:
            pattern = trace.attention_head(s.kind, s.layer, s.head)  # only the head on screen is assembled
        self.pattern = pattern
        img, levels = display.scaled(pattern, s.log_scale)
        n_q, n_k = pattern.shape
        if s.kind == "self":
            img = img.copy()
            img[display.future_mask(n_q, n_k)] = np.nan  # transparent: outside the causal mask
        new_shape = self.image.image is None or self.image.image.shape != img.shape
        self.image.setImage(img, autoLevels=False, levels=levels)
        self.image.setRect(QRectF(-0.5, -0.5, n_k, n_q))  # pixel (q, k) centred on integer coordinates
        self.empty_text.hide()
        self.left_axis.set_tokens(s.query_tokens(trace), prefix_index=True)
        self.bottom_axis.set_tokens(s.key_tokens(trace))
        q = s.row_query
        self.row_box.setRect(QRectF(-0.5, q - 0.5, n_k, 1))
        self.row_box.setPen(self._row_pen())
        self.row_box.show()
        if new_shape:
            self.plot.setRange(xRange=(-0.5, n_k - 0.5), yRange=(-0.5, n_q - 0.5), padding=0)
        head = override[1] if override is not None else "mean of heads" if s.mean_heads else f"head {s.head}"
        self.plot.setTitle(f"{kind_name(s.kind, s.model.family)} · layer {s.layer} · {head}", size="10pt")

    def _row_pen(self) -> QPen:
        pen = QPen(QColor(255, 80, 80) if self.state.colormap not in ("CET-L1",) else QColor(230, 40, 40))
        pen.setWidthF(2.0)
        pen.setCosmetic(True)
        return pen

    # -- mouse -------------------------------------------------------------------------------------
    def cell_at(self, scene_pos: QPointF) -> tuple[int, int] | None:
        if self.pattern is None or not self.plot.sceneBoundingRect().contains(scene_pos):
            return None
        p = self.plot.getViewBox().mapSceneToView(scene_pos)
        q, k = int(round(p.y())), int(round(p.x()))
        n_q, n_k = self.pattern.shape
        if 0 <= q < n_q and 0 <= k < n_k:
            return q, k
        return None

    def describe(self, q: int, k: int) -> str:
        qt, kt = self.state.query_tokens(), self.state.key_tokens()
        if self.state.kind == "self" and k > q:
            return f"{q} {qt[q]!r} → {k} {kt[k]!r}: masked (a query never sees later keys)"
        return f"{q} {qt[q]!r} → {k} {kt[k]!r}: {self.pattern[q, k]:.4f}"

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        cell = self.cell_at(scene_pos)
        if cell is None:
            if self.hover_text:
                self.hover_text = ""
                QToolTip.hideText()
            return
        self.hover_text = self.describe(*cell)
        QToolTip.showText(QCursor.pos(), self.hover_text, self.graphics)

    def _on_clicked(self, event) -> None:  # noqa: ANN001 - pyqtgraph MouseClickEvent
        if event.button() != Qt.MouseButton.LeftButton:
            return
        cell = self.cell_at(event.scenePos())
        if cell is not None:
            if self.state.uses_source_rows():
                self.state.select(source_query=cell[0])
            else:
                self.state.select(query=cell[0])
