"""The "Inside this head" dock: why a head attends where it does, which heads wrote the prediction, and
what the embeddings and positions look like. Three tabs, each computed in the worker (engine.explain,
through gui/core/explain_jobs.py) only while it is on screen; answers to older requests are dropped.

- Inside this head: for the selected query, layer and head, one row per key and one column per step of
  the chain: q·k → × scale → (soft-cap) → (+ relative bias) → mask → softmax = the pattern α, then the
  values: ‖v W_O‖ and α·‖v W_O‖ (Kobayashi et al. 2020). What-if columns (no scale, no mask) are
  computed, labelled "what-if" and drawn as dashed outlines, never as the model's pattern. The query and
  the selected key are drawn as vectors (before and after the rotation when the layer uses RoPE).
- Which heads wrote it: direct logit attribution of the next token (or a candidate) to every head, MLP
  and the embeddings, as a layer × head table and a bar chart of the largest parts; a click selects a head.
- Embeddings & positions: the tokens nearest to the selected token's embedding, and the positional scheme.

Every table exports as CSV.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, QTimer
from PySide6.QtGui import QBrush, QColor, QFont, QPainterPath, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QGraphicsPathItem,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from engine import capture_name
from engine.export import atomic_write  # plain file I/O, as the other exports write

from ..core import explain_jobs
from ..core.arrivals import PENDING, PLACEHOLDER, Arrivals
from ..core.state import InspectorState
from ..core.worker import EngineClient
from ..rendering.labels import kind_name
from ..widgets import file_dialogs
from ..widgets.flow_layout import FlowLayout
from ..widgets.refreshing import RefreshWhenShown
from ..widgets.token_axis import TokenAxis, short

log = logging.getLogger(__name__)

VECTOR_MIN_HEIGHT = 150  # the q and k plots: below this their bars and ticks could not be read
PATTERN_COLOR = QColor(70, 120, 210)  # the model's own weights
WRITE_COLOR = QColor(235, 140, 40)  # what each key writes (α‖v W_O‖)
WHAT_IF_COLOR = QColor(200, 60, 160)  # what-ifs: dashed outlines, never filled like the pattern
POSITIVE, NEGATIVE = QColor(215, 70, 60), QColor(60, 110, 215)
MAX_KEYS = 64  # keys shown (the table and the bars); longer contexts show the keys with the largest weights
TOP_PARTS = 12  # bars in the attribution chart
CANDIDATES = 8  # tokens offered for attribution


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """One table as CSV (UTF-8, numbers with 6 significant digits), written atomically."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(list(header))
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, (float, np.floating)) else v for v in row])
    data = text.getvalue().encode("utf-8")
    return str(atomic_write(path, lambda f: f.write(data)))


def _shade(value: float, top: float, signed: bool) -> QColor:
    """A cell background: its strength ∝ |value| / top; red for +, blue for − when signed."""
    if not np.isfinite(value) or top <= 0:
        return QColor(0, 0, 0, 0)
    a = int(20 + 170 * min(abs(value) / top, 1.0))
    base = (POSITIVE if value >= 0 else NEGATIVE) if signed else PATTERN_COLOR
    return QColor(base.red(), base.green(), base.blue(), a)


def _fmt(v: float) -> str:
    if v == -np.inf:
        return "−∞"
    if not np.isfinite(v):
        return str(v)
    return f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


class _Request:
    """One kind of request: at most one in flight, the newest id wanted, the key asked for or on screen."""

    def __init__(self, op: str) -> None:
        self.op, self.latest, self.in_flight, self.wanted, self.count = op, 0, 0, None, 0


def _table(columns: int = 0) -> QTableWidget:
    table = QTableWidget(0, columns)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.verticalHeader().setDefaultSectionSize(22)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    return table


def _item(text: str, tip: str = "", bg: QColor | None = None, italic: bool = False) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    if tip:
        item.setToolTip(tip)
    if bg is not None:
        item.setBackground(bg)
    if italic:
        font = QFont(item.font())
        font.setItalic(True)
        item.setFont(font)
    return item


def _plot(left: str = "", bottom_axis: pg.AxisItem | None = None) -> pg.PlotWidget:
    plot = pg.PlotWidget(axisItems={"bottom": bottom_axis} if bottom_axis is not None else None)
    plot.setMenuEnabled(False)
    plot.hideButtons()
    plot.setMouseEnabled(x=False, y=False)
    if left:
        plot.setLabel("left", left)
    for side in ("left", "bottom"):
        plot.getAxis(side).enableAutoSIPrefix(False)  # "weight (x0.001)" reads as another quantity
    return plot


