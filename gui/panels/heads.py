"""Every layer × head of the selected attention kind at once, as thumbnails in one atlas image.

One ImageItem holds all thumbnails (fast to update in place); each thumbnail is resampled to
the same size and scaled to its own maximum, so faint heads still show their shape. The cells stay square;
hovering one names its layer, head and (grouped-query attention) key/value head, and lines mark the groups
of query heads that share a key/value head.

Many heads (a 28 × 16 or 64 × 64 grid): the grid zooms and scrolls (gui/panels/grid_navigation.py: Ctrl+wheel,
+/−, dragging, scroll bars), the thumbnails get finer as their cells grow, the numbers on the axes thin out to
round steps, and the selected head is scrolled into view. "Colour by" replaces each thumbnail by one colour for
a head statistic (entropy, sink mass, previous-token, induction, distance: engine.analysis.head_statistics,
handed in by the head statistics panel with `set_statistics`), which stays readable at any count.

Pooling is incremental (gui/rendering/thumbnails.py): a step pools only the row per head it added.
Stored traces are pooled here (cheap); traces that rebuild patterns on demand (long contexts) are
pooled in a display thread (gui/core/render_thread.py) from exact tiles, and drawn when they arrive
(latest wins), so the GUI thread only ever resamples [layers, heads, ≤64, ≤64].

Features build on it without reaching inside: `add_overlay()` puts a graphics item over the cells
(one unit per cell: cell (layer, head) spans `cell_rect(layer, head)`), `geometry_changed` says when
cells moved or resized, `cell_clicked` reports a click on a cell, `add_footer()` adds a widget below.
"""

from __future__ import annotations

import logging

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QCursor, QFontMetrics, QKeySequence, QPainterPath, QPen, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGridLayout,
    QHBoxLayout,
    QScrollBar,
    QSizePolicy,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from engine import capture_name

from ..core.render_thread import RenderThread
from ..core.state import InspectorState
from ..rendering import colormaps, display
from ..rendering.grid_view import label_step, thumb_size
from ..rendering.head_colors import HeadAxis
from ..rendering.head_statistics import BY_KEY, STATISTICS, colour_indices, format_value, statistic_scale
from ..rendering.labels import kind_name
from ..rendering.thumbnails import ThumbnailPooler
from ..widgets.steady_label import SteadyLabel
from .grid_navigation import STEP_ZOOM, GridNavigator, GridViewBox

log = logging.getLogger(__name__)

MIN_THUMB, MAX_THUMB = 4, 64  # thumbnail resolution in atlas pixels
POOL_SIZE = 64  # pooled bins per axis before resampling to the thumbnail
MIN_LABEL_PX = 18  # layer/head numbers closer than this are thinned out (to every 2nd, 5th, 10th …)
MIN_GROUP_PX = 10  # key/value group lines are drawn only between cells at least this wide on screen
GAP = 1  # atlas pixels between thumbnails (none when cells are tiny on screen: see grid_view.thumb_size)
GAP_INDEX = 255  # the lookup-table entry reserved for the gaps


