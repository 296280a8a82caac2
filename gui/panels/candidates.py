"""Top-k candidates for the token after the selected query (encoder-only: the masked-LM predictions
at the selected position), as probability bars. Sampling changes re-draw from the stored logits
(engine.distribution, pure numpy) without a forward pass; double-click a bar to branch onto it.

Every bar keeps a readable, labelled row: the chart never gets shorter than its rows need (ROW_PAD
over the tick font's height each) and scrolls instead; a footer (the ablation's "biggest movers") sits
below it in a splitter, so it takes room only when someone gives it room."""

from __future__ import annotations

import logging
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QCursor, QFontMetricsF
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsScene,
    QHBoxLayout,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from engine import EngineError, distribution

from ..core.arrivals import PENDING, PLACEHOLDER, Arrivals
from ..core.state import InspectorState
from ..core.worker import EngineClient
from ..rendering import display
from ..widgets.point_labels import PointLabels
from ..widgets.steady_label import SteadyLabel
from ..widgets.token_axis import TokenAxis

log = logging.getLogger(__name__)

BAR_COLOR = QColor(90, 140, 220)
CHOSEN_COLOR = QColor(235, 140, 40)
_BAR_BRUSH, _CHOSEN_BRUSH = pg.mkBrush(BAR_COLOR), pg.mkBrush(CHOSEN_COLOR)  # made once, not per bar and step
MAX_BARS = 50
ROW_PAD = 1.3  # a bar's row: the tick font's height × this (TokenAxis labels every row from 1.05)
CHART_EXTRA_PX = 44  # the probability axis and its title below the bars