def _caption(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setObjectName("caption")
    label.setWordWrap(True)
    return label


# -- Inside this head ---------------------------------------------------------------------------------
class InsideTab(QWidget):
    """One query row of one head, step by step."""

    def __init__(self, state: InspectorState) -> None:
        super().__init__()
        self.state = state
        self.inside = None  # engine.explain.InsideHead on screen
        self.arrivals = Arrivals(self)  # the sink share, when not here yet
        self.trace = None
        self.keys: np.ndarray = np.zeros(0, dtype=np.int64)  # key positions in the rows shown
        self.columns: list[str] = []  # column titles of the table
        self.column_values: dict[str, np.ndarray] = {}  # title -> values over all keys
        self.selected_key: int | None = None

        self.heading = QLabel("Open a model")
        self.heading.setWordWrap(True)
        self.chain = _caption()
        self.no_scale = QCheckBox("what-if: without the scale (1/√d_k)")
        self.no_scale.setToolTip("Computed for you, not what the model does: softmax of q·k without the scale "
                                 "(bias and mask kept). Shown as a dashed outline and an italic column.")
        self.no_mask = QCheckBox("what-if: without the mask")
        self.no_mask.setToolTip("Computed for you, not what the model does: softmax over every key, the "
                                "blocked ones included. Shown as a dashed outline and an italic column.")
        self.order = QComboBox()
        self.order.addItems(["keys by position", f"top {MAX_KEYS // 4} keys by weight"])
        self.export_button = QPushButton("Export CSV…")
        # the controls wrap onto a second line in a narrow dock (a 1366-px screen) instead of widening it
        controls = QWidget()
        flow = FlowLayout(controls, spacing=6)
        flow.setContentsMargins(0, 0, 0, 0)
        for w in (self.no_scale, self.no_mask, self.order, self.export_button):
            flow.addWidget(w)

        self.plot = _plot("weight")
        self.axis = self.plot.getAxis("bottom")
        self.legend = _caption()  # a legend above the plot, not over the bars
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.pattern_bars = pg.BarGraphItem(x=[], height=[], width=0.4, brush=PATTERN_COLOR, pen=pg.mkPen(None))
        self.write_bars = pg.BarGraphItem(x=[], height=[], width=0.4, brush=WRITE_COLOR, pen=pg.mkPen(None))
        # what-ifs: outlines with hollow symbols (dashed: no scale, dotted: no mask), never filled bars
        self.what_if_curve = pg.PlotDataItem([], [], pen=pg.mkPen(WHAT_IF_COLOR, width=2, style=Qt.PenStyle.DashLine),
                                             symbol="o", symbolBrush=None, symbolPen=pg.mkPen(WHAT_IF_COLOR), symbolSize=7)
        self.what_if_mask_curve = pg.PlotDataItem([], [], pen=pg.mkPen(WHAT_IF_COLOR, width=2, style=Qt.PenStyle.DotLine),
                                                  symbol="t", symbolBrush=None, symbolPen=pg.mkPen(WHAT_IF_COLOR),
                                                  symbolSize=7)
        for item in (self.pattern_bars, self.write_bars, self.what_if_curve, self.what_if_mask_curve):
            self.plot.addItem(item)

        self.table = _table()
        self.q_plot, self.k_plot = _plot("q"), _plot("k")
        self.q_plot.setLabel("bottom", "dimension")
        self.k_plot.setLabel("bottom", "dimension")
        for plot in (self.q_plot, self.k_plot):  # readable bars (issue 30); a short dock scrolls to them instead
            plot.setMinimumHeight(VECTOR_MIN_HEIGHT)
        self.q_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=PATTERN_COLOR, pen=pg.mkPen(None))
        self.k_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=WRITE_COLOR, pen=pg.mkPen(None))
        grey = pg.mkPen((150, 150, 150), width=1.5)
        self.q_before = pg.PlotDataItem([], [], pen=grey, stepMode=None)
        self.k_before = pg.PlotDataItem([], [], pen=grey, stepMode=None)
        self.q_plot.addItem(self.q_bars)
        self.q_plot.addItem(self.q_before)
        self.k_plot.addItem(self.k_bars)
        self.k_plot.addItem(self.k_before)
        self.q_title, self.k_title = _caption(), _caption()
        self.caption = _caption()

        vectors = QWidget()  # q and the selected key, side by side under the bars
        vl = QHBoxLayout(vectors)
        vl.setContentsMargins(0, 0, 0, 0)
        for title, plot in ((self.q_title, self.q_plot), (self.k_title, self.k_plot)):
            column = QVBoxLayout()
            column.addWidget(title)
            column.addWidget(plot, 1)
            vl.addLayout(column, 1)
        right = QSplitter(Qt.Orientation.Vertical)
        bars = QWidget()
        bl = QVBoxLayout(bars)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(self.legend)
        bl.addWidget(self.plot, 1)
        right.addWidget(bars)
        right.addWidget(vectors)
        right.setSizes([270, 200])
        body = self.body = QSplitter(Qt.Orientation.Horizontal)
        body.addWidget(self.table)
        body.addWidget(right)
        body.setSizes([760, 760])
        self.table.verticalHeader().hide()  # the key column says the position
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(self.heading)
        layout.addWidget(self.chain)
        layout.addWidget(controls)
        layout.addWidget(body, 1)
        layout.addWidget(self.caption)

        self.no_scale.toggled.connect(lambda _on: self.redraw())
        self.no_mask.toggled.connect(lambda _on: self.redraw())
        self.order.currentIndexChanged.connect(lambda _i: self.redraw())
        self.table.currentCellChanged.connect(self._on_row)

    # what to ask for
    def key(self) -> tuple | None:
        s, trace = self.state, self.state.trace
        if trace is None or s.model is None or s.kind not in trace.kinds:
            return None
        n = len(s.query_tokens(trace))
        return (id(trace), s.kind, s.layer, s.head, min(s.row_query, n - 1))

    def job(self, key: tuple) -> Callable:
        _tid, kind, layer, head, query = key
        return explain_jobs.inside_head(self.state.trace, kind, layer, head, query)

    def show_message(self, text: str) -> None:
        self.inside = None
        self.heading.setText(text)
        self.chain.setText(self.sink_text())  # the softmax's sink share comes from the trace: shown even so
        self.caption.setText("")
        self.table.setRowCount(0)
        self.pattern_bars.setOpts(x=[], height=[])
        self.write_bars.setOpts(x=[], height=[])
        self.what_if_curve.setData([], [])

    def _sink_landed(self) -> None:
        if self.inside is not None:
            self.redraw()
        else:
            self.chain.setText(self.sink_text())

    def sink_text(self) -> str:
        """Models with attention sinks (gpt-oss): the softmax's denominator has one more term with no value, so the
        selected row's weights sum to less than one; what the sink took of it. Empty for every other model."""
        s, trace = self.state, self.state.trace
        if trace is None or not hasattr(trace, "sink_share") or s.kind not in getattr(trace, "kinds", ()):
            return ""
        kind, layer = s.kind, s.layer
        try:  # not here yet: fetched in the background, the text redone on arrival
            share = self.arrivals.read(trace, ("sink", kind, layer), lambda t: t.sink_share(kind, layer),
                                       self._sink_landed)
        except Exception:  # noqa: BLE001 - engine.CaptureError: a layer without attention or not captured
            return ""
        if share is PENDING:
            return f" Sink share {PLACEHOLDER}"
        if share is None or not 0 <= s.head < share.shape[0] or not 0 <= s.row_query < share.shape[1]:
            return ""
        w = float(share[s.head, s.row_query])
        return (f" Softmax with a sink: the sink took {w:.1%} of query {s.row_query}'s attention (a key with a zero "
                f"value: it writes nothing), the keys share the other {1 - w:.1%}.")

    # what came back
    def show_result(self, payload: dict) -> None:
        if "error" in payload:
            self.show_message(payload["error"])
            return
        self.trace, self.inside = payload["trace"], payload["inside"]
        ih = self.inside
        self.selected_key = int(np.argmax(ih.pattern))
        self.redraw()

    def what_if(self) -> list[tuple[str, np.ndarray]]:
        ih, out = self.inside, []
        if ih is None:
            return out
        if self.no_scale.isChecked():
            out.append(("what-if: no scale", ih.what_if_unscaled))
        if self.no_mask.isChecked():
            out.append(("what-if: no mask", ih.what_if_unmasked))
        return out

    def _key_tokens(self) -> tuple[str, ...]:
        trace, ih = self.trace, self.inside
        if ih.kind == "cross" or (ih.kind == "encoder" and trace.family == "encoder-decoder"):
            return trace.source_tokens
        return trace.tokens

    def _query_token(self) -> str:
        trace, ih = self.trace, self.inside
        tokens = trace.source_tokens if ih.kind == "encoder" and trace.family == "encoder-decoder" else trace.tokens
        return tokens[ih.query]

    def shown_keys(self) -> np.ndarray:
        """The key positions of the rows: all (by position) up to MAX_KEYS, else those with the largest weights."""
        ih = self.inside
        S = ih.pattern.shape[0]
        by_weight = self.order.currentIndex() == 1
        limit = MAX_KEYS // 4 if by_weight else MAX_KEYS
        if S <= limit and not by_weight:
            return np.arange(S)
        top = np.argsort(-ih.pattern, kind="stable")[:limit]
        return top if by_weight else np.sort(top)

    def redraw(self) -> None:
        ih = self.inside
        if ih is None:
            return
        trace = self.trace
        keys_tok = self._key_tokens()
        S = ih.pattern.shape[0]
        hs = ih.q.shape[0]
        family = trace.family
        where = kind_name(ih.kind, family)
        gqa = f" · reads key/value head {ih.kv_head}" if trace.kv_group > 1 else ""
        side = " (queries from the decoder, keys and values from the encoder)" if ih.kind == "cross" else ""
        self.heading.setText(f"<b>{where}{side}</b> · layer {ih.layer} · head {ih.head}{gqa} · query {ih.query} "
                             f"“{self._query_token()}” over {S} keys")
        # the chain, as this layer computes it
        inv_sqrt = 1 / np.sqrt(hs)
        scale_text = f"× {ih.scale:.4g}" + (f" (= 1/√{hs})" if abs(ih.scale - inv_sqrt) < 1e-6 else "")
        steps = ["q·k", scale_text]
        if ih.softcap is not None:
            steps.append(f"soft-cap {ih.softcap:g}·tanh(x/{ih.softcap:g})")
        if ih.bias is not None:
            steps.append("+ relative position bias")
        steps += [f"mask: {ih.blocked_why} → −∞", "softmax = the pattern α", "values: α·‖v W_O‖"]
        rope = f" q and k are rotated (RoPE, {ih.rotary_dims} of {hs} dims) before q·k." if ih.rotary_dims else ""
        note = f" ({ih.note}.)" if getattr(ih, "note", "") else ""  # what this backend could not show
        self.chain.setText(" → ".join(steps) + "." + rope + self.sink_text() + note)

        # columns: every stage the model has, then the what-ifs, then the values
        cols: list[tuple[str, np.ndarray, str, bool, bool]] = [  # title, values, tooltip, signed, what-if
            ("q·k", ih.raw, "the raw score: dot product of the query with this key", True, False),
            (f"×{ih.scale:.3g}", ih.scaled, "q·k times the layer's scale", True, False)]
        if ih.capped is not None:
            cols.append(("soft-capped", ih.capped, f"{ih.softcap:g}·tanh(scaled / {ih.softcap:g})", True, False))
        if ih.bias is not None:
            cols.append(("+bias", ih.bias, "relative position bias added for this key's offset", True, False))
        if ih.capped is not None or ih.bias is not None:  # else the scaled column and the mask say it all
            cols.append(("score", ih.scores, "what enters the softmax; −∞ where the mask blocks the key", True, False))
        cols.append(("α (pattern)", ih.pattern, "softmax of the scores: the model's own attention weight", False, False))
        for title, values in self.what_if():
            cols.append((title, values, "a what-if, computed for you — not what the model does", False, True))
        cols.append(("‖v W_O‖", ih.value_norms, "how much this key would write at full weight", False, False))
        cols.append(("α‖v W_O‖", ih.weighted_norms, "what this key actually writes (Kobayashi et al. 2020)", False, False))
        self.columns = ["key", "mask"] + [c[0] for c in cols]
        self.column_values = {c[0]: c[1] for c in cols}

        keys = self.keys = self.shown_keys()
        self.table.blockSignals(True)
        self.table.clear()
        self.table.setColumnCount(len(self.columns))
        self.table.setRowCount(len(keys))
        self.table.setHorizontalHeaderLabels(self.columns)
        for c, (_title, _v, tip, _s, what_if) in enumerate(cols, start=2):
            head = self.table.horizontalHeaderItem(c)
            head.setToolTip(tip)
            if what_if:
                font = QFont(head.font())
                font.setItalic(True)
                head.setFont(font)
                head.setForeground(WHAT_IF_COLOR)
        why = "future" if "future" in ih.blocked_why else "outside the window"
        for r, j in enumerate(keys):
            j = int(j)
            name = QTableWidgetItem(f"{j} {short(keys_tok[j], 10)}")
            name.setToolTip(f"key {j}: “{keys_tok[j]}”")
            self.table.setItem(r, 0, name)
            blocked = bool(ih.blocked[j])
            if blocked:
                reason = "future" if j > ih.query and "future" in ih.blocked_why else why
            mask = _item(f"−∞ ({reason})" if blocked else "sees it",
                         ih.blocked_why if blocked else "this query may see this key")
            if blocked:
                mask.setForeground(QColor(150, 150, 150))
            self.table.setItem(r, 1, mask)
            for c, (title, values, tip, signed, what_if) in enumerate(cols, start=2):
                v = float(values[j])
                finite = values[np.isfinite(values)]
                top = float(np.max(np.abs(finite))) if finite.size else 0.0
                self.table.setItem(r, c, _item(_fmt(v), f"{title}: {v:.6g} — {tip}", _shade(v, top, signed), what_if))
        self.table.blockSignals(False)
        QTimer.singleShot(0, self._fit_table)  # once the header has measured the new columns
        if self.selected_key is not None and self.selected_key in set(keys.tolist()):
            row = int(np.nonzero(keys == self.selected_key)[0][0])
            self.table.selectRow(row)
            self.table.scrollToItem(self.table.item(row, 0), QAbstractItemView.ScrollHint.PositionAtCenter)

        # bars over the keys shown: the pattern, what each key writes, the what-if outline
        x = np.arange(len(keys), dtype=float)
        alpha = ih.pattern[keys]
        written = self.written()[keys]
        self.pattern_bars.setOpts(x=x - 0.2, height=alpha, width=0.4)
        self.write_bars.setOpts(x=x + 0.2, height=written, width=0.4)
        wi = self.what_if()
        entries = [(PATTERN_COLOR, "■", "α: the pattern (the model's)"), (WRITE_COLOR, "■", "α‖v W_O‖, scaled: what it writes")]
        for title, curve, mark in (("what-if: no scale", self.what_if_curve, "╌○"),
                                   ("what-if: no mask", self.what_if_mask_curve, "┈△")):
            values = dict(wi).get(title)
            curve.setData(x if values is not None else [], values[keys] if values is not None else [])
            if values is not None:
                entries.append((WHAT_IF_COLOR, mark, f"<i>{title} (not the model)</i>"))
        self.legend.setText("&nbsp;&nbsp;".join(f'<span style="color:{c.name()}">{m}</span> {t}' for c, m, t in entries))
        width = self.plot.getViewBox().width() or 400.0
        every = max(1, int(np.ceil(len(keys) * 60 / width)))  # horizontal labels, thinned, never rotated
        self.axis.setTicks([[(float(r), short(keys_tok[int(j)], 8)) for r, j in enumerate(keys) if r % every == 0]])
        top = max([float(alpha.max(initial=0)), float(written.max(initial=0))]
                  + [float(v[keys].max(initial=0)) for _t, v in wi])
        self.plot.setXRange(-0.6, max(len(keys) - 0.4, 0.4), padding=0)
        self.plot.setYRange(0, max(top * 1.25, 0.05), padding=0)
        shown = "" if len(keys) == S else f" · {len(keys)} of {S} keys shown (largest weights)"
        self.caption.setText(f"{self.verdict()} Blue: where it looks (α). Orange: what it writes, α‖v W_O‖ ÷ the "
                             f"largest ‖v W_O‖ of the keys it may see: a key with a high α but a small value moves "
                             f"little.{shown} Click a row to draw that key's vector.")
        self._draw_vectors()

    def _fit_table(self) -> None:
        """Give the table the width its columns need (the plots take the rest), as far as the dock allows."""
        need = sum(self.table.columnWidth(c) for c in range(self.table.columnCount())) + 2 * self.table.frameWidth() + 6
        need += self.table.verticalScrollBar().sizeHint().width()
        sizes, total = self.body.sizes(), sum(self.body.sizes())
        if total > 0 and sizes[0] < need:
            left = min(need, int(total * 0.6))
            self.body.setSizes([left, total - left])

    def written(self) -> np.ndarray:
        """α_j‖v_j W_O‖ over the largest ‖v W_O‖ among the visible keys: 1 = the most one key could write."""
        ih = self.inside
        visible = ih.value_norms[~ih.blocked]
        most = float(visible.max(initial=0)) if visible.size else 0.0
        return ih.weighted_norms / most if most > 0 else np.zeros_like(ih.weighted_norms)

    def verdict(self) -> str:
        """One sentence on the head's write here; says so when its weight sits on keys with small values."""
        ih = self.inside
        keys_tok = self._key_tokens()
        j = int(np.argmax(ih.pattern))
        visible = ih.value_norms[~ih.blocked]
        median = float(np.median(visible)) if visible.size else 0.0
        text = f"This head writes ‖Σ α·v W_O‖ = {ih.output_norm:.3g} into the residual stream here."
        if ih.pattern[j] >= 0.3 and median > 0 and ih.value_norms[j] < 0.35 * median:
            text += (f" Its weight sits on “{keys_tok[j]}” (α = {ih.pattern[j]:.2f}), whose value is small "
                     f"(‖v W_O‖ = {ih.value_norms[j]:.3g}, median {median:.3g}): it looks hard there but writes little.")
        return text

    def _on_row(self, row: int, _col: int, _prev_row: int, _prev_col: int) -> None:
        if self.inside is not None and 0 <= row < len(self.keys):
            self.selected_key = int(self.keys[row])
            self._draw_vectors()

    def _draw_vectors(self) -> None:
        ih = self.inside
        if ih is None:
            return
        j = self.selected_key if self.selected_key is not None else 0
        x = np.arange(ih.q.shape[0], dtype=float)
        self.q_bars.setOpts(x=x, height=ih.q, width=0.8)
        self.k_bars.setOpts(x=x, height=ih.k[j], width=0.8)
        rotated = ih.rotary_dims is not None and ih.q_before_rotation is not None  # None: the backend cannot tell
        self.q_before.setData(x if rotated else [], ih.q_before_rotation if rotated else [])
        self.k_before.setData(x if rotated else [], ih.k_before_rotation[j] if rotated else [])
        keys_tok = self._key_tokens()
        extra = " (bars: after rotation, grey line: before)" if rotated else ""
        self.q_title.setText(f"q: query {ih.query} “{short(self._query_token())}”{extra}")
        self.k_title.setText(f"k: key {j} “{short(keys_tok[j])}” (q·k {float(ih.raw[j]):.2f}, α {float(ih.pattern[j]):.3f})")

    def export(self, path: str) -> str:
        ih = self.inside
        if ih is None:
            raise OSError("nothing to export yet")
        keys_tok = self._key_tokens()
        header = ["key", "token", "blocked"] + [c for c in self.columns[2:]]
        rows = [[j, keys_tok[j], bool(ih.blocked[j])] + [float(self.column_values[c][j]) for c in self.columns[2:]]
                for j in range(ih.pattern.shape[0])]
        return write_csv(path, header, rows)


