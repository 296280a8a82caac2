"""One head's attention pattern, large: heatmap with token axes, colour bar and hover readout.

Zoom and pan with the wheel and a drag, the + / − / 0 keys or the Fit button. A small pattern is drawn
whole (`pattern`). A long one (or one the trace rebuilds on demand) never is: the view asks its display
thread (gui/core/render_thread.py) for the visible region at screen resolution — exact where a pixel
covers one cell, the max of the cells it covers otherwise (gui/rendering/tiles.py) — numbered by a
generation so a tile made stale by a newer view, step or selection is dropped. Tooltips give the exact
weight of the cell under the mouse. "Row plot" draws the selected query's row over every key as a line
(a 32k-key heatmap row is unreadable), its strongest keys listed.

Features extend it without reaching inside: `add_control()` puts a widget in its control row, and
`set_pattern_source()` lets one supply the pattern on screen (rollout)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, QSignalBlocker, Qt, QTimer
from PySide6.QtGui import QColor, QCursor, QKeySequence, QPen, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGraphicsRectItem,
    QGraphicsScene,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from engine import EngineError, capture_name

from ..core.arrivals import PENDING, PLACEHOLDER, Arrivals
from ..core.render_thread import RenderThread
from ..core.state import InspectorState
from ..rendering import colormaps, display, tiles
from ..rendering.labels import kind_name
from ..rendering.prepared_image import PreparedImageItem, prepare
from ..rendering.thumbnails import ThumbnailPooler
from ..widgets.steady_label import SteadyLabel, set_spin_range
from ..widgets.token_axis import TokenAxis, short

log = logging.getLogger(__name__)

PatternSource = Callable[[object], "tuple[np.ndarray, str] | None"]  # (engine.Trace) -> (pattern, title) | None
WHOLE_CELLS = 512 * 512  # a stored pattern up to this size is drawn whole; beyond it, the visible tile
ZOOM_STEP = 1.5  # + / − keys
TILE_DELAY_MS = 30  # a new tile is asked for once the view has stopped moving this long
HOLD_MS = 60  # after a step, the view waits this long at least for its new tile before it paints the old one
HOVER_HINT = "Hover a cell for its weight; click one to select its query row and mark its key column"
MAX_HOLD_MS = 250  # ... and at most: tiles that take longer (8k contexts) are waited for up to this
ROW_TOP = 8  # strongest keys listed under the row plot
SINK_GAP = 0.5  # cells between the last key and the sink column

class AttentionView(QWidget):
    def __init__(self, state: InspectorState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.pattern: np.ndarray | None = None  # the [queries, keys] weights on screen (before scaling)
        self.hover_text = ""
        self.hover_weight: float | None = None  # the exact weight in the tooltip
        self.hover_cell: tuple[int, int] | None = None  # the cell under the mouse (its readout redone on arrival)
        # hover, row plot and sink reads: answered now or fetched in the background (the view redraws on arrival)
        self.arrivals = Arrivals(self)
        self._pattern_source: PatternSource | None = None
        self.shape = (0, 0)  # (queries, keys) of the pattern on screen, drawn whole or by tiles
        self.tile: tiles.Tile | None = None  # the visible tile on screen (tiled mode)
        self.tiled = False  # the pattern is too big to draw whole: tiles at screen resolution
        self._fitted = True  # the whole pattern is in view: a step re-fits to the grown pattern
        self._request: tuple | None = None  # what the latest tile request was for
        self._generation = 0
        self._title = ""
        self._shown_title = ""  # what the plot shows now (setTitle only on a change)
        self._tile_display: tuple | None = None  # (colour map, log scale) the tile on screen was drawn with
        self._render = RenderThread("attention", self)
        self._delivered = 0  # the newest generation whose answer has come back (drawn or dropped)
        self._render.ready.connect(self._on_tile)
        self._render.failed.connect(self._on_failed)
        self._tile_timer = QTimer(self)
        self._tile_timer.setSingleShot(True)
        self._tile_timer.setInterval(TILE_DELAY_MS)
        self._tile_timer.timeout.connect(self._request_tile)
        # a step changes the axes and the tile: painting the stretched old tile first and the new one ~10 ms
        # later cost a second full paint per step, so the view holds its paint for the new tile (or HOLD_MS)
        self._hold_timer = QTimer(self)
        self._hold_timer.setSingleShot(True)
        self._hold_timer.setInterval(HOLD_MS)
        self._tile_ms = 0.0  # how long the recent tiles took to compute (the hold waits a little longer)
        self._hold_timer.timeout.connect(self._release_paint)

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
        self.mean_box = QCheckBox("mean")
        self.mean_box.setToolTip("Mean of heads (A)")
        self.cmap_box = QComboBox()
        self.cmap_box.addItems(colormaps.COLORMAPS)
        self.cmap_box.setToolTip("Colour map of the heatmap and the head grid")
        self.scale_box = QComboBox()
        self.scale_box.addItems(["linear", "log"])
        self.scale_box.setToolTip("Colour scale: linear weights, or log10 (faint attention becomes visible)")
        self.fit_button = QToolButton()
        self.fit_button.setText("Fit")
        self.fit_button.setToolTip("Show the whole pattern (0). Zoom: wheel or + / −; pan: drag")
        self.row_plot_box = QToolButton()
        self.row_plot_box.setText("Row")
        self.row_plot_box.setCheckable(True)
        self.row_plot_box.setToolTip("Row plot: the selected query's weights over every key as a line, strongest keys "
                                     "listed (a heatmap row of thousands of keys is unreadable)")
        controls = self._controls = QHBoxLayout()
        controls.setContentsMargins(4, 2, 4, 2)
        for w in (self.kind_box, self.layer_spin, self.head_spin, self.mean_box):
            controls.addWidget(w)
        controls.addStretch(1)  # added controls go before it, the view's own after it
        for w in (self.fit_button, self.row_plot_box, self.cmap_box, self.scale_box):
            controls.addWidget(w)

        # -- plot --------------------------------------------------------------------------------
        self.graphics = pg.GraphicsLayoutWidget()
        # a few dozen items that move on every step: a BSP index re-sorted them each time (~2 ms a step)
        self.graphics.scene().setItemIndexMethod(QGraphicsScene.ItemIndexMethod.NoIndex)
        self.graphics.ci.layout.setContentsMargins(2, 2, 2, 2)
        self.left_axis = TokenAxis("left")
        self.bottom_axis = TokenAxis("bottom")
        self.plot = self.graphics.addPlot(row=0, col=0, axisItems={"left": self.left_axis, "bottom": self.bottom_axis})
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.invertY(True)  # query 0 at the top, as in a matrix
        self.plot.setAspectLocked(False)
        self.plot.getViewBox().setMouseEnabled(x=True, y=True)
        self.left_axis.set_title("query")  # the axes add "(every 4th)" when they thin their labels
        self.bottom_axis.set_title("key")
        self.image = PreparedImageItem()  # row-major; a tile comes coloured from the display thread
        self.plot.addItem(self.image)
        # models with attention sinks (gpt-oss): each row's share that went to the sink, as one more column right
        # of the keys (its own small image: the tiled path of the keys is untouched; O(T), never tiled)
        self.sink_row: np.ndarray | None = None  # [queries] share of the head (or mean of heads) on screen
        self.sink_image = PreparedImageItem()
        self.plot.addItem(self.sink_image)
        self.sink_label = pg.TextItem("sink", anchor=(0.5, 1.0))
        self.plot.addItem(self.sink_label)
        self.sink_label.hide()
        self.row_box = QGraphicsRectItem()
        self.row_box.setBrush(Qt.BrushStyle.NoBrush)
        self.row_box.setZValue(10)
        self.plot.addItem(self.row_box)
        self.selected_key: int | None = None  # the key column clicked last: outlined (dashed) until another click
        self.key_box = QGraphicsRectItem()
        self.key_box.setBrush(Qt.BrushStyle.NoBrush)
        self.key_box.setZValue(10)
        self.key_box.hide()
        self.plot.addItem(self.key_box)
        self.colorbar = pg.ColorBarItem(values=display.LINEAR_LEVELS, colorMap=colormaps.colormap("viridis"),
                                        interactive=False, width=14)
        self.graphics.addItem(self.colorbar, row=0, col=1)
        self.empty_text = pg.TextItem("", anchor=(0.5, 0.5))
        self.plot.addItem(self.empty_text)
        # -- the selected query's row as a line over the keys (x linked to the heatmap's keys) -----------
        self.row_plot = self.graphics.addPlot(row=1, col=0)
        self.row_plot.setMenuEnabled(False)
        self.row_plot.hideButtons()
        self.row_plot.setMouseEnabled(x=False, y=False)
        self.row_plot.setLabel("left", "weight")
        self.row_plot.setMaximumHeight(150)
        self.row_curve = self.row_plot.plot([], [], pen=pg.mkPen((80, 160, 255), width=1.5))
        self.row_plot.hide()
        self.row_top = QLabel()
        self.row_top.setObjectName("caption")
        self.row_top.setWordWrap(True)
        self.row_top.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.row_top.hide()
        self.row: np.ndarray | None = None  # the row on the plot
        # the cell under the mouse, always readable here (the tooltip needs the pointer to rest first)
        self.readout = SteadyLabel(wrap=False)
        self.readout.setObjectName("caption")
        self.readout.setText(HOVER_HINT)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addLayout(controls)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.row_top)
        layout.addWidget(self.readout)
        vb = self.plot.getViewBox()
        vb.sigRangeChangedManually.connect(self._on_user_range)
        vb.sigRangeChanged.connect(lambda *_: self._view_moved())
        vb.sigResized.connect(self._view_moved)
        self.fit_button.clicked.connect(self.fit)
        self.row_plot_box.toggled.connect(self._show_row_plot)
        for keys, slot in ((("+", "="), lambda: self.zoom(ZOOM_STEP)), (("-",), lambda: self.zoom(1 / ZOOM_STEP)),
                           (("0",), self.fit)):
            for key in keys:
                shortcut = QShortcut(QKeySequence(key), self)
                shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
                shortcut.activated.connect(slot)

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
        self._controls.insertWidget(self._controls.count() - 5, widget)  # before the stretch and the view's own

    def set_pattern_source(self, source: PatternSource | None) -> None:
        """`source(trace)` -> (pattern [queries, keys], title) to show instead of the selected head, or None
        to show it. The head control is off while another pattern is shown (it is not one head's)."""
        self._pattern_source = source
        self.redraw()

    # -- zoom and pan --------------------------------------------------------------------------------
    def fit(self) -> None:
        """The whole pattern in view (and kept so while steps add rows)."""
        n_q, n_k = self.shape
        if n_q and n_k:
            self._fitted = True
            right = n_k - 0.5 + (SINK_GAP + 1.4 if self.sink_row is not None else 0)  # room for the label
            self.plot.setRange(xRange=(-0.5, right), yRange=(-0.5 - self._label_room(), n_q - 0.5), padding=0)

    def zoom(self, factor: float, center: QPointF | None = None) -> None:
        """Zoom in (factor > 1) or out around `center` (data coordinates; default: the middle of the view)."""
        vb = self.plot.getViewBox()
        self._fitted = False
        vb.scaleBy((1 / factor, 1 / factor), center=center if center is not None else vb.viewRect().center())

    def set_view(self, q0: float, q1: float, k0: float, k1: float) -> None:
        """Show queries q0..q1 and keys k0..k1 (data coordinates), as a person's zoom would."""
        self._fitted = False
        self.plot.setRange(xRange=(k0 - 0.5, k1 - 0.5), yRange=(q0 - 0.5, q1 - 0.5), padding=0)

    def _on_user_range(self, *_args) -> None:  # noqa: ANN002 - wheel or drag
        self._fitted = False

    def _view_moved(self) -> None:
        if self.tiled:
            self._tile_timer.start()

    # -- state -> widgets ------------------------------------------------------------------------
    def _on_model(self, info) -> None:  # noqa: ANN001 - ModelInfo
        with QSignalBlocker(self.kind_box):
            self.kind_box.clear()
            for k in info.kinds:
                self.kind_box.addItem(kind_name(k, info.family), k)
        self.kind_box.setMinimumWidth(self.kind_box.sizeHint().width())  # never squeezed into "cross-att…"
        self._sync_controls()
        self.plot.enableAutoRange()
        self.selected_key = None
        self.readout.setText(HOVER_HINT)
        self._show_empty("Type a prompt")

    def _sync_controls(self) -> None:
        s = self.state
        for w, value, maximum in ((self.layer_spin, s.layer, s.n_layers - 1), (self.head_spin, s.head, s.n_heads - 1)):
            with QSignalBlocker(w):
                set_spin_range(w, 0, max(0, maximum))
                if w.value() != value:  # setValue re-sets the spin box's text even when it is the same
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
        self.sink_image.setLookupTable(colormaps.lookup_table(s.colormap))
        self.colorbar.setColorMap(colormaps.colormap(s.colormap))
        self.colorbar.setLevels(display.LOG_LEVELS if s.log_scale else display.LINEAR_LEVELS)
        self.colorbar.axis.setLabel("log₁₀ weight" if s.log_scale else "weight")
        self.redraw()

    def _show_empty(self, text: str) -> None:
        self.pattern = None
        self.tile, self.tiled, self.shape, self._request, self.row = None, False, (0, 0), None, None
        self._generation = self._render.submit("tile", lambda: None)  # drops a tile under way
        self._release_paint()
        self.row_curve.setData([], [])
        self.row_top.clear()
        self.image.clear()
        self._draw_sink(None)
        self.row_box.hide()
        self.key_box.hide()
        self.empty_text.setText(text)
        self.empty_text.setColor(self.palette().windowText().color())
        self.empty_text.setPos(0.5, 0.5)
        self.empty_text.show()
        self.plot.setTitle("")
        self._shown_title = ""
        self.plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
        self.left_axis.set_tokens(())
        self.bottom_axis.set_tokens(())

    def _heads(self) -> list[int]:
        return list(range(self.state.n_heads)) if self.state.mean_heads else [self.state.head]

    def redraw(self) -> None:
        s, trace = self.state, self.state.trace
        self._sync_controls()
        if trace is None or s.model is None or s.kind not in trace.kinds:
            return
        override = self._pattern_source(trace) if self._pattern_source is not None else None
        try:
            _heads, n_q, n_k = trace.attention_shape(s.kind, s.layer)
        except Exception as exc:  # noqa: BLE001 - engine.CaptureError: this layer was not captured
            self._show_empty(str(exc))
            return
        old_shape = self.shape
        self.shape = (n_q, n_k)
        whole = override is not None or (n_q * n_k <= WHOLE_CELLS and not ThumbnailPooler.rebuilds(trace, s.kind))
        if override is not None:
            pattern = override[0]
            self.head_spin.setEnabled(False)
            self.shape = pattern.shape
        elif not whole:
            pattern = None
        elif s.mean_heads:
            pattern = trace.attention(s.kind, s.layer).mean(axis=0)  # [heads, queries, keys] -> [queries, keys]
        else:
            pattern = trace.attention_head(s.kind, s.layer, s.head)  # only the head on screen is assembled
        self.pattern, self.tiled = pattern, not whole
        n_q, n_k = self.shape
        had_sink = self.sink_row is not None
        self._draw_sink(None if override is not None else self._sink_rows(trace))
        if (self.sink_row is not None) != had_sink:
            old_shape = (0, 0)  # re-fit: the sink column came or went
        sink_width = SINK_GAP + 1.4 if self.sink_row is not None else 0
        vb = self.plot.getViewBox()
        vb.setLimits(xMin=-0.5 - 0.02 * n_k, xMax=n_k - 0.5 + sink_width + 0.02 * n_k,
                     yMin=-0.5 - max(0.02 * n_q, self._label_room()),
                     yMax=n_q - 0.5 + 0.02 * n_q, minXRange=min(4, n_k), minYRange=min(4, n_q))
        if whole:
            self.tile = None
            self._show_image(pattern, tiles.edges(0, n_q, n_q), tiles.edges(0, n_k, n_k), QRectF(-0.5, -0.5, n_k, n_q))
        self.empty_text.hide()
        self.left_axis.set_tokens(s.query_tokens(trace), prefix_index=True)
        self.bottom_axis.set_tokens(s.key_tokens(trace))
        q = s.row_query
        self.row_box.setRect(QRectF(-0.5, q - 0.5, n_k, 1))
        self.row_box.setPen(self._row_pen())
        self.row_box.show()
        self._draw_key_box()
        if self.shape != old_shape and (self._fitted or old_shape == (0, 0)):
            self.fit()  # a step grew the pattern: keep all of it in view (a zoomed view stays where it is)
        # apply the new range now: pyqtgraph would do it at the start of the next paint, and moving the items
        # there marks the view dirty again, so every step painted it twice. Before the tile request: once the
        # display thread computes, every call into Qt from here waits for the GIL again
        self.plot.getViewBox().updateMatrix()
        if self.tiled:
            same_head = self._request is not None and self._request[1:4] == (s.kind, s.layer, tuple(self._heads()))
            if not same_head:
                self.image.clear()  # another head's tile must not stand in for this one
            elif self._tile_display != (s.colormap, s.log_scale):
                self._draw_tile()  # the last tile of this head stays (re-scaled) until the new one comes
            asked, idle = self._generation, self._delivered >= self._generation
            self._request_tile()
            if same_head and self.tile is not None and self._generation != asked and idle:
                self._hold_paint()  # one paint when the new tile is in (HOLD_MS at most)
            else:
                self._release_paint()
        else:
            self._release_paint()
        head = override[1] if override is not None else "mean of heads" if s.mean_heads else f"head {s.head}"
        self._title = (f"{kind_name(s.kind, s.model.family)} · layer {s.layer} · {head}" + self._gate_note(trace)
                       + self._sink_note(trace, q))
        self._show_title()
        if self.row_plot_box.isChecked():
            self._draw_row()

    def _gate_note(self, trace) -> str:  # noqa: ANN001 - engine.Trace
        """" · ablated" when the head on screen is switched off (scaled: its factor); for the mean, how many are."""
        s = self.state
        gates = (getattr(trace, "gates", None) or {}).get(capture_name(s.kind, s.layer))
        if not gates:
            return ""
        if s.mean_heads:
            off = sum(1 for g in gates if g != 1)
            return f" · {off} of them ablated or scaled" if off else ""
        g = gates[s.head] if s.head < len(gates) else 1.0
        return "" if g == 1 else " · ABLATED (output ×0)" if g == 0 else f" · scaled (output ×{g:g})"

    def _draw_key_box(self) -> None:
        n_q, n_k = self.shape
        k = self.selected_key
        if k is None or not 0 <= k < n_k:
            self.key_box.hide()
            return
        pen = self._row_pen()
        pen.setStyle(Qt.PenStyle.DashLine)
        self.key_box.setPen(pen)
        self.key_box.setRect(QRectF(k - 0.5, -0.5, 1, n_q))
        self.key_box.show()

    def _sink_share(self, trace: object) -> np.ndarray | None:
        """trace.sink_share of the layer on screen; None without sinks, or when a remote engine that keeps the
        patterns went away before sending it (the rest of the view stays)."""
        s = self.state
        if not hasattr(trace, "sink_share"):
            return None
        kind, layer = s.kind, s.layer
        try:
            got = self.arrivals.read(trace, ("sink", kind, layer), lambda t: t.sink_share(kind, layer), self.redraw)
        except EngineError as exc:
            log.warning("sink share: %s", exc)
            return None
        return None if got is PENDING else got

    def _sink_on_way(self, trace: object) -> bool:
        s = self.state
        return (id(trace), ("sink", s.kind, s.layer)) in self.arrivals.waiting

    def _sink_rows(self, trace: object) -> np.ndarray | None:
        """The sink's share of every query row for the head (or mean of heads) on screen; None without sinks."""
        s = self.state
        share = self._sink_share(trace)
        if share is None:
            return None
        return share.mean(axis=0) if s.mean_heads else share[s.head]

    def _label_room(self) -> float:
        """Rows of room above the pattern for the sink column's label (none without one)."""
        return 0.0 if self.sink_row is None else 0.8 + 0.04 * self.shape[0]

    def _draw_sink(self, rows: np.ndarray | None) -> None:
        """The sink column right of the keys (a gap between), on the keys' colour scale; hidden without one."""
        self.sink_row = None if rows is None else np.asarray(rows, dtype=np.float32)
        if self.sink_row is None:
            self.sink_image.clear()
            self.sink_image.setVisible(False)
            self.sink_label.hide()
            return
        n_q, n_k = len(self.sink_row), self.shape[1]
        img, levels = display.scaled(self.sink_row[:, None], self.state.log_scale)
        self.sink_image.setImage(img, autoLevels=False, levels=levels)
        self.sink_image.setRect(QRectF(n_k - 0.5 + SINK_GAP, -0.5, 1, n_q))
        self.sink_image.setVisible(True)
        self.sink_label.setColor(self.palette().windowText().color())
        self.sink_label.setPos(n_k + SINK_GAP, -0.5)
        self.sink_label.show()

    def _sink_note(self, trace: object, row: int) -> str:
        """" · sink 23% (row q), 18% mean" for models with attention sinks (gpt-oss): the share of each row that went
        to the sink, which is why its weights sum to less than one. Empty for every other model."""
        s = self.state
        share = self._sink_share(trace)
        if share is None:
            return f" · sink {PLACEHOLDER}" if self._sink_on_way(trace) else ""
        rows = share.mean(axis=0) if s.mean_heads else share[s.head]
        if not 0 <= row < len(rows):
            return ""
        return f" · sink {rows[row]:.0%} (row {row}), {rows.mean():.0%} mean"

    @staticmethod
    def _shown(weights: np.ndarray, log_scale: bool, causal: bool, future: np.ndarray | None = None) -> tuple:
        """(image, levels) as drawn: scaled, and NaN (transparent) outside the causal mask."""
        img, levels = display.scaled(weights, log_scale)
        if causal:
            img = img.copy() if img is weights else img
            img[future if future is not None else display.future_mask(*weights.shape)] = np.nan
        return img, levels

    def _show_image(self, weights: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray, rect: QRectF,
                    future: np.ndarray | None = None) -> None:
        img, levels = self._shown(weights, self.state.log_scale, self.state.kind == "self", future)
        self.image.setImage(img, autoLevels=False, levels=levels)
        self.image.setRect(rect)

    # -- tiles (long patterns) -----------------------------------------------------------------------
    def _wanted(self) -> tuple | None:
        """What the view needs now: (trace, kind, layer, heads, q0, q1, k0, k1, rows, cols), or None."""
        s, trace = self.state, self.state.trace
        if not self.tiled or trace is None or s.kind not in trace.kinds:
            return None
        vb = self.plot.getViewBox()
        q0, q1, k0, k1 = tiles.region(vb.viewRange(), *self.shape)
        if q0 >= q1 or k0 >= k1:
            return None
        ratio = self.devicePixelRatioF()
        cols, rows = max(1, int(vb.width() * ratio)), max(1, int(vb.height() * ratio))
        return (trace, s.kind, s.layer, tuple(self._heads()), q0, q1, k0, k1, min(rows, q1 - q0), min(cols, k1 - k0))

    def _request_tile(self) -> None:
        """Ask the display thread for the visible region at screen resolution (unless it is on screen)."""
        request = self._wanted()
        if request is None or request == self._request:
            return
        self._request = request
        trace, kind, layer, heads, q0, q1, k0, k1, rows, cols = request
        display_key, log_scale, lut = (self.state.colormap, self.state.log_scale), self.state.log_scale, self.image.lut

        def work() -> tuple:
            started = time.perf_counter()
            tile = tiles.visible_tile(trace, kind, layer, list(heads), q0, q1, k0, k1, rows, cols)
            colours = prepare(*self._shown(tile.weights, log_scale, kind == "self", tile.future), lut)
            # coloured here, not at paint time on the GUI thread
            return request, tile, (display_key, colours), 1e3 * (time.perf_counter() - started)

        self._generation = self._render.submit("tile", work)

    def _on_failed(self, _key: str, generation: int, message: str) -> None:
        self._delivered = max(self._delivered, generation)
        self._release_paint()
        log.warning("attention tile: %s", message)
        if generation == self._generation:  # the tile on screen stays; the title says why it is not the new one
            self._shown_title = f"{self._title} · {message.split(': ', 1)[-1]}"
            self.plot.setTitle(self._shown_title, size="10pt")

    def _on_tile(self, key: str, generation: int, result: object) -> None:
        self._delivered = max(self._delivered, generation)
        if key == "tile" and isinstance(result, tuple):  # a stale tile took as long: it counts for the hold
            spent_ms = result[3]
            self._tile_ms = spent_ms if not self._tile_ms else 0.7 * self._tile_ms + 0.3 * spent_ms
        if key != "tile" or generation != self._generation or result is None:
            return  # stale: the view, the step or the selection moved on
        request, tile, colours, _spent_ms = result
        if request != self._request or not self.tiled:
            return
        self.tile = tile
        self._draw_tile(colours)
        self._show_title()
        self._release_paint()

    def _hold_paint(self) -> None:
        """Hold from the first request on, never longer than HOLD_MS: steps that come faster than tiles must
        not keep pushing the paint back (the view would freeze for a whole run)."""
        if self.graphics.updatesEnabled():
            self.graphics.setUpdatesEnabled(False)
            self._hold_timer.start(self.hold_ms())

    def hold_ms(self) -> int:
        """How long a step's paint waits for its tile: HOLD_MS, or a little longer than recent tiles took (an 8k
        tile takes ~90 ms: a shorter hold painted every step twice, first with the stale tile), MAX_HOLD_MS
        at most, so a run whose steps outpace its tiles still repaints a few times a second."""
        return int(min(MAX_HOLD_MS, max(HOLD_MS, 1.3 * self._tile_ms + 15)))

    def _release_paint(self) -> None:
        self._hold_timer.stop()
        if not self.graphics.updatesEnabled():
            self.graphics.setUpdatesEnabled(True)  # repaints the view: axes, range and tile at once

    def _show_title(self) -> None:
        how = " · max-pooled to the screen" if self.tiled and self.tile is not None and not self.tile.exact else ""
        if self._title + how != self._shown_title:  # a new text re-lays out the whole plot: not once per step
            self._shown_title = self._title + how
            self.plot.setTitle(self._shown_title, size="10pt")

    def _draw_tile(self, colours: tuple | None = None) -> None:
        """The tile on screen; `colours` (display key, Prepared) from the display thread if they still fit."""
        t = self.tile
        if t is None:
            return
        self._tile_display = (self.state.colormap, self.state.log_scale)
        rect = QRectF(t.k0 - 0.5, t.q0 - 0.5, t.k1 - t.k0, t.q1 - t.q0)
        if colours is not None and colours[0] == self._tile_display:  # show() checks the lookup table too
            self.image.show(colours[1])
            self.image.setRect(rect)
        else:
            self._show_image(t.weights, t.row_edges, t.col_edges, rect, future=t.future)

    def visible_region(self) -> tuple[int, int, int, int]:
        """q0, q1, k0, k1 of the cells in view."""
        return tiles.region(self.plot.getViewBox().viewRange(), *self.shape)

    def exact_region(self, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        """The exact weights [q1 - q0, k1 - k0] of the head (or mean of heads) on screen."""
        return self._region_reader(q0, q1, k0, k1)[1](self.state.trace)

    def region_now(self, q0: int, q1: int, k0: int, k1: int, when_here: Callable[[], None]) -> object:
        """exact_region, or PENDING while it is fetched in the background (`when_here()` once it landed)."""
        key, read = self._region_reader(q0, q1, k0, k1)
        return self.arrivals.read(self.state.trace, key, read, when_here)

    def _region_reader(self, q0: int, q1: int, k0: int, k1: int) -> tuple:
        kind, layer, heads = self.state.kind, self.state.layer, self._heads()

        def read(trace) -> np.ndarray:  # noqa: ANN001 - engine.Trace
            parts = [trace.attention_tile(kind, layer, h, q0, q1, k0, k1) for h in heads]
            return parts[0] if len(parts) == 1 else np.mean(np.stack(parts), axis=0, dtype=np.float64).astype(np.float32)

        return ("region", kind, layer, tuple(heads), q0, q1, k0, k1), read

    @property
    def pending(self) -> bool:
        """A tile is being computed (tests wait for it)."""
        return (self._delivered < self._generation or self._tile_timer.isActive() or self._hold_timer.isActive()
                or self._wanted() not in (None, self._request) or bool(self.arrivals.waiting))

    # -- the selected row as a line ------------------------------------------------------------------
    def _show_row_plot(self, on: bool) -> None:
        # linked only while shown: a hidden linked plot followed every step's range change (its axes too)
        self.row_plot.setXLink(self.plot if on else None)
        self.row_plot.setVisible(on)
        self.row_top.setVisible(on)
        if on:
            self._draw_row()

    def _draw_row(self) -> None:
        s, trace = self.state, self.state.trace
        if trace is None or s.kind not in trace.kinds or not self.shape[1]:
            return
        q = s.row_query
        if self.pattern is not None:
            row = np.asarray(self.pattern[q], dtype=np.float32)
        else:
            kind, layer, heads = s.kind, s.layer, self._heads()
            try:
                row = self.arrivals.read(trace, ("row", kind, layer, tuple(heads), q),
                                         lambda t: tiles.row_weights(t, kind, layer, heads, q), self._row_landed)
            except EngineError as exc:  # a remote engine that keeps the patterns went away: the row is not here
                self.row_top.setText(f"query {q}: {exc}")
                return
            if row is PENDING:  # on its way: the last row stays until it lands
                self.row_top.setText(f"query {q}: {PLACEHOLDER}")
                return
        self.row = row
        self.row_curve.setData(np.arange(row.size), row)
        keys = s.key_tokens(trace)
        top = display.top_indices(row, ROW_TOP)
        self.row_top.setText(f"query {q} {short(s.query_tokens(trace)[q])!r}, strongest keys: "
                             + ", ".join(f"{k} {short(keys[k])!r} {row[k]:.3f}" for k in top))

    def _row_landed(self) -> None:
        if self.row_plot_box.isChecked():
            self._draw_row()
    def _row_pen(self) -> QPen:
        pen = QPen(QColor(255, 80, 80) if self.state.colormap not in ("CET-L1",) else QColor(230, 40, 40))
        pen.setWidthF(2.0)
        pen.setCosmetic(True)
        return pen

    # -- mouse -------------------------------------------------------------------------------------
    def cell_at(self, scene_pos: QPointF) -> tuple[int, int] | None:
        if self.shape == (0, 0) or not self.plot.sceneBoundingRect().contains(scene_pos):
            return None
        p = self.plot.getViewBox().mapSceneToView(scene_pos)
        q, k = int(round(p.y())), int(round(p.x()))
        n_q, n_k = self.shape
        if 0 <= q < n_q and 0 <= k < n_k:
            return q, k
        if self.sink_row is not None and 0 <= q < n_q and n_k - 0.5 + SINK_GAP <= p.x() < n_k + 0.5 + SINK_GAP:
            return q, n_k  # the sink column: key index n_k
        return None

    def describe(self, q: int, k: int) -> str:
        qt, kt = self.state.query_tokens(), self.state.key_tokens()
        self.hover_weight = None
        if self.sink_row is not None and k == self.shape[1]:  # the sink column
            w = self.hover_weight = float(self.sink_row[q])
            return f"{q} {qt[q]!r} → sink: {w:.4f} (the share no key got)"
        if self.state.kind == "self" and k > q:
            return f"{q} {qt[q]!r} → {k} {kt[k]!r}: masked (a query never sees later keys)"
        if self.pattern is not None:
            w = float(self.pattern[q, k])
        else:  # exact, whatever the zoom: one cell rebuilt (or fetched in the background)
            kind, layer, heads = self.state.kind, self.state.layer, self._heads()
            try:
                w = self.arrivals.read(self.state.trace, ("cell", kind, layer, tuple(heads), q, k),
                                       lambda t: tiles.weight_at(t, kind, layer, heads, q, k),
                                       lambda: self._hover_landed(q, k))
            except EngineError as exc:  # a remote engine that keeps the patterns went away
                return f"{q} {qt[q]!r} → {k} {kt[k]!r}: {exc}"
            if w is PENDING:
                return f"{q} {qt[q]!r} → {k} {kt[k]!r}: {PLACEHOLDER}"
        self.hover_weight = w
        exact = f" ({w:.3e})" if 0 < w < 1e-3 else ""
        return f"{q} {qt[q]!r} → {k} {kt[k]!r}: {w:.4f}{exact}"

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        cell = self.cell_at(scene_pos)
        if cell is None:
            self.hover_cell = None
            if self.hover_text:
                self.hover_text = ""
                QToolTip.hideText()
                self.readout.setText(HOVER_HINT)
            return
        self.hover(*cell)

    def hover(self, q: int, k: int) -> None:
        """The readout and tooltip for cell (q, k) under the mouse (a placeholder while its weight is on its way)."""
        self.hover_cell = (q, k)
        self.hover_text = self.describe(q, k)
        self.readout.setText(self.hover_text)
        QToolTip.showText(QCursor.pos(), self.hover_text, self.graphics)

    def _hover_landed(self, q: int, k: int) -> None:
        if self.hover_cell == (q, k):  # still under the mouse
            self.hover(q, k)

    def _on_clicked(self, event) -> None:  # noqa: ANN001 - pyqtgraph MouseClickEvent
        if event.button() != Qt.MouseButton.LeftButton:
            return
        cell = self.cell_at(event.scenePos())
        if cell is not None:
            self.selected_key = cell[1]
            self._draw_key_box()
            if self.state.uses_source_rows():
                self.state.select(source_query=cell[0])
            else:
                self.state.select(query=cell[0])