class LogitsPanel(QWidget):
    def __init__(self, state: InspectorState, client: EngineClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.arrivals = Arrivals(self)  # a logits row not here yet: fetched off the GUI thread
        self.client = client
        self._x_max: float | None = None  # the probability axis' range (changed only when it must)
        self._rows: int | None = None  # bars the y range was set for
        self.candidate_ids = np.zeros(0, dtype=np.int64)
        self.bar_values = np.zeros(0, dtype=np.float32)
        self.target_position: int | None = None  # where a chosen candidate would go
        self._logits = np.zeros(0, dtype=np.float32)

        self.heading = SteadyLabel()  # these change every step: they must not re-lay out the window
        self.count_spin = QSpinBox()
        self.count_spin.setRange(3, MAX_BARS)
        self.count_spin.setValue(10)
        self.count_spin.setPrefix("show top ")
        self.heading.setToolTip("Double-click a candidate: at the end of the sequence it becomes the next token; "
                                "earlier, the generation branches onto it")

        self.axis = TokenAxis("left")
        self.axis.setStyle(tickLength=0)  # token names suffice; tick marks would read as minus signs
        self.plot = pg.PlotWidget(axisItems={"left": self.axis})
        # a few dozen items that move on every step: a BSP index re-sorted them each time (~2 ms a step)
        self.plot.scene().setItemIndexMethod(QGraphicsScene.ItemIndexMethod.NoIndex)
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.invertY(True)
        self.plot.setLabel("bottom", "probability")
        self.plot.setMinimumHeight(120)
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)
        self.bars = pg.BarGraphItem(x0=[], y=[], height=0.72, width=[], brushes=[], pen=pg.mkPen(None))
        self.plot.addItem(self.bars)
        self.labels = PointLabels()  # the probabilities beside the bars
        self.plot.addItem(self.labels)
        self.message = SteadyLabel()
        self.message.setObjectName("caption")

        layout = self._layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        bottom = QHBoxLayout()
        bottom.setContentsMargins(4, 0, 4, 2)
        bottom.addWidget(self.message, 1)
        bottom.addWidget(self.count_spin)
        self.heading.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.heading)
        # the bars scroll rather than shrink below readable rows; footers share a splitter with them
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.plot)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.addWidget(self.scroll)
        self.splitter.setStretchFactor(0, 1)
        layout.addWidget(self.splitter, 1)
        layout.addLayout(bottom)

        self.count_spin.valueChanged.connect(lambda _v: self.redraw())
        self.plot.scene().sigMouseClicked.connect(self._on_clicked)
        self.plot.scene().sigMouseMoved.connect(self._on_mouse_moved)
        state.model_changed.connect(lambda _i: self._clear("Type a prompt"))
        state.trace_changed.connect(lambda _t: self.redraw())
        state.query_changed.connect(lambda _q: self.redraw())  # the candidates after the selected token
        state.sampling_changed.connect(lambda _s: self.redraw())  # no forward pass: logits are in the trace
        self._clear("Open a model")

    def add_footer(self, widget: QWidget) -> None:
        """Below the bars (the ablation's "biggest movers" table), across a splitter handle from them."""
        self.splitter.addWidget(widget)
        self.splitter.setStretchFactor(self.splitter.count() - 1, 0)

    def row_pixels(self) -> int:
        """The height of one bar's row: enough for its token label, so the axis labels every bar."""
        font = self.axis.style.get("tickFont") or self.axis.font()
        return int(np.ceil(QFontMetricsF(font).height() * ROW_PAD))

    def chart_height(self, n: int | None = None) -> int:
        """The least height at which the chart labels all of its `n` bars (default: those on screen)."""
        n = self.count_spin.value() if n is None else n
        return n * self.row_pixels() + CHART_EXTRA_PX

    def _clear(self, text: str) -> None:
        self.candidate_ids = np.zeros(0, dtype=np.int64)
        self.bar_values = np.zeros(0, dtype=np.float32)
        self.bars.setOpts(x0=[], y=[], width=[], brushes=[])
        self._x_max = None
        self._rows = None
        self.labels.set_labels([], self.palette().windowText().color())
        self.axis.set_tokens(())
        self.heading.setText(text)
        self.message.setText("")
        self.plot.setVisible(False)  # an empty axis says nothing; the heading says why

    def redraw(self) -> None:
        s, trace = self.state, self.state.trace
        if trace is None or s.model is None:
            return
        if trace.logit_rows is None:
            self._clear(trace.no_logits_reason or "this model makes no token predictions")
            return
        encoder_only = trace.family == "encoder"
        pos = min(s.query, len(trace) - 1)
        before_fill = s.fill_predictions(pos) if encoder_only else None
        logits = before_fill
        if logits is None:  # a row not here yet is fetched in the background, redrawn then
            try:
                logits = self.arrivals.read(trace, ("logits", pos), lambda t: t.logits_at(pos), self.redraw)
            except EngineError as exc:  # the engine went away before sending this row
                self._clear(str(exc))
                return
            if logits is PENDING:
                self.heading.setText(f"position {pos}: {PLACEHOLDER}")
                return
        if logits is None:
            self._clear("no logits at this position")
            return
        settings = s.sampling
        probs = distribution(logits, settings.temperature, settings.top_k, settings.top_p)
        # top-k / top-p cut the rest to exactly 0: the bars are the survivors, never padded with cut tokens
        filtered = bool(settings.top_k or settings.top_p)
        survivors = int(np.count_nonzero(probs)) if filtered else probs.size
        n = min(self.count_spin.value(), survivors)
        order = display.top_indices(probs, n)
        self.candidate_ids, self.bar_values = order, probs[order]
        self._logits = logits
        self.plot.setVisible(True)
        self.plot.setMinimumHeight(self.chart_height(n))  # below that the rows scroll, never lose labels
        vocab = s.model.vocab
        # which token actually stands there (marked), and where a choice would go
        if encoder_only:
            self.target_position = pos
            # a mask still in place was chosen by nobody: no "chosen [MASK]: p=0" before any fill
            chosen = None if trace.tokens[pos] == s.model.mask_token else trace.token_ids[pos]
            if before_fill is not None:
                self.heading.setText(f"Predictions at position {pos} while it was masked; double-click to refill")
            else:
                self.heading.setText(f"Predictions at position {pos} (“{trace.tokens[pos]}”); double-click to fill")
        else:
            self.target_position = pos + 1
            chosen = trace.token_ids[pos + 1] if pos + 1 < len(trace) else None
            where = "next token" if pos + 1 >= len(trace) else f"token {pos + 1}"
            self.heading.setText(f"{where.capitalize()} after “{trace.tokens[pos]}” (position {pos}); double-click to "
                                 + ("choose" if pos + 1 >= len(trace) else "branch"))
        brushes = [_CHOSEN_BRUSH if int(i) == chosen else _BAR_BRUSH for i in order]
        self.bars.setOpts(x0=np.zeros(n), y=np.arange(n), width=self.bar_values, brushes=brushes)
        self.axis.set_tokens([vocab[int(i)] if int(i) < len(vocab) else f"<{int(i)}>" for i in order])
        top_p = float(self.bar_values[0]) if n else 1.0
        # room for the labels, in steps of 0.05: the probability axis is then redrawn only when the range
        # changes, not after every step's slightly different top probability
        x_max = max(math.ceil(top_p * 1.35 / 0.05 - 1e-9) * 0.05, 0.05)
        if self._x_max != x_max:
            self._x_max = x_max
            self.plot.setXRange(0, x_max, padding=0)
        labels = []
        for j in range(n):
            mark = " ◀" if int(order[j]) == chosen else ""
            p = float(self.bar_values[j])
            # clear of the axis ticks, even for bars of width ~0
            labels.append((p + 0.01 * x_max, j, (f"{p:.3f}" if p >= 0.001 or p == 0 else f"{p:.0e}") + mark))
        self.labels.set_labels(labels, self.palette().windowText().color())
        if self._rows != n:  # a range change re-lays out both axes: not once per step
            self._rows = n
            self.plot.setYRange(-0.6, n - 0.4, padding=0)
        shown = float(self.bar_values.sum())
        self.message.setToolTip("◀ marks the token that was chosen there")
        cut = " and ".join(name for name, on in (("top-k", settings.top_k), ("top-p", settings.top_p)) if on)
        self.message.setText(f"T={settings.temperature:g}"
                             + (f", top-k={settings.top_k}" if settings.top_k else "")
                             + (f", top-p={settings.top_p:g}" if settings.top_p else "")
                             + (f" · {survivors} survive {cut}" if filtered else f" · top {n}: {shown:.1%}")
                             + ("" if chosen is None or chosen in set(order.tolist()) else
                                f" · chosen “{vocab[chosen]}”: " + (f"cut by {cut}" if filtered and probs[chosen] == 0 else
                                f"p={probs[chosen]:.3g}, rank {self._rank(probs, chosen)}")))

    @staticmethod
    def _rank(probs: np.ndarray, token_id: int) -> int:
        return int((probs > probs[token_id]).sum()) + 1

    def bar_at(self, scene_pos: QPointF) -> int | None:
        if self.candidate_ids.size == 0 or not self.plot.getPlotItem().sceneBoundingRect().contains(scene_pos):
            return None
        j = int(round(self.plot.getViewBox().mapSceneToView(scene_pos).y()))
        return j if 0 <= j < self.candidate_ids.size else None

    def describe(self, j: int) -> str:
        i = int(self.candidate_ids[j])
        vocab = self.state.model.vocab if self.state.model else ()
        token = vocab[i] if i < len(vocab) else f"<{i}>"
        return f"“{token}” (id {i}): probability {self.bar_values[j]:.4f}, logit {float(self._logits[i]):.3f}"

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        j = self.bar_at(scene_pos)
        if j is None:
            QToolTip.hideText()
        else:
            QToolTip.showText(QCursor.pos(), self.describe(j), self.plot)

    def _on_clicked(self, event) -> None:  # noqa: ANN001 - pyqtgraph MouseClickEvent
        if not event.double() or event.button() != Qt.MouseButton.LeftButton or self.candidate_ids.size == 0:
            return
        j = self.bar_at(event.scenePos())
        if j is not None:
            self.choose(j)

    def choose(self, j: int) -> None:
        """Put candidate j at the target position: a step at the frontier, otherwise a branch."""
        if self.target_position is None:
            return
        self.client.branch(self.target_position, int(self.candidate_ids[j]))