# -- Direct logit attribution ---------------------------------------------------------------------------
class AttributionTab(QWidget):
    """Which heads, MLPs and embeddings wrote one token's logit at the selected position."""

    def __init__(self, state: InspectorState) -> None:
        super().__init__()
        self.state = state
        self.attribution = None  # engine.explain.Attribution on screen
        self.trace = None
        self.cells: dict[tuple[int, int], tuple[str, int, int]] = {}  # (row, col) -> (kind, layer, head)
        self.bar_parts: list[tuple[str, float]] = []
        self._combo_key: tuple | None = None

        self.heading = QLabel("Open a model")
        self.heading.setWordWrap(True)
        self.token_combo = QComboBox()
        self.token_combo.setToolTip("The token whose logit is explained")
        self.token_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.token_combo.setMinimumContentsLength(18)
        self.color_combo = QComboBox()
        self.color_combo.addItems(["colour: attribution", "colour: ‖head output‖ (any token)"])
        self.sort_combo = QComboBox()
        self.sort_combo.addItems(["bars: largest |part|", "bars: most positive", "bars: most negative"])
        self.grid_marks = QCheckBox("mark on the head grid")
        self.grid_marks.setToolTip("A square in each head-grid cell: red = wrote toward the token, blue = against")
        self.export_button = QPushButton("Export CSV…")
        controls = QWidget()  # wraps in a narrow dock, as the Inside tab's
        flow = FlowLayout(controls, spacing=6)
        flow.setContentsMargins(0, 0, 0, 0)
        for w in (QLabel("token:"), self.token_combo, self.color_combo, self.sort_combo, self.grid_marks,
                  self.export_button):
            flow.addWidget(w)
        self.table = _table()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectItems)
        self.table.setToolTip("Click a head to show it in the attention view")
        self.axis = TokenAxis("left")
        self.axis.setStyle(tickLength=0)
        self.bars_plot = pg.PlotWidget(axisItems={"left": self.axis})
        self.bars_plot.setMenuEnabled(False)
        self.bars_plot.hideButtons()
        self.bars_plot.setMouseEnabled(x=False, y=False)
        self.bars_plot.invertY(True)
        self.bars_plot.setLabel("bottom", "contribution to the logit")
        self.bars = pg.BarGraphItem(x0=[], y=[], height=0.7, width=[], brushes=[], pen=pg.mkPen(None))
        self.bars_plot.addItem(self.bars)
        self.bars_plot.addItem(pg.InfiniteLine(pos=0, angle=90, pen=pg.mkPen((150, 150, 150))))
        self.message = _caption()
        self.caption = _caption()
        body = QSplitter(Qt.Orientation.Horizontal)
        body.addWidget(self.table)
        body.addWidget(self.bars_plot)
        body.setSizes([600, 420])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(self.heading)
        layout.addWidget(controls)
        layout.addWidget(self.message)
        layout.addWidget(body, 1)
        layout.addWidget(self.caption)
        self.color_combo.currentIndexChanged.connect(lambda _i: self.redraw())
        self.sort_combo.currentIndexChanged.connect(lambda _i: self.redraw())
        self.table.cellClicked.connect(self.click_cell)
        self.bars_plot.scene().sigMouseClicked.connect(self._on_bar_clicked)

    def position(self) -> int:
        trace = self.state.trace
        return min(self.state.query, len(trace) - 1)

    def _fill_tokens(self) -> None:
        """Offer the token that follows (if any) and the top candidates, for this trace and position."""
        trace, pos = self.state.trace, self.position()
        key = (id(trace), pos)
        if key == self._combo_key:
            return
        self._combo_key = key
        vocab = self.state.model.vocab
        self.token_combo.blockSignals(True)
        self.token_combo.clear()
        logits = trace.logits_at(pos) if trace.logit_rows is not None else None
        seen = set()
        if pos + 1 < len(trace):
            t = trace.token_ids[pos + 1]
            self.token_combo.addItem(f"“{vocab[t]}” (the next token)", t)
            seen.add(t)
        if logits is not None:
            for t in np.argsort(-logits, kind="stable")[:CANDIDATES]:
                t = int(t)
                if t not in seen:
                    self.token_combo.addItem(f"“{vocab[t]}” (logit {float(logits[t]):.2f})", t)
        self.token_combo.blockSignals(False)

    def key(self) -> tuple | None:
        s, trace = self.state, self.state.trace
        if trace is None or s.model is None:
            return None
        if trace.family == "encoder":
            return (id(trace), self.position(), None)
        self._fill_tokens()
        token = self.token_combo.currentData()
        return (id(trace), self.position(), None if token is None else int(token))

    def job(self, key: tuple) -> Callable:
        return explain_jobs.attribution(self.state.trace, key[1], key[2])

    def show_message(self, text: str) -> None:
        self.attribution = None
        self.heading.setText("Direct logit attribution")
        self.message.setText(text)
        self.caption.setText("")
        self.table.hide()
        self.bars_plot.hide()

    def show_result(self, payload: dict) -> None:
        if "error" in payload:
            self.show_message(payload["error"])
            return
        self.trace, self.attribution = payload["trace"], payload["attribution"]
        self.message.setText("")
        self.table.show()
        self.bars_plot.show()
        self.redraw()

    def grid_values(self, kind: str) -> np.ndarray | None:
        """(layers, heads) to mark on the head grid for `kind` (attribution, or write norms)."""
        a = self.attribution
        if a is None:
            return None
        if self.color_combo.currentIndex() == 1:
            return a.head_write_norms if kind == "self" else None
        return a.heads if kind == "self" else a.cross_heads if kind == "cross" else None

    def redraw(self) -> None:
        a = self.attribution
        if a is None:
            return
        trace = self.trace
        n_layers, n_heads = a.heads.shape
        cross = a.cross_heads is not None
        by_norm = self.color_combo.currentIndex() == 1
        headers = [f"H{h}" for h in range(n_heads)] + ([f"X{h}" for h in range(n_heads)] if cross else []) + ["MLP"]
        self.table.clear()
        self.table.clearSpans()
        self.table.setRowCount(n_layers)
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setVerticalHeaderLabels([f"L{n}" for n in range(n_layers)])
        # heads are shaded on their own scale (MLPs often write far more, and would wash them out)
        top = float(max(np.abs(a.heads).max(initial=0), np.abs(a.cross_heads).max(initial=0) if cross else 0))
        mlp_top = float(max(np.abs(a.mlps).max(initial=0), top))
        norm_top = float(a.head_write_norms.max(initial=0))
        self.cells = {}
        gates = getattr(trace, "gates", None) or {}
        no_attention = getattr(trace, "no_attention", None) or {}
        part_values = dict(a.parts)
        for n in range(n_layers):
            other = no_attention.get(capture_name("self", n))
            if other is not None:  # a hybrid's layer without attention: its mixer's whole write, across the heads
                v = float(part_values.get(f"L{n}.{other}", 0.0))
                self.table.setSpan(n, 0, 1, n_heads)
                self.table.setItem(n, 0, _item(f"{other}: {v:+.3f}", f"layer {n} has no attention (a {other} "
                                               f"layer); what it wrote: {v:+.4f} toward “{a.token}”",
                                               None if by_norm else _shade(v, top, True)))
            for h in range(n_heads if other is None else 0):
                v, wn = float(a.heads[n, h]), float(a.head_write_norms[n, h])
                bg = _shade(wn, norm_top, False) if by_norm else _shade(v, top, True)
                mark, note = gate_mark(gates, "self", n, h)
                self.table.setItem(n, h, _item(f"{v:+.3f}{mark}", f"layer {n} head {h}: {v:+.4f} toward “{a.token}”; "
                                                                  f"‖head output‖ = {wn:.3f}.{note} Click to show this head.",
                                               bg, italic=bool(mark)))
                self.cells[(n, h)] = ("self", n, h)
                if cross:
                    c = float(a.cross_heads[n, h])
                    mark, note = gate_mark(gates, "cross", n, h)
                    self.table.setItem(n, n_heads + h, _item(f"{c:+.3f}{mark}", f"layer {n} cross-attention head {h}: "
                                                                                f"{c:+.4f}.{note} Click to show this head.",
                                                             None if by_norm else _shade(c, top, True), italic=bool(mark)))
                    self.cells[(n, n_heads + h)] = ("cross", n, h)
            m = float(a.mlps[n])
            self.table.setItem(n, len(headers) - 1, _item(f"{m:+.3f}", f"layer {n} MLP: {m:+.4f}",
                                                          None if by_norm else _shade(m, mlp_top, True)))
        # bars: the largest parts, sorted as asked
        parts = list(a.parts)
        mode = self.sort_combo.currentIndex()
        if mode == 0:
            parts.sort(key=lambda p: -abs(p[1]))
        elif mode == 1:
            parts.sort(key=lambda p: -p[1])
        else:
            parts.sort(key=lambda p: p[1])
        self.bar_parts = parts[:TOP_PARTS]
        values = np.array([v for _n, v in self.bar_parts], dtype=float)
        x0 = np.minimum(values, 0)
        self.bars.setOpts(x0=x0, y=np.arange(len(values)), width=np.abs(values), height=0.7,
                          brushes=[pg.mkBrush(POSITIVE if v >= 0 else NEGATIVE) for v in values])
        self.axis.set_tokens([n for n, _v in self.bar_parts])
        lim = float(np.abs(values).max(initial=0.1)) * 1.1
        self.bars_plot.setXRange(min(float(values.min(initial=0)) * 1.1, 0), max(float(values.max(initial=0)) * 1.1, 0)
                                 or lim, padding=0.02)
        self.bars_plot.setYRange(-0.6, len(values) - 0.4, padding=0)
        pos = a.position
        side = "decoder " if trace.family == "encoder-decoder" else ""
        self.heading.setText(f"<b>Which parts wrote “{a.token}”</b> (id {a.token_id}) at {side}position {pos} "
                             f"(after “{trace.tokens[pos]}”): logit {a.logit:.3f}")
        other = {n: v for n, v in a.parts if not (n.startswith("L") and n[1:].split(".")[0].isdigit())}
        rest = " · ".join(f"{n} {v:+.3f}" for n, v in other.items())
        ablated = " ✕ = ablated head (its output ×0), ×g = scaled." if gates else ""
        self.caption.setText(f"{rest} · every part summed: {a.total:.3f} = the logit {a.logit:.3f}. "
                             f"Linearised: {a.note}. Rows: layers; H = self-attention heads"
                             + (", X = cross-attention heads" if cross else "") + f". Click a head to show it.{ablated}")

    def click_cell(self, row: int, col: int) -> None:
        target = self.cells.get((row, col))
        if target is not None:
            kind, layer, head = target
            self.state.select(kind=kind, layer=layer, head=head, mean_heads=False)

    def _on_bar_clicked(self, event) -> None:  # noqa: ANN001 - pyqtgraph MouseClickEvent
        if not self.bar_parts or not self.bars_plot.getPlotItem().sceneBoundingRect().contains(event.scenePos()):
            return
        j = int(round(self.bars_plot.getViewBox().mapSceneToView(event.scenePos()).y()))
        if 0 <= j < len(self.bar_parts):
            self.select_part(self.bar_parts[j][0])

    def select_part(self, name: str) -> None:
        """"L2.H3" selects that self-attention head, "L1.X0" that cross-attention head; other parts do nothing."""
        if not name.startswith("L") or "." not in name:
            return
        layer, rest = name[1:].split(".", 1)
        if rest[:1] in ("H", "X") and rest[1:].isdigit() and layer.isdigit():
            self.state.select(kind="self" if rest[0] == "H" else "cross", layer=int(layer), head=int(rest[1:]),
                              mean_heads=False)

    def export(self, path: str) -> str:
        a = self.attribution
        if a is None:
            raise OSError("nothing to export yet")
        norms = {f"L{n}.H{h}": float(a.head_write_norms[n, h]) for n in range(a.heads.shape[0])
                 for h in range(a.heads.shape[1])}
        rows = [[name, v, norms.get(name, "")] for name, v in a.parts]
        rows.append(["(sum of parts)", a.total, ""])
        rows.append([f"(logit of “{a.token}” at position {a.position})", a.logit, ""])
        return write_csv(path, ["part", "contribution", "head output norm"], rows)