class HeadGrid(QWidget):
    cell_clicked = Signal(int, int, object, object)  # layer, head, Qt.MouseButton, Qt.KeyboardModifier
    geometry_changed = Signal()  # the cells moved or resized (another shape or thumbnail size): re-place overlays
    color_by_changed = Signal(object)  # a HeadStat field, or None for the attention patterns

    def __init__(self, state: InspectorState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.thumb = MIN_THUMB
        self.gap = GAP  # atlas pixels between thumbnails now
        self.statistic_scale = (0.0, 1.0)  # the values the darkest and the brightest colour stand for
        self.shape = (0, 0)  # (layers, heads) on screen
        self.atlas: np.ndarray | None = None
        self.pooler = ThumbnailPooler(size=POOL_SIZE)  # stored traces, on this thread
        self._async_pooler = ThumbnailPooler(size=POOL_SIZE)  # rebuilt traces: only the render thread uses it
        self._render = RenderThread("heads", self)
        self._delivered = 0  # the newest generation whose answer has come back (drawn or dropped)
        self._render.ready.connect(self._on_rendered)
        self._render.failed.connect(self._on_failed)
        self._generation = 0
        self.pooled: np.ndarray | None = None  # [layers, heads, m, m] on screen (before resampling)
        self.bin_width = 1  # tokens per pooled bin
        self._drawn: tuple | None = None  # (trace, kind) the pooled stack belongs to
        self._ticks: tuple | None = None  # what the axes' tick labels were made for
        self.kv_group = 1
        self._stats: tuple[object, dict] = (None, {})  # (trace, {kind: {statistic: [layers, heads]}}) to colour by
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # the zoom and scroll keys
        # a few dozen items that move on every step: a BSP index re-sorted them each time (~2 ms a step)
        self.graphics.scene().setItemIndexMethod(QGraphicsScene.ItemIndexMethod.NoIndex)
        self.graphics.ci.layout.setContentsMargins(2, 2, 2, 2)
        # head numbers in the head view's colours
        self.plot = self.graphics.addPlot(viewBox=GridViewBox(), axisItems={"top": HeadAxis("top")})
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.invertY(True)
        self.plot.showAxis("top")
        self.plot.hideAxis("bottom")
        for side in ("left", "top"):  # numbers only: the caption says which is which, so cells get the room
            self.plot.getAxis(side).setStyle(tickLength=3)
        # room for two digits whatever rows are in view: a left axis that resized while scrolling would move the cells
        self.plot.getAxis("left").setWidth(QFontMetrics(self.font()).horizontalAdvance("00") + 10)
        self.hbar, self.vbar = QScrollBar(Qt.Orientation.Horizontal), QScrollBar(Qt.Orientation.Vertical)
        self.navigator = GridNavigator(self.plot.getViewBox(), self.hbar, self.vbar, self)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.groups = QGraphicsPathItem()  # grouped-query attention: a line between key/value groups
        group_pen = QPen(QColor(128, 128, 128))  # retheme() gives it the palette's text colour
        group_pen.setWidthF(2.0)
        group_pen.setCosmetic(True)
        group_pen.setStyle(Qt.PenStyle.DashLine)
        self.groups.setPen(group_pen)
        self.groups.setZValue(5)
        self.plot.addItem(self.groups)
        self.outline = QGraphicsRectItem()
        self.outline.setBrush(Qt.BrushStyle.NoBrush)
        pen = QPen(QColor(255, 60, 60))
        pen.setWidthF(2.5)
        pen.setCosmetic(True)
        self.outline.setPen(pen)
        self.outline.setZValue(10)
        self.plot.addItem(self.outline)
        self.caption = SteadyLabel()  # changes every step: must not re-lay out the window
        self.caption.setContentsMargins(4, 0, 4, 0)
        self.caption.setObjectName("caption")
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(2)
        self._layout.addLayout(self._make_toolbar())
        view = QGridLayout()
        view.setSpacing(0)
        view.addWidget(self.graphics, 0, 0)
        view.addWidget(self.vbar, 0, 1)
        view.addWidget(self.hbar, 1, 0)
        self._layout.addLayout(view, 1)
        self._layout.addWidget(self.caption)
        self._make_shortcuts()
        self.setToolTip("Click a thumbnail to show that head. Linear scale: each thumbnail is scaled to its own "
                        "maximum; log scale: the same range as the large view. Ctrl+wheel or +/− zooms, the wheel "
                        "or dragging scrolls, 0 shows every head.")
        self.graphics.scene().sigMouseClicked.connect(self._on_clicked)
        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)
        # the thumbnail resolution follows the on-screen cell size (about one atlas pixel per screen pixel,
        # so the gaps between thumbnails neither vanish nor alias); re-fit after zooming or resizing settles
        self._resize_timer = QTimer(self)
        self._resize_timer.setSingleShot(True)
        self._resize_timer.setInterval(150)
        self._resize_timer.timeout.connect(self._refit)
        self.navigator.view_changed.connect(self._on_view_changed)
        state.model_changed.connect(lambda _i: self.clear())
        state.trace_changed.connect(lambda _t: self.redraw())
        state.kind_changed.connect(lambda _k: self.redraw())  # another kind: other patterns
        for changed in (state.layer_changed, state.head_changed, state.mean_heads_changed):
            changed.connect(lambda _v: self._place_outline(scroll=True))  # only the outline moves (into view)
        state.display_changed.connect(self.retheme)  # colour map or scale: every thumbnail
        self.retheme()
        for side in ("left", "top"):  # no numbers until there is something to number
            self.plot.getAxis(side).setTicks([[]])
        self.caption.setText("Every layer (rows) × head (columns); click one to show it large.")

    def _make_toolbar(self) -> QHBoxLayout:
        self.color_box = QComboBox()
        self.color_box.addItem("patterns", None)
        for st in STATISTICS:
            self.color_box.addItem(st.title, st.key)
            self.color_box.setItemData(self.color_box.count() - 1, st.tip, Qt.ItemDataRole.ToolTipRole)
        self.color_box.setToolTip("Show each head's attention pattern, or colour each head by one statistic "
                                  "(readable however many heads there are)")
        # narrow docks (a laptop screen) must not be held wide by the box: it shrinks to a few letters
        self.color_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.color_box.setMinimumContentsLength(4)
        self.color_box.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.color_box.setMaximumWidth(QFontMetrics(self.font()).horizontalAdvance("previous token") + 48)
        self.color_box.currentIndexChanged.connect(self._on_color_by)
        bar = QHBoxLayout()
        bar.setContentsMargins(2, 0, 2, 0)
        bar.setSpacing(2)
        bar.addWidget(self.color_box, 1)  # grows up to its longest item when the dock has room
        bar.addStretch(1)
        self.zoom_buttons = {}
        for key, text, tip, slot in (
            ("out", "−", "Zoom out (− or Ctrl+wheel)", lambda: self.navigator.zoom_by(1 / STEP_ZOOM)),
            ("in", "+", "Zoom in (+ or Ctrl+wheel; the wheel and dragging scroll)", lambda: self.navigator.zoom_by(STEP_ZOOM)),
            ("all", "All", "Show every head (0)", self.navigator.fit_all),
        ):
            button = QToolButton()
            button.setText(text)
            button.setToolTip(tip)
            button.setAutoRaise(True)
            button.clicked.connect(slot)
            bar.addWidget(button)
            self.zoom_buttons[key] = button
        return bar

    def _make_shortcuts(self) -> None:
        """Keys while the grid has the focus (arrows and [ ] already move the selection, window-wide)."""
        nav = self.navigator
        for keys, slot in (
            (("+", "=", "Ctrl++", "Ctrl+="), lambda: nav.zoom_by(STEP_ZOOM)),
            (("-", "Ctrl+-"), lambda: nav.zoom_by(1 / STEP_ZOOM)),
            (("0", "Ctrl+0"), nav.fit_all),
            (("PgDown",), lambda: nav.page(1)),
            (("PgUp",), lambda: nav.page(-1)),
            (("Home",), lambda: nav.scroll_to_end(False)),
            (("End",), lambda: nav.scroll_to_end(True)),
        ):
            for key in keys:
                QShortcut(QKeySequence(key), self, slot, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)

    @property
    def cell_count(self) -> int:
        return self.shape[0] * self.shape[1]

    # -- extension points (features: ablation crosses, statistic bars) -------------------------------
    @property
    def cell_fraction(self) -> float:
        """The part of each unit cell the thumbnail covers (the rest is the gap to the next one)."""
        return self.thumb / (self.thumb + self.gap)

    def cell_rect(self, layer: int, head: int, inset: float = 0.0) -> QRectF:
        """Where the thumbnail of (layer, head) lies in overlay coordinates; `inset` is a fraction of it."""
        f = self.cell_fraction
        return QRectF(head + inset * f, layer + inset * f, (1 - 2 * inset) * f, (1 - 2 * inset) * f)

    def add_overlay(self, item: QGraphicsItem) -> None:
        """Draw `item` over the thumbnails, in cell coordinates (x = head, y = layer)."""
        self.plot.addItem(item)

    def add_footer(self, widget: QWidget) -> None:
        self._layout.addWidget(widget)

    def retheme(self) -> None:
        """Colour map, scale or palette changed: new lookup table (its gap entry is the background)."""
        lut = np.empty((256, 3), dtype=np.uint8)
        lut[:GAP_INDEX] = colormaps.colormap(self.state.colormap).getLookupTable(0.0, 1.0, GAP_INDEX, alpha=False)
        bg = self.palette().window().color()
        lut[GAP_INDEX] = (bg.red(), bg.green(), bg.blue())
        self.image.setLookupTable(lut)
        pen = self.groups.pen()
        pen.setColor(self.palette().windowText().color())  # the group lines lie in the gaps: the background's contrast
        self.groups.setPen(pen)
        self.redraw()

    def clear(self) -> None:
        """A new model: nothing of the old one may linger until its first trace arrives."""
        self.image.clear()
        self.pooler.clear()
        self._async_pooler = ThumbnailPooler(size=POOL_SIZE)  # the render thread may still use the old one
        self._generation = self._render.submit("grid", lambda: None)  # drops what is under way
        self.atlas, self.shape, self.pooled, self._drawn, self._ticks = None, (0, 0), None, None, None
        self._stats = (None, {})
        self.navigator.set_shape(0, 0)  # the next model starts at the automatic fit, even if of the same shape
        self.outline.setRect(QRectF())
        self.groups.setPath(QPainterPath())
        for side in ("left", "top"):
            self.plot.getAxis(side).setTicks([[]])
        self.geometry_changed.emit()

    # -- colour by a statistic ---------------------------------------------------------------------------
    @property
    def color_by(self) -> str | None:
        """The HeadStat field each cell is coloured by, or None: the attention patterns."""
        return self.color_box.currentData()

    def set_color_by(self, key: str | None) -> None:
        self.color_box.setCurrentIndex(self.color_box.findData(key))

    def _on_color_by(self, _index: int) -> None:
        self.redraw()
        self.color_by_changed.emit(self.color_by)

    def set_statistics(self, trace: object, arrays: dict[str, dict[str, np.ndarray]]) -> None:
        """Statistics of `trace`, {kind: {HeadStat field: float [layers, heads]}} (gui/rendering/head_statistics
        .statistic_arrays), for "colour by"; ({} : none yet)."""
        self._stats = (trace, arrays)
        if self.color_by is not None:
            self.redraw()

    def statistic_values(self, kind: str | None = None) -> np.ndarray | None:
        """The chosen statistic of every head of `kind` (default: the kind on screen), [layers, heads]."""
        key = self.color_by
        arrays = self._stats[1].get(kind or self.state.kind, {})
        return arrays.get(key) if key else None

    @staticmethod
    def build_statistic_atlas(values: np.ndarray, t: int, gap: int, scale: tuple[float, float]) -> np.ndarray:
        """values [layers, heads] -> the uint8 atlas with one colour per cell (scale[0] darkest, scale[1]
        brightest), t × t, `gap` apart; NaN cells are background."""
        idx = colour_indices(values, GAP_INDEX, *scale)
        idx[idx < 0] = GAP_INDEX
        n_layers, n_heads = values.shape
        cell = t + gap
        cells = np.full((n_layers, cell, n_heads, cell), GAP_INDEX, dtype=np.uint8)
        cells[:, :t, :, :t] = idx.astype(np.uint8)[:, None, :, None]
        atlas = cells.reshape(n_layers * cell, n_heads * cell)[: n_layers * cell - gap, : n_heads * cell - gap]
        return np.ascontiguousarray(atlas)

    def _draw_statistic(self, trace, kind: str) -> None:  # noqa: ANN001 - engine.Trace
        s, key = self.state, self.color_by
        n_layers, n_heads = trace.n_layers[kind], trace.n_heads
        t, gap = self._thumb_size(n_layers, n_heads)
        values = self.statistic_values(kind)
        stat = BY_KEY[key]
        if values is None or values.shape != (n_layers, n_heads):
            values = np.full((n_layers, n_heads), np.nan, dtype=np.float32)
            text = f"{stat.title}: computing every head's statistics …"
        elif not np.isfinite(values).any():
            text = f"{stat.title}: no value for {kind_name(kind, s.model.family)} (main stack only)"
        else:
            text = None
        self.statistic_scale = statistic_scale(key, values, len(s.key_tokens(trace)))
        atlas = self.build_statistic_atlas(values, t, gap, self.statistic_scale)
        if text is None:
            lo, hi = self.statistic_scale
            finite = values[np.isfinite(values)]
            earlier = " · of an earlier step (updates when idle)" if self._stats[0] is not trace else ""
            text = (f"{stat.title}: dark {format_value(key, lo)} → bright {format_value(key, hi)}; these heads "
                    f"{format_value(key, float(finite.min()))} – {format_value(key, float(finite.max()))}{earlier}"
                    " · hover one for its value")
        self._show_atlas(kind, atlas, t, gap, n_layers, n_heads, trace.kv_group, text)

    # -- attention patterns ------------------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        """A pooled stack is being computed in the display thread."""
        return self._delivered < self._generation  # asked for and not answered yet (the answer may be queued)

    def redraw(self) -> None:
        s, trace = self.state, self.state.trace
        if trace is None or s.model is None or s.kind not in trace.kinds:
            return
        kind = s.kind
        if self.color_by is not None:
            self._draw_statistic(trace, kind)  # one colour per head: nothing to pool
        elif self._drawn is not None and self._drawn == (trace, kind) and self.pooled is not None:
            self._draw(trace, kind, self.pooled, self.bin_width)  # display change only: no pooling
        elif ThumbnailPooler.rebuilds(trace, kind):
            pooler, recipe = self._async_pooler, self._atlas_recipe(trace, kind)

            def work() -> tuple:
                pooled, width = pooler.stack(trace, kind)
                return trace, kind, pooled, width, (recipe, self.build_atlas(kind, pooled, recipe))

            self._generation = self._render.submit("grid", work)
            if self.pooled is None:
                self.caption.setText("Pooling every head's pattern …")
        else:
            pooled, width = self.pooler.stack(trace, kind)
            self._draw(trace, kind, pooled, width)

    def _on_failed(self, _key: str, generation: int, message: str) -> None:
        self._delivered = max(self._delivered, generation)
        log.warning("head grid: %s", message)
        if generation == self._generation:  # the thumbnails drawn stay; say why they are not the new trace's
            self.caption.setText(message.split(": ", 1)[-1])

    def _on_rendered(self, key: str, generation: int, result: object) -> None:
        self._delivered = max(self._delivered, generation)
        if key != "grid" or generation != self._generation or result is None:
            return  # a newer request (another trace, kind or model) made it stale
        trace, kind, pooled, width, made = result
        if trace is self.state.trace and kind == self.state.kind:
            if self.color_by is None:
                self._draw(trace, kind, pooled, width, made)
            else:  # kept for when the patterns are shown again
                self.pooled, self.bin_width, self._drawn = pooled, width, (trace, kind)

    def _atlas_recipe(self, trace, kind: str) -> tuple[int, int, bool, tuple[bool, ...]]:  # noqa: ANN001 - engine.Trace
        """What the atlas depends on besides the pooled stack: (thumbnail size, gap, log scale, layers captured)."""
        s = self.state
        t, gap = self._thumb_size(trace.n_layers[kind], trace.n_heads)
        return t, gap, s.log_scale, tuple(ThumbnailPooler.captured(trace, kind, layer) for layer in range(trace.n_layers[kind]))

    @staticmethod
    def build_atlas(kind: str, pooled: np.ndarray, recipe: tuple[int, int, bool, tuple[bool, ...]]) -> np.ndarray:
        """pooled [layers, heads, m_q, m_k] -> the uint8 atlas of thumbnails t × t, `gap` apart (numpy only, so
        the display thread can make it: ~2 ms a step at 12 × 12 heads that the event loop no longer spends)."""
        t, gap, log_scale, captured = recipe
        n_layers, n_heads = pooled.shape[:2]
        cell = t + gap
        # resampled and scaled as one stack (per-layer calls cost more in numpy overhead than in work)
        stack = pooled.reshape(-1, *pooled.shape[2:])
        tiles = np.round(display.normalised_stack(display.fit_stack(stack, t), log_scale) * (GAP_INDEX - 1))
        tiles = tiles.astype(np.uint8).reshape(n_layers, n_heads, t, t)
        if kind == "self":  # outside the causal mask: background, as in the large view
            # a pooled bin above the diagonal holds only future keys (bins are square)
            hidden = display.fit((~display.future_mask(*pooled.shape[2:])).astype(np.float32), t) == 0
            tiles[:, :, hidden] = GAP_INDEX
        for layer in range(n_layers):
            if not captured[layer]:
                tiles[layer] = GAP_INDEX  # not captured (Session(capture=...)): nothing to show
        cells = np.full((n_layers, cell, n_heads, cell), GAP_INDEX, dtype=np.uint8)
        cells[:, :t, :, :t] = tiles.transpose(0, 2, 1, 3)
        return np.ascontiguousarray(cells.reshape(n_layers * cell, n_heads * cell)[: n_layers * cell - gap, : n_heads * cell - gap])

    def _draw(self, trace, kind: str, pooled: np.ndarray, width: int,  # noqa: ANN001 - engine.Trace
              made: tuple[tuple, np.ndarray] | None = None) -> None:
        """pooled [layers, heads, m_q, m_k] (max over bins of `width` tokens) -> the atlas on screen; `made` is
        (recipe, atlas) from the display thread, used if the recipe still holds (no resize or rescale since)."""
        s = self.state
        self.pooled, self.bin_width, self._drawn = pooled, width, (trace, kind)
        n_layers, n_heads = trace.n_layers[kind], trace.n_heads
        n = max(len(s.query_tokens(trace)), len(s.key_tokens(trace)))
        recipe = self._atlas_recipe(trace, kind)
        atlas = made[1] if made is not None and made[0] == recipe else self.build_atlas(kind, pooled, recipe)
        t, gap = recipe[0], recipe[1]
        groups = (f" · query heads share key/value heads in groups of {trace.kv_group} (dashed lines)"
                  if trace.kv_group > 1 else "")
        text = (f"{kind_name(kind, s.model.family)}: {n_layers} layers (rows) × {n_heads} heads"
                + (f" · {n} tokens, max-pooled" if n > t else "") + groups + _no_attention_note(trace))
        self._show_atlas(kind, atlas, t, gap, n_layers, n_heads, trace.kv_group, text)

    # -- on screen ---------------------------------------------------------------------------------------
    def _show_atlas(self, kind: str, atlas: np.ndarray, t: int, gap: int, n_layers: int, n_heads: int,
                    kv_group: int, caption: str) -> None:
        cell = t + gap
        moved = (t, gap, (n_layers, n_heads)) != (self.thumb, self.gap, self.shape)
        self.thumb, self.gap, self.shape, self.atlas = t, gap, (n_layers, n_heads), atlas
        self.image.setImage(atlas, autoLevels=False, levels=(0, 255))
        # atlas coordinates: one unit per thumbnail, so layer/head are the integer cells
        self.image.setRect(QRectF(0, 0, atlas.shape[1] / cell, atlas.shape[0] / cell))
        if self.navigator.shape != self.shape:
            self.navigator.set_shape(n_layers, n_heads)  # a new grid: the automatic fit (labels follow)
        self._update_ticks()
        if kv_group != self.kv_group or moved:
            self.kv_group = kv_group
            self._draw_groups(n_layers, n_heads, t / cell)
        self.caption.setText(caption)
        self._place_outline()
        if moved:
            self.geometry_changed.emit()

    def _update_ticks(self) -> None:
        """Layer and head numbers every `label_step` cells, so neighbours never overlap at any zoom."""
        n_layers, n_heads = self.shape
        if not n_layers:
            return
        t, cell = self.thumb, self.thumb + self.gap
        step = label_step(self.navigator.px or MIN_LABEL_PX, MIN_LABEL_PX)
        ticks = (t, self.gap, step, n_layers, n_heads)
        if ticks != self._ticks:  # new tick labels regenerate both axes: only when they change
            self._ticks = ticks
            self.plot.getAxis("left").setTicks([[(i + t / cell / 2, str(i)) for i in range(0, n_layers, step)]])
            self.plot.getAxis("top").setTicks([[(h + t / cell / 2, str(h)) for h in range(0, n_heads, step)]])

    @property
    def label_step(self) -> int:
        return self._ticks[2] if self._ticks else 1

    def _on_view_changed(self) -> None:
        self._update_ticks()
        self.groups.setVisible(self.navigator.px >= MIN_GROUP_PX)  # denser, the dashes hide the cells
        self._resize_timer.start()  # finer or coarser thumbnails once the zoom settles

    def _draw_groups(self, n_layers: int, n_heads: int, frac: float) -> None:
        path = QPainterPath()
        if self.kv_group > 1:
            for h in range(self.kv_group, n_heads, self.kv_group):
                x = h - (1 - frac) / 2  # in the gap between the groups
                path.moveTo(x, 0)
                path.lineTo(x, n_layers - (1 - frac))
        self.groups.setPath(path)

    def describe_cell(self, layer: int, head: int) -> str:
        text = f"layer {layer} · head {head}"
        g = self.kv_group
        if g > 1:
            kv = head // g
            text += f" · key/value head {kv} (shared by query heads {kv * g}–{kv * g + g - 1})"
        trace = self.state.trace
        missing = getattr(trace, "no_attention", {}).get(capture_name(self.state.kind, layer)) if trace is not None else None
        if missing:
            text += f" · no attention (a {missing} layer)"
        elif trace is not None and not ThumbnailPooler.captured(trace, self.state.kind, layer):
            text += " · not captured"
        values = self.statistic_values()
        if values is not None and layer < values.shape[0] and head < values.shape[1]:
            text += f" · {BY_KEY[self.color_by].title} {format_value(self.color_by, float(values[layer, head]))}"
        return text + " (click to show it)"

    @property
    def cell_pixels(self) -> float:
        """Screen pixels per cell now."""
        return self.navigator.px

    def _thumb_size(self, n_layers: int, n_heads: int) -> tuple[int, int]:
        """(thumbnail size, gap) in atlas pixels for cells of the size they have on screen."""
        px = self.navigator.cell_px_for(n_layers, n_heads) * self.devicePixelRatioF()
        if px <= 0:  # not laid out yet: full resolution (within the atlas budget)
            px = MAX_THUMB + GAP
        return thumb_size(px, n_layers, n_heads, MIN_THUMB, MAX_THUMB)  # short sequences are repeated up to it

    def _refit(self) -> None:
        s, trace = self.state, self.state.trace
        if trace is None or s.kind not in trace.kinds or not self.cell_count:
            return
        if self._thumb_size(*self.shape) != (self.thumb, self.gap):
            self.redraw()

    def _place_outline(self, scroll: bool = False) -> None:
        """The selected head (or layer, mean of heads) outlined; `scroll`: and brought into view."""
        s = self.state
        if self.cell_count == 0:
            return
        frac = self.cell_fraction
        if s.mean_heads:
            self.outline.setRect(QRectF(0, s.layer, self.shape[1] - 1 + frac, frac))
        else:
            self.outline.setRect(QRectF(s.head, s.layer, frac, frac))
        if scroll and s.layer < self.shape[0]:
            self.navigator.ensure_visible(s.layer, None if s.mean_heads else min(s.head, self.shape[1] - 1))

    def cell_at(self, scene_pos: QPointF) -> tuple[int, int] | None:
        if self.cell_count == 0:
            return None
        p = self.plot.getViewBox().mapSceneToView(scene_pos)
        layer, head = int(np.floor(p.y())), int(np.floor(p.x()))
        if 0 <= layer < self.shape[0] and 0 <= head < self.shape[1]:
            return layer, head
        return None

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        cell = self.cell_at(scene_pos) if self.plot.sceneBoundingRect().contains(scene_pos) else None
        if cell is None:
            QToolTip.hideText()
        else:
            QToolTip.showText(QCursor.pos(), self.describe_cell(*cell), self.graphics)

    def _on_clicked(self, event) -> None:  # noqa: ANN001 - pyqtgraph MouseClickEvent
        cell = self.cell_at(event.scenePos())
        if cell is None:
            return
        if event.button() == Qt.MouseButton.LeftButton:
            self.state.select(layer=cell[0], head=cell[1], mean_heads=False)
        else:
            event.accept()  # a right-click on a cell is the listeners' (the ablation menu), not the plot's
        self.cell_clicked.emit(cell[0], cell[1], event.button(), event.modifiers())


def _no_attention_note(trace) -> str:  # noqa: ANN001 - engine.Trace
    """" · layers 0, 2: no attention (Mamba)" for hybrids, whose rows of those layers stay empty."""
    missing = getattr(trace, "no_attention", None)
    if not missing:
        return ""
    by_kind: dict[str, list[str]] = {}
    for name, what in missing.items():
        by_kind.setdefault(what, []).append(name.split(".")[1])
    return "".join(f" · layer{'s' if len(ls) > 1 else ''} {', '.join(ls)}: no attention ({what})"
                   for what, ls in by_kind.items())
