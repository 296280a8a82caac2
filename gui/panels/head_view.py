"""Head view (BertViz's): one query token and every head of the selected layer at once.

The sequence is written twice, queries on the left and keys on the right (cross-attention: decoder
tokens on the left, the source on the right). From the selected query a line runs to every key, one
colour per head (the head grid's colours, gui/rendering/head_colors.py), its opacity the head's weight.
Hovering a token on the left selects it as the query; the legend's chips show or hide a head (click),
or show one alone (double-click; again: all). Query heads that share a key/value head are grouped.

Long sequences: only keys whose weight reaches the threshold are drawn (so at most 1/threshold lines per
head, and never more than MAX_LINES_PER_HEAD), the canvas scrolls, and the token columns paint only the
rows on screen; a query change re-reads one attention row (Trace.attention_row) and moves no widget.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from PySide6.QtCore import QEvent, QLineF, QPointF, QRectF, QSignalBlocker, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QCursor, QFont, QFontMetricsF, QMouseEvent, QPainter, QPen, QResizeEvent, QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFrame,
    QGraphicsItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QStyleOptionGraphicsItem,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from engine import EngineError

from ..core.arrivals import PENDING, PLACEHOLDER, Arrivals
from ..core.state import InspectorState
from ..rendering.head_colors import head_color
from ..rendering.labels import kind_name
from ..widgets.flow_layout import FlowLayout
from ..widgets.refreshing import on_screen
from ..widgets.steady_label import SteadyLabel, set_spin_range
from ..widgets.token_axis import short

log = logging.getLogger(__name__)

MAX_LINES_PER_HEAD = 256  # a cap for a threshold of 0 on a long sequence
DEFAULT_THRESHOLD = 0.01  # weights below this are drawn at under 3/255 opacity anyway
MARGIN = 8.0  # scene units (pixels) around the columns
GAP_MIN = 60.0  # the lines' width at least
LINE_WIDTH = 2.0


class TokenColumn(QGraphicsItem):
    """A column of token labels, one row each; paints only the rows in the exposed rectangle."""

    def __init__(self, align_right: bool) -> None:
        super().__init__()
        self.align_right = align_right
        self.tokens: tuple[str, ...] = ()
        self.labels: tuple[str, ...] = ()
        self.row_h = 18.0
        self.width = 40.0
        self.selected = -1
        self.text_color = QColor(0, 0, 0)
        self.select_color = QColor(255, 220, 120)
        self._font = QFont()
        self._fm: QFontMetricsF | None = None
        self._label_of: dict[str, str] = {}  # token -> its shortened label, and that label's width
        self._width_of: dict[str, float] = {}
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)

    def set_tokens(self, tokens: tuple[str, ...], font: QFont, row_h: float) -> None:
        """A step appends a token: only tokens not seen before are shortened and measured (a full pass
        over 1k tokens cost ~10 ms per step)."""
        self.prepareGeometryChange()
        if font != self._font or self._fm is None:  # the widths belong to a font
            self._font, self._fm, self._label_of, self._width_of = QFont(font), QFontMetricsF(font), {}, {}
        fm = self._fm
        label_of, width_of = self._label_of, self._width_of
        for t in set(tokens).difference(label_of):
            label_of[t] = lab = short(t)
            width_of[t] = fm.horizontalAdvance(lab)
        self.tokens, self.row_h = tuple(tokens), row_h
        self.labels = tuple(label_of[t] for t in self.tokens)
        self.width = max((width_of[t] for t in set(self.tokens)), default=20.0) + 12.0
        self.update()

    def set_selected(self, row: int) -> None:
        if row != self.selected:
            old, self.selected = self.selected, row
            for r in (old, row):
                if 0 <= r < len(self.tokens):
                    self.update(self.row_rect(r))

    def row_rect(self, row: int) -> QRectF:
        return QRectF(0, row * self.row_h, self.width, self.row_h)

    def row_y(self, row: int | np.ndarray) -> float | np.ndarray:
        """Scene y of the middle of `row` (the item's own y offset added)."""
        return self.pos().y() + (np.asarray(row) + 0.5) * self.row_h

    def row_at(self, y: float) -> int | None:
        r = int(np.floor((y - self.pos().y()) / self.row_h))
        return r if 0 <= r < len(self.tokens) else None

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt API
        return QRectF(0, 0, self.width, len(self.tokens) * self.row_h)

    def paint(self, p: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        r = option.exposedRect
        i0 = max(0, int(r.top() // self.row_h))
        i1 = min(len(self.tokens), int(r.bottom() // self.row_h) + 1)
        align = (Qt.AlignmentFlag.AlignRight if self.align_right else Qt.AlignmentFlag.AlignLeft) | Qt.AlignmentFlag.AlignVCenter
        p.setPen(self.text_color)
        for i in range(i0, i1):
            rect = self.row_rect(i)
            if i == self.selected:
                p.fillRect(rect.adjusted(1, 1, -1, -1), self.select_color)
                p.setPen(QColor(0, 0, 0))
                p.drawText(rect.adjusted(6, 0, -6, 0), int(align), self.labels[i])
                p.setPen(self.text_color)
            else:
                p.drawText(rect.adjusted(6, 0, -6, 0), int(align), self.labels[i])


class HeadLines(QGraphicsItem):
    """One head's lines from the query to its keys; each line's alpha is its weight (× 255)."""

    def __init__(self, head: int) -> None:
        super().__init__()
        self.head = head
        self.color = QColor(head_color(head))
        self.x0 = self.x1 = self.y0 = 0.0
        self.keys = np.zeros(0, dtype=np.int64)
        self.weights = np.zeros(0, dtype=np.float32)
        self.ys = np.zeros(0, dtype=np.float64)
        self._rect = QRectF()
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)

    @property
    def alphas(self) -> np.ndarray:
        """The opacity of each line, 0..255: the head's weight at that key."""
        return np.clip(np.rint(self.weights.astype(np.float64) * 255.0), 0, 255).astype(np.int64)

    def set_lines(self, x0: float, x1: float, y0: float, keys: np.ndarray, ys: np.ndarray, weights: np.ndarray) -> None:
        self.prepareGeometryChange()
        self.x0, self.x1, self.y0 = float(x0), float(x1), float(y0)
        self.keys, self.ys, self.weights = keys, np.asarray(ys, dtype=np.float64), weights
        if keys.size:
            top, bottom = min(self.y0, float(self.ys.min())), max(self.y0, float(self.ys.max()))
            self._rect = QRectF(self.x0 - 2, top - 2, self.x1 - self.x0 + 4, bottom - top + 4)
        else:
            self._rect = QRectF()
        self.update()

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt API
        return self._rect

    def paint(self, p: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        if not self.keys.size:
            return
        r = option.exposedRect
        top, bottom = r.top() - LINE_WIDTH, r.bottom() + LINE_WIDTH
        alphas = self.alphas
        ys = self.ys
        keep = alphas > 0
        # clip each line to the exposed band ourselves: a long antialiased line that the raster engine
        # clips costs ~0.3 ms, the part on screen a few microseconds (1,000-token sequences scroll)
        dy = ys - self.y0
        with np.errstate(divide="ignore", invalid="ignore"):
            ta, tb = (top - self.y0) / dy, (bottom - self.y0) / dy
        flat = np.abs(dy) < 1e-9
        t0 = np.where(flat, np.where((self.y0 >= top) & (self.y0 <= bottom), 0.0, 1.0), np.clip(np.minimum(ta, tb), 0, 1))
        t1 = np.where(flat, np.where((self.y0 >= top) & (self.y0 <= bottom), 1.0, 0.0), np.clip(np.maximum(ta, tb), 0, 1))
        keep &= t1 > t0
        if not keep.any():
            return
        dx = self.x1 - self.x0
        xa, ya = self.x0 + t0[keep] * dx, self.y0 + t0[keep] * dy[keep]
        xb, yb = self.x0 + t1[keep] * dx, self.y0 + t1[keep] * dy[keep]
        a = alphas[keep]
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        pen = QPen(self.color)
        pen.setWidthF(LINE_WIDTH)
        pen.setCapStyle(Qt.PenCapStyle.FlatCap)
        color = QColor(self.color)
        for alpha in np.unique(a).tolist():  # one pen per opacity, its lines in one call
            idx = np.flatnonzero(a == alpha).tolist()
            color.setAlpha(int(alpha))
            pen.setColor(color)
            p.setPen(pen)
            p.drawLines([QLineF(xa[i], ya[i], xb[i], yb[i]) for i in idx])


class HeadCanvas(QGraphicsView):
    """The two token columns and the lines between them; reports the row under the mouse."""

    hovered = Signal(str, int)  # "query" | "key" | "" (neither), row (-1 for none)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        self.setRenderHint(QPainter.RenderHint.TextAntialiasing, True)
        self.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
        self.setMouseTracking(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.MinimalViewportUpdate)
        self.queries = TokenColumn(align_right=True)
        self.keys = TokenColumn(align_right=False)
        for item in (self.queries, self.keys):
            self.scene().addItem(item)
        self.lines: dict[int, HeadLines] = {}
        self.line_x = (0.0, 0.0)
        self._last_hover = ("", -1)

    def set_heads(self, n_heads: int) -> None:
        if len(self.lines) == n_heads:
            return
        for item in self.lines.values():
            self.scene().removeItem(item)
        self.lines = {h: HeadLines(h) for h in range(n_heads)}
        for h, item in self.lines.items():
            item.setZValue(1 + h / max(n_heads, 1))
            self.scene().addItem(item)

    def set_tokens(self, queries: tuple[str, ...], keys: tuple[str, ...]) -> None:
        fm = QFontMetricsF(self.font())
        row_h = float(np.ceil(fm.height() * 1.15))
        self.queries.set_tokens(queries, self.font(), row_h)
        self.keys.set_tokens(keys, self.font(), row_h)
        self.relayout()

    def relayout(self) -> None:
        """Columns at the two sides, the lines' gap filling the width the viewport has."""
        qw, kw = self.queries.width, self.keys.width
        gap = max(GAP_MIN, self.viewport().width() - qw - kw - 2 * MARGIN - 2)
        self.queries.setPos(MARGIN, MARGIN)
        self.keys.setPos(MARGIN + qw + gap, MARGIN)
        self.line_x = (MARGIN + qw + 2, MARGIN + qw + gap - 2)
        rows = max(len(self.queries.tokens), len(self.keys.tokens))
        self.scene().setSceneRect(QRectF(0, 0, qw + gap + kw + 2 * MARGIN, rows * self.queries.row_h + 2 * MARGIN))

    def set_colors(self, text: QColor, select: QColor, background: QColor) -> None:
        for col in (self.queries, self.keys):
            col.text_color, col.select_color = text, select
            col.update()
        self.setBackgroundBrush(background)

    def ensure_row_visible(self, row: int) -> None:
        """Scroll the query's row into the middle of the view, unless it is on screen already."""
        if 0 <= row < len(self.queries.tokens):
            rect = self.queries.row_rect(row).translated(self.queries.pos())
            if not self.mapToScene(self.viewport().rect()).boundingRect().contains(rect):
                self.centerOn(self.mapToScene(self.viewport().rect().center()).x(), rect.center().y())

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        old = self.line_x
        self.relayout()
        if self.line_x != old:
            for item in self.lines.values():
                item.set_lines(*self.line_x, item.y0, item.keys, item.ys, item.weights)
        # a dock tabbed to the front (or a splitter moved) gets its size after the redraw that scrolled: the
        # selected query stays in sight at the new size
        self.ensure_row_visible(self.queries.selected)

    def hover_at(self, scene_pos: QPointF) -> tuple[str, int]:
        x, y = scene_pos.x(), scene_pos.y()
        q, k = self.queries, self.keys
        if q.pos().x() <= x <= q.pos().x() + q.width:
            row = q.row_at(y)
            return ("query", row) if row is not None else ("", -1)
        if k.pos().x() <= x <= k.pos().x() + k.width:
            row = k.row_at(y)
            return ("key", row) if row is not None else ("", -1)
        return ("", -1)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt API
        super().mouseMoveEvent(event)
        where = self.hover_at(self.mapToScene(event.position().toPoint()))
        if where != self._last_hover:
            self._last_hover = where
            self.hovered.emit(*where)

    def leaveEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt API
        super().leaveEvent(event)
        self._last_hover = ("", -1)
        self.hovered.emit("", -1)


class HeadChip(QToolButton):
    """A head's colour in the legend: click shows / hides it, double-click shows it alone."""

    double_clicked = Signal(int)

    def __init__(self, head: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.head = head
        self.setText(str(head))
        self.setCheckable(True)
        self.setChecked(True)
        self.setAutoRaise(False)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.toggled.connect(lambda _on: self._restyle())
        self._restyle()

    def _restyle(self) -> None:
        c = head_color(self.head)
        if self.isChecked():
            fg = "#000000" if c.lightnessF() > 0.55 else "#ffffff"
            css = f"background: {c.name()}; color: {fg}; border: 1px solid {c.darker(140).name()};"
        else:
            css = f"background: transparent; color: palette(placeholder-text); border: 1px dashed {c.name()};"
        self.setStyleSheet(f"QToolButton {{ {css} border-radius: 3px; padding: 1px 5px; font-weight: 600; }}")

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt API
        if event.button() == Qt.MouseButton.LeftButton:
            self.double_clicked.emit(self.head)
            event.accept()
            return
        super().mouseDoubleClickEvent(event)


class HeadView(QWidget):
    """The dock: controls (layer, threshold, all heads), the legend, the canvas, a caption."""

    def __init__(self, state: InspectorState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.arrivals = Arrivals(self)  # the query's row: at once, or fetched in the background (lines redrawn then)
        self.state = state
        self.hidden_heads: set[int] = set()
        self.row: np.ndarray | None = None  # [heads, keys] of the query on screen
        self.query_row = -1  # the row on screen (into the left column)
        self.redraw_ms = 0.0  # the last line update, for the caption's tooltip and the tests
        self._dirty = True
        self._pending_hover = -1
        self._before_toggle: tuple[int, list[int]] | None = None  # (head, heads shown before its last click)

        self.kind_box = QComboBox()
        self.kind_box.setToolTip("Which attention (the same choice as the attention view's)")
        self.kind_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.layer_spin = QSpinBox()
        self.layer_spin.setPrefix("layer ")
        self.layer_spin.setToolTip("Layer (↑ / ↓, as in every view)")
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 0.5)
        self.threshold_spin.setDecimals(3)
        self.threshold_spin.setSingleStep(0.005)
        self.threshold_spin.setValue(DEFAULT_THRESHOLD)
        self.threshold_spin.setPrefix("weight ≥ ")
        self.threshold_spin.setToolTip("Draw only the keys a head gives at least this weight "
                                       f"(at most {MAX_LINES_PER_HEAD} lines per head)")
        self.all_button = QToolButton()
        self.all_button.setText("all heads")
        self.all_button.setToolTip("Show every head again")
        self.title = SteadyLabel(wrap=False)
        self.title.setObjectName("caption")
        controls = QWidget()  # wraps in a narrow dock (a 1366-px screen) rather than needing 420 px
        flow = FlowLayout(controls, spacing=4)
        flow.setContentsMargins(4, 2, 4, 0)
        for w in (self.kind_box, self.layer_spin, self.threshold_spin, self.all_button):
            flow.addWidget(w)

        self.legend = QWidget()
        self.legend_layout = FlowLayout(self.legend, spacing=4)
        self.chips: dict[int, HeadChip] = {}
        self.canvas = HeadCanvas()
        # one line (the whole text in its tooltip): in a short dock the canvas keeps the height (issue 30)
        self.caption = SteadyLabel(wrap=False)
        self.caption.setObjectName("caption")

        # what an export shows: the title, the legend and the canvas (not the controls)
        self.picture = QWidget()
        pl = QVBoxLayout(self.picture)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.setSpacing(2)
        pl.addWidget(self.title)
        pl.addWidget(self.legend)
        pl.addWidget(self.canvas, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(controls)
        layout.addWidget(self.picture, 1)
        layout.addWidget(self.caption)

        self._hover_timer = QTimer(self)  # hovering fast over many tokens selects the last one, once
        self._hover_timer.setSingleShot(True)
        self._hover_timer.setInterval(15)
        self._hover_timer.timeout.connect(self._apply_hover)

        self.layer_spin.valueChanged.connect(lambda v: state.select(layer=v))
        self.kind_box.activated.connect(lambda i: state.select(kind=self.kind_box.itemData(i)))
        self.threshold_spin.valueChanged.connect(lambda _v: self.redraw_lines())
        self.all_button.clicked.connect(self.show_all_heads)
        self.canvas.hovered.connect(self._on_hover)
        state.model_changed.connect(self._on_model)
        state.trace_changed.connect(lambda _t: self.redraw())
        state.kind_changed.connect(lambda _k: self.redraw())
        state.layer_changed.connect(lambda _l: self.redraw())
        state.query_changed.connect(lambda _q: self.redraw_lines(follow=True))
        state.source_query_changed.connect(lambda _q: self.redraw_lines(follow=True))
        self.retheme()
        self.clear("Open a model")

    # -- public ---------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        return float(self.threshold_spin.value())

    def set_threshold(self, value: float) -> None:
        self.threshold_spin.setValue(value)

    @property
    def visible_heads(self) -> list[int]:
        return [h for h in self.chips if h not in self.hidden_heads]

    def set_head_visible(self, head: int, visible: bool) -> None:
        chip = self.chips.get(head)
        if chip is not None:
            chip.setChecked(visible)  # -> _on_chip_toggled when it changes

    def solo(self, head: int) -> None:
        """Show `head` alone; if it already is, show every head again."""
        if head not in self.chips:
            return
        # a double-click's first click has toggled the head already: judge by what was shown before it
        before = self._before_toggle[1] if self._before_toggle and self._before_toggle[0] == head else self.visible_heads
        self._before_toggle = None
        if before == [head]:
            self.show_all_heads()
            return
        self.hidden_heads = {h for h in self.chips if h != head}
        self._sync_chips()
        self.redraw_lines()

    def show_all_heads(self) -> None:
        self.hidden_heads = set()
        self._sync_chips()
        self.redraw_lines()

    def line_count(self) -> int:
        return sum(int(item.keys.size) for item in self.canvas.lines.values() if item.isVisible())

    def retheme(self) -> None:
        pal = self.palette()
        dark = pal.window().color().lightness() < 128
        self.canvas.set_colors(pal.windowText().color(), QColor(255, 214, 102) if not dark else QColor(240, 190, 60),
                               pal.base().color())

    # -- drawing ------------------------------------------------------------------------------------
    def clear(self, text: str) -> None:
        self.row, self.query_row = None, -1
        self.canvas.set_heads(0)
        self.canvas.set_tokens((), ())
        self._build_legend(0, 1)
        self.title.setText("")
        self.caption.setText(text)

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt API
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:  # light <-> dark
            self.retheme()

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self.catch_up()

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self.catch_up()  # a dock dragged back open from zero height fires neither show nor visibilityChanged

    def catch_up(self) -> None:
        """Shown, or its dock's tab brought to the front (the dock's visibilityChanged): redraw once if
        anything changed while it was away."""
        if self._dirty:
            QTimer.singleShot(0, lambda: self._dirty and self.redraw())  # shown and visibilityChanged both call

    def _ready(self) -> bool:
        s = self.state
        return s.trace is not None and s.model is not None and s.kind in s.trace.kinds

    def redraw(self) -> None:
        """Tokens, legend and lines (a new trace, kind or layer)."""
        s, trace = self.state, self.state.trace
        self._sync_layer_spin()
        if not self._ready():
            return
        if not on_screen(self):
            self._dirty = True  # hidden or tabbed away: redraw when shown (catch_up)
            return
        self._dirty = False
        n_heads = trace.n_heads
        if len(self.chips) != n_heads or self._legend_group != trace.kv_group:
            self.hidden_heads &= set(range(n_heads))
            self._build_legend(n_heads, trace.kv_group)
        self.canvas.set_heads(n_heads)
        queries, keys = s.query_tokens(trace), s.key_tokens(trace)
        if queries != self.canvas.queries.tokens or keys != self.canvas.keys.tokens:
            self.canvas.set_tokens(queries, keys)
        name = kind_name(s.kind, s.model.family)
        direction = " (decoder → source)" if s.kind == "cross" else ""
        self.title.setText(f"{name}{direction} · layer {s.layer} · {n_heads} heads"
                           + (f" sharing {trace.n_kv_heads} key/value heads" if trace.kv_group > 1 else ""))
        self.redraw_lines(follow=True)

    def redraw_lines(self, follow: bool = False) -> None:
        """The selected query's lines (a query change, a head toggled, another threshold): one attention row."""
        s, trace = self.state, self.state.trace
        if not self._ready() or not self.canvas.lines:
            return
        if not on_screen(self):
            self._dirty = True
            return
        t0 = time.perf_counter()
        q = s.row_query
        kind, layer = s.kind, s.layer
        try:
            row = self.arrivals.read(trace, ("row", kind, layer, q), lambda t: t.attention_row(kind, layer, q),
                                     self.redraw_lines)  # [heads, keys]
        except EngineError as exc:  # not captured, or a remote engine that keeps the patterns went away
            self.row = None
            for item in self.canvas.lines.values():
                item.set_lines(*self.canvas.line_x, 0.0, np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.float32))
            self.caption.setText(str(exc))
            return
        if row is PENDING:  # on its way: the last lines stay until it lands
            self.caption.setText(f"query {q}: {PLACEHOLDER}")
            return
        self.row, self.query_row = row, q
        thr = self.threshold
        y0 = float(self.canvas.queries.row_y(q))
        shown = 0
        for h, item in self.canvas.lines.items():
            visible = h not in self.hidden_heads
            item.setVisible(visible)
            if not visible:
                item.set_lines(*self.canvas.line_x, y0, np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.float32))
                continue
            w = row[h]
            keys = np.flatnonzero(w >= thr) if thr > 0 else np.flatnonzero(w > 0)
            if keys.size > MAX_LINES_PER_HEAD:  # the strongest ones, in key order
                keys = np.sort(keys[np.argsort(-w[keys], kind="stable")[:MAX_LINES_PER_HEAD]])
            ys = self.canvas.keys.row_y(keys) + self._fan_offset(h, len(self.canvas.lines))
            item.set_lines(*self.canvas.line_x, y0, keys, ys, w[keys])
            shown += int(keys.size)
        self.canvas.queries.set_selected(q)
        if follow and self._pending_hover < 0 and not self._hover_timer.isActive():
            self.canvas.ensure_row_visible(q)
        self.redraw_ms = (time.perf_counter() - t0) * 1000.0
        tokens = self.canvas.queries.tokens
        token = tokens[q] if 0 <= q < len(tokens) else "?"
        hidden = len(self.hidden_heads)
        hint = (" No key reaches the threshold: lower it." if shown == 0 and len(self.chips) > hidden else
                " Hover a token on the left to select it; click a head's colour to hide it, double-click to show "
                "it alone.")
        text = (f"Query {q} “{token}”: {shown} lines with weight ≥ {thr:g} from "
                f"{len(self.chips) - hidden} of {len(self.chips)} heads." + hint)
        self.caption.setText(text)
        self.caption.setToolTip(text)

    def _fan_offset(self, head: int, n_heads: int) -> float:
        """Heads that pick the same key end a little apart within its row, so one does not hide another."""
        if n_heads < 2:
            return 0.0
        spread = min(0.5 * self.canvas.keys.row_h, 2.0 * (n_heads - 1))
        return (head / (n_heads - 1) - 0.5) * spread

    # -- legend ---------------------------------------------------------------------------------------
    _legend_group = 1

    def _build_legend(self, n_heads: int, group: int) -> None:
        while self.legend_layout.count():
            item = self.legend_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.chips = {}
        self._legend_group = group
        if n_heads == 0:
            return
        if group > 1:  # one frame per key/value head: its query heads side by side
            for g in range(n_heads // group):
                frame = QFrame()
                frame.setFrameShape(QFrame.Shape.StyledPanel)
                frame.setToolTip(f"Query heads {g * group}–{(g + 1) * group - 1} share key/value head {g}")
                fl = QHBoxLayout(frame)
                fl.setContentsMargins(3, 1, 3, 1)
                fl.setSpacing(2)
                label = QLabel(f"kv {g}")
                label.setObjectName("caption")
                fl.addWidget(label)
                for h in range(g * group, (g + 1) * group):
                    fl.addWidget(self._chip(h, g))
                self.legend_layout.addWidget(frame)
        else:
            label = QLabel("heads")
            label.setObjectName("caption")
            label.setMinimumHeight(HeadChip(0).sizeHint().height())  # level with the chips
            self.legend_layout.addWidget(label)
            for h in range(n_heads):
                self.legend_layout.addWidget(self._chip(h, None))
        self._sync_chips()

    def _chip(self, head: int, kv: int | None) -> HeadChip:
        chip = HeadChip(head)
        chip.setToolTip(f"head {head}" + (f" (key/value head {kv})" if kv is not None else "")
                        + ": click to show / hide, double-click to show it alone")
        chip.toggled.connect(lambda on, h=head: self._on_chip_toggled(h, on))
        chip.double_clicked.connect(self.solo)
        self.chips[head] = chip
        return chip

    def _sync_chips(self) -> None:
        for h, chip in self.chips.items():
            with QSignalBlocker(chip):
                chip.setChecked(h not in self.hidden_heads)
            chip._restyle()

    def _on_chip_toggled(self, head: int, on: bool) -> None:
        self._before_toggle = (head, self.visible_heads)
        if on:
            self.hidden_heads.discard(head)
        else:
            self.hidden_heads.add(head)
        self.redraw_lines()

    # -- state -> controls ------------------------------------------------------------------------
    def _on_model(self, info) -> None:  # noqa: ANN001 - ModelInfo
        with QSignalBlocker(self.kind_box):
            self.kind_box.clear()
            for k in info.kinds:
                self.kind_box.addItem(kind_name(k, info.family), k)
        self.kind_box.setVisible(len(info.kinds) > 1)  # one kind: nothing to choose
        self.clear("Type a prompt")

    def _sync_layer_spin(self) -> None:
        s = self.state
        i = self.kind_box.findData(s.kind)
        if i >= 0 and i != self.kind_box.currentIndex():
            with QSignalBlocker(self.kind_box):
                self.kind_box.setCurrentIndex(i)
        with QSignalBlocker(self.layer_spin):
            set_spin_range(self.layer_spin, 0, max(0, s.n_layers - 1))
            if self.layer_spin.value() != s.layer:
                self.layer_spin.setValue(s.layer)

    # -- hover ------------------------------------------------------------------------------------------
    def _on_hover(self, side: str, row: int) -> None:
        if side == "query":
            self._pending_hover = row
            self._hover_timer.start()
            QToolTip.hideText()
        elif side == "key" and self.row is not None and row < self.row.shape[1]:
            QToolTip.showText(QCursor.pos(), self.describe_key(row), self.canvas)
        else:
            QToolTip.hideText()

    def _apply_hover(self) -> None:
        row, self._pending_hover = self._pending_hover, -1
        self.select_query_row(row)

    def select_query_row(self, row: int) -> None:
        """Make the left column's `row` the query (the state's query, or its source query for the encoder
        of an encoder-decoder)."""
        if row < 0:
            return
        if self.state.uses_source_rows():
            self.state.select(source_query=row)
        else:
            self.state.select(query=row)

    def describe_key(self, key: int) -> str:
        keys = self.canvas.keys.tokens
        parts = [f"head {h}: {float(self.row[h, key]):.3f}" for h in self.visible_heads]
        return f"{self.query_row} → {key} “{keys[key]}”\n" + "\n".join(parts)