def gate_mark(gates: dict, kind: str, layer: int, head: int) -> tuple[str, str]:
    """(" ✕" or " ×g", a tooltip sentence) for an ablated or scaled head in a Trace.gates dict; ("", "") if untouched."""
    values = gates.get(capture_name(kind, layer))
    g = float(values[head]) if values is not None and head < len(values) else 1.0
    if g == 1:
        return "", ""
    if g == 0:
        return " ✕", " Ablated: its output is multiplied by 0."
    return f" ×{g:g}", f" Scaled: its output is multiplied by {g:g}."


class HeadGridMarks:
    """Squares over the head grid's cells (gui/panels/heads.py's add_overlay / cell_rect): area ∝ |value|,
    red toward the token, blue against (or grey: write norms)."""

    def __init__(self, grid: QWidget, values: Callable[[str], np.ndarray | None], state: InspectorState) -> None:
        self.grid, self.values, self.state = grid, values, state
        self.enabled = False
        self.items = {}
        for sign, color in (("+", POSITIVE), ("-", NEGATIVE)):
            item = QGraphicsPathItem()
            item.setBrush(QBrush(QColor(color.red(), color.green(), color.blue(), 200)))
            pen = QPen(QColor(255, 255, 255, 200))
            pen.setCosmetic(True)
            item.setPen(pen)
            item.setZValue(9)
            grid.add_overlay(item)
            self.items[sign] = item
        grid.geometry_changed.connect(self.update)
        state.kind_changed.connect(lambda _k: self.update())

    def set_enabled(self, on: bool) -> None:
        self.enabled = bool(on)
        self.update()

    def update(self) -> None:
        paths = {"+": QPainterPath(), "-": QPainterPath()}
        values = self.values(self.state.kind) if self.enabled else None
        shape = getattr(self.grid, "shape", (0, 0))
        if values is not None and tuple(values.shape) == tuple(shape):
            top = float(np.abs(values).max(initial=0))
            for (layer, head), v in np.ndenumerate(values):
                if top <= 0 or v == 0:
                    continue
                cell = self.grid.cell_rect(layer, head)
                side = cell.width() * 0.6 * float(np.sqrt(abs(v) / top))
                paths["+" if v > 0 else "-"].addRect(QRectF(cell.right() - side, cell.top(), side, side))
        for sign, item in self.items.items():
            item.setPath(paths[sign])


# -- Embeddings & positions -------------------------------------------------------------------------------
class EmbeddingsTab(QWidget):
    """The tokens nearest to the selected token's embedding; the positional scheme drawn."""

    def __init__(self, state: InspectorState) -> None:
        super().__init__()
        self.state = state
        self.nearest: list[tuple[int, str, float]] | None = None
        self.positions: dict | None = None
        self.token_id: int | None = None
        self.heading = QLabel("Open a model")
        self.heading.setWordWrap(True)
        self.metric = QComboBox()
        self.metric.addItems(["cosine", "dot"])
        self.metric.setToolTip("cosine: the angle between embeddings; dot: the angle and the lengths")
        self.count = QSpinBox()
        self.count.setRange(3, 50)
        self.count.setValue(12)
        self.count.setPrefix("nearest ")
        self.export_button = QPushButton("Export CSV…")
        controls = QHBoxLayout()
        controls.setContentsMargins(0, 0, 0, 0)
        for w in (self.metric, self.count):
            controls.addWidget(w)
        controls.addStretch(1)
        controls.addWidget(self.export_button)
        self.table = _table(3)
        self.table.setHorizontalHeaderLabels(["token", "id", "similarity"])
        self.pos_title = _caption()
        self.pos_plot = _plot()
        self.pos_image = pg.ImageItem(axisOrder="row-major")
        self.pos_plot.addItem(self.pos_image)
        self.pos_bar = pg.ColorBarItem(colorMap=pg.colormap.get("CET-D1"), interactive=False, width=12)
        self.pos_bar.setImageItem(self.pos_image, insert_in=self.pos_plot.getPlotItem())
        self.pos_curves: list[pg.PlotDataItem] = []
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.pos_title)
        rl.addWidget(self.pos_plot, 1)
        body = QSplitter(Qt.Orientation.Horizontal)
        body.addWidget(self.table)
        body.addWidget(right)
        body.setSizes([360, 640])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(self.heading)
        layout.addLayout(controls)
        layout.addWidget(body, 1)

    def _token(self) -> tuple[int, str]:
        s, trace = self.state, self.state.trace
        if s.uses_source_rows():  # encoder self-attention of an encoder-decoder: a source token
            q = min(s.source_query, len(trace.source_ids) - 1)
            return trace.source_ids[q], trace.source_tokens[q]
        q = min(s.query, len(trace) - 1)
        return trace.token_ids[q], trace.tokens[q]

    def key(self) -> tuple | None:
        s, trace = self.state, self.state.trace
        if trace is None or s.model is None:
            return None
        return (id(trace), self._token()[0], self.count.value(), self.metric.currentText())

    def job(self, key: tuple) -> Callable:
        return explain_jobs.embeddings(self.state.trace, key[1], key[2], key[3])

    def show_message(self, text: str) -> None:
        self.nearest = None
        self.heading.setText(text)
        self.table.setRowCount(0)

    def show_result(self, payload: dict) -> None:
        self.positions = payload.get("positions")
        self._draw_positions()
        if "error" in payload:
            self.show_message(payload["error"])
            return
        self.nearest, (tid, _c, metric) = payload["nearest"], payload["key"]
        self.token_id = tid
        vocab = self.state.model.vocab
        self.heading.setText(f"<b>Nearest tokens to “{vocab[tid]}”</b> (id {tid}) by {metric} similarity of the "
                             "input embeddings (the token's own row of the embedding matrix, before positions)")
        self.table.setRowCount(len(self.nearest))
        top = max((abs(s) for _i, _t, s in self.nearest), default=0.0)
        for r, (i, tok, score) in enumerate(self.nearest):
            self.table.setItem(r, 0, QTableWidgetItem(tok))
            self.table.setItem(r, 1, _item(str(i)))
            self.table.setItem(r, 2, _item(f"{score:.3f}", bg=_shade(score, top, False)))

    def _draw_positions(self) -> None:
        p = self.positions
        plot = self.pos_plot.getPlotItem()
        for curve in self.pos_curves:
            plot.removeItem(curve)
        self.pos_curves = []
        if p is None:
            return
        scheme, arr = p["scheme"], np.asarray(p["array"], dtype=np.float32)
        titles = {"learned": "Learned positions", "sinusoidal": "Sinusoidal positions (added to the embeddings)",
                  "relative": "Relative position bias (T5): added to q·k by key − query offset",
                  "rotary": "Rotary positions (RoPE): q and k rotate by position; nothing is added",
                  "none": "No positional information"}
        self.pos_title.setText(f"<b>{titles.get(scheme, scheme)}</b>: {p['what']}")
        if scheme == "rotary":
            self.pos_image.clear()
            self.pos_bar.hide()
            plot.setLogMode(x=False, y=True)
            plot.setLabel("bottom", "pair of dimensions")
            plot.setLabel("left", "radians per position")
            for r, row in enumerate(arr):
                label = p["labels"][r] if p["labels"] else ""
                curve = pg.PlotDataItem(np.arange(row.size), row, pen=pg.mkPen(pg.intColor(r), width=2), name=label)
                plot.addItem(curve)
                self.pos_curves.append(curve)
            plot.autoRange()
            return
        plot.setLogMode(x=False, y=False)
        if arr.size == 0:
            self.pos_image.clear()
            self.pos_bar.hide()
            return
        self.pos_bar.show()
        lim = float(np.abs(arr).max()) or 1.0
        self.pos_image.setImage(arr, autoLevels=False, levels=(-lim, lim))
        self.pos_bar.setLevels((-lim, lim))
        rows, cols = arr.shape
        x0 = float(p["labels"][0]) if scheme == "relative" and p["labels"] else 0.0
        self.pos_image.setRect(QRectF(x0 - 0.5, -0.5, cols, rows))
        plot.invertY(True)
        labels = {"learned": ("position", "position"), "sinusoidal": ("dimension", "position"),
                  "relative": ("key − query offset", "head")}.get(scheme, ("", ""))
        plot.setLabel("bottom", labels[0])
        plot.setLabel("left", labels[1])
        plot.autoRange()

    def export(self, path: str) -> str:
        if self.nearest is None:
            raise OSError("nothing to export yet")
        rows = [[r + 1, tok, i, score] for r, (i, tok, score) in enumerate(self.nearest)]
        return write_csv(path, ["rank", "token", "id", self.metric.currentText()], rows)


# -- the dock -------------------------------------------------------------------------------------------
class InsideHeadPanel(RefreshWhenShown):
    """The dock's widget: three tabs, the tab on screen asks the worker for what it draws."""

    TABS = ("inside", "attribution", "embeddings")

    def __init__(self, state: InspectorState, client: EngineClient, head_grid: QWidget | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state, self.client = state, client
        self.inside_tab, self.attribution_tab, self.embeddings_tab = InsideTab(state), AttributionTab(state), EmbeddingsTab(state)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.inside_tab, "Inside this head")
        self.tabs.addTab(self.attribution_tab, "Which heads wrote it")
        self.tabs.addTab(self.embeddings_tab, "Embeddings && positions")
        self.requests = {t: _Request(f"explain.{t}") for t in self.TABS}
        self.shown: dict[str, tuple | None] = dict.fromkeys(self.TABS)  # the key of what each tab shows
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        self.marks = None
        if head_grid is not None and hasattr(head_grid, "add_overlay") and hasattr(head_grid, "cell_rect"):
            self.marks = HeadGridMarks(head_grid, self.attribution_tab.grid_values, state)
            self.attribution_tab.grid_marks.toggled.connect(self.marks.set_enabled)
            self.attribution_tab.color_combo.currentIndexChanged.connect(lambda _i: self.marks.update())
        else:
            self.attribution_tab.grid_marks.hide()

        state.model_changed.connect(self._on_model)
        state.trace_changed.connect(lambda _t: self._timer.start())
        state.selection_changed.connect(self._timer.start)
        self.tabs.currentChanged.connect(lambda _i: self._timer.start())
        t = self.attribution_tab
        t.token_combo.currentIndexChanged.connect(lambda _i: self._timer.start())
        self.embeddings_tab.metric.currentIndexChanged.connect(lambda _i: self._timer.start())
        self.embeddings_tab.count.valueChanged.connect(lambda _v: self._timer.start())
        for name in self.TABS:
            self.tab(name).export_button.clicked.connect(lambda _c=False, n=name: self.export_dialog(n))
        client.result_ready.connect(self._on_result)
        client.error.connect(self._on_error)
        client.busy_changed.connect(self._on_busy)

    def tab(self, name: str) -> InsideTab | AttributionTab | EmbeddingsTab:
        return {"inside": self.inside_tab, "attribution": self.attribution_tab, "embeddings": self.embeddings_tab}[name]

    def show_tab(self, name: str) -> None:
        self.tabs.setCurrentWidget(self.tab(name))

    def _on_model(self, _info: object) -> None:
        for name in self.TABS:
            self.requests[name].wanted = None
            self.requests[name].latest = 0
            self.shown[name] = None
            self.tab(name).show_message("Type a prompt")
        self.attribution_tab._combo_key = None




    def refresh(self) -> None:
        name = self.TABS[self.tabs.currentIndex()]
        tab, req = self.tab(name), self.requests[name]
        if self.state.trace is None or self.state.model is None:
            return
        key = tab.key()
        if key is None or key == req.wanted or not self.on_screen() or req.in_flight or self.client.running:
            return  # asked again when the answer, or the end of the run, arrives
        req.wanted = key
        req.count += 1
        req.latest = req.in_flight = self.client.call(req.op, tab.job(key))

    def _on_busy(self, busy: bool, _op: str) -> None:
        if not busy:
            for req in self.requests.values():
                req.in_flight = 0
            self._timer.start()

    def _request_for(self, op: str) -> tuple[str, _Request] | None:
        for name, req in self.requests.items():
            if req.op == op:
                return name, req
        return None

    def _on_error(self, op: str, message: str) -> None:
        """An unexpected failure (the window shows it too): said in the tab, and not asked again until the
        selection or the trace changes (asking again at once would fail again, and again)."""
        found = self._request_for(op)
        if found is not None:
            name, req = found
            req.in_flight = 0
            self.shown[name] = None
            self.tab(name).show_message(f"Could not compute this: {message}")

    def _on_result(self, rid: int, op: str, payload: object) -> None:
        found = self._request_for(op)
        if found is None:
            return
        name, req = found
        if rid == req.in_flight:
            req.in_flight = 0
            self._timer.start()  # the selection may have moved on meanwhile
        if rid != req.latest or not isinstance(payload, dict):
            return  # stale: a newer request was made
        if payload.get("stale") or payload["trace"] is not self.state.trace:
            return
        self.shown[name] = req.wanted
        self.tab(name).show_result(payload)

    # -- exports -----------------------------------------------------------------------------------
    def export_csv(self, name: str, path: str) -> str | None:
        try:
            return self.tab(name).export(path)
        except OSError as exc:
            window = self.window()
            if hasattr(window, "show_error"):
                window.show_error(f"could not write {path}: {exc}")
            return None

    def export_dialog(self, name: str) -> None:
        default = {"inside": "inside-head.csv", "attribution": "logit-attribution.csv", "embeddings": "nearest-tokens.csv"}
        path, _ = file_dialogs.save_path(self, "Export table as CSV", default[name], "CSV (*.csv)")
        if path:
            if not path.lower().endswith(".csv"):
                path += ".csv"
            written = self.export_csv(name, path)
            window = self.window()
            if written and hasattr(window, "statusBar"):
                window.statusBar().showMessage(f"Wrote {written}", 5000)
