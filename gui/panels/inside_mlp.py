"""The "Inside the MLP" dock: what a layer's feed-forward network asked the vector at the selected token, what
the answers were, and what each neuron wrote — in the seed notes' words, the MLP "asks the vector a series of
questions and then updates its meaning based on the responses".

- The neurons of the chosen layer, ranked by how much they wrote toward a candidate (or by |activation|): the
  question (what enters the activation: x·w_in, or x·w_gate and x·w_up for gated MLPs), the answer (the
  activation) and the write (answer × output row, read through the final norm and the unembedding: its effect
  on the candidate, and the tokens it pushes up and down most).
- The selected neuron's activation at every token, as a strip under the tokens.
- A click in the "ablate" column (or a double-click on a row) switches a neuron off (its activation × 0): the
  session recomputes, the candidates move, and the movers are listed here against the trace from before.
- The residual stream at the token: per layer, the norm of what attention and the MLP added, and their direct
  effect on the candidate ("all meaning is baked into the last vector", watched layer by layer).

- A mixture-of-experts layer (transformers backend): the experts the router sent the token to, with their weights
  and their direct effects on the candidate, and the picked expert's neurons (activation, × router weight, direct
  effect on the candidate — the neurons of an expert add to its part — and the size of the write), ranked as above.

Computed in the worker (engine.explain.mlp_neurons / expert_neurons through gui/core/mlp_jobs.py) only while on
screen.
"""

from __future__ import annotations

import logging

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QGraphicsRectItem,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine import EngineError, distribution

from ..core import mlp_jobs
from ..core.arrivals import PENDING, Arrivals
from ..core.state import InspectorState
from ..core.worker import EngineClient
from ..rendering import colormaps
from ..widgets.refreshing import RefreshWhenShown
from ..widgets.token_axis import TokenAxis, short

log = logging.getLogger(__name__)

POSITIVE, NEGATIVE = QColor(215, 70, 60), QColor(60, 110, 215)
ATTN_COLOR, MLP_COLOR = QColor(235, 140, 40), QColor(60, 160, 90)
STRIP_MAP = "CET-D1"
RANKS = (("write", "rank: write toward the token"), ("abs_write", "rank: |write| either way"),
         ("activation", "rank: |activation|"))
CANDIDATES = 8
N_MOVERS = 5
EXPERT_COLUMNS = ("neuron", "answer", "× router weight", "writes", "write size")
COLUMNS = ("neuron", "ablate", "answer", "question", "× up", "writes", "pushes up", "pushes down")
ABLATE_COLUMN = 1


def _item(text: str, tip: str = "", bg: QColor | None = None, right: bool = True) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    if right:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    if tip:
        item.setToolTip(tip)
    if bg is not None:
        item.setBackground(bg)
    return item


def _shade(value: float, top: float) -> QColor:
    if not np.isfinite(value) or top <= 0:
        return QColor(0, 0, 0, 0)
    base = POSITIVE if value >= 0 else NEGATIVE
    return QColor(base.red(), base.green(), base.blue(), int(20 + 170 * min(abs(value) / top, 1.0)))


def _plot(bottom: pg.AxisItem | None = None, left: str = "") -> pg.PlotWidget:
    plot = pg.PlotWidget(axisItems={"bottom": bottom} if bottom is not None else None)
    plot.setMenuEnabled(False)
    plot.hideButtons()
    plot.setMouseEnabled(x=False, y=False)
    if left:
        plot.setLabel("left", left)
    for side in ("left", "bottom"):
        plot.getAxis(side).enableAutoSIPrefix(False)
    return plot


def _tokens(pushed: tuple) -> str:
    return "  ".join(f"“{short(t, 12)}” {v:+.2f}" for _i, t, v in pushed[:3])


class InsideMlpPanel(RefreshWhenShown):
    """The dock's widget: asks the worker for one MLP's neurons at the selected token while on screen."""

    OP = "explain.mlp"
    GATES_OP = "gates"  # a TRACE_OP: the recomputed session replaces the trace on screen

    def __init__(self, state: InspectorState, client: EngineClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.arrivals = Arrivals(self)  # a logits row not here yet: fetched off the GUI thread
        self.state, self.client = state, client
        self.result = None  # engine.explain.MlpNeurons on screen
        self.trace = None  # the trace it explains
        self.selected: int | None = None  # neuron index shown in the strip
        self.baseline = None  # the trace before the first neuron ablation: the "before" of the movers
        self._latest = self._in_flight = 0
        self._wanted: tuple | None = None
        self._combo_key: tuple | None = None
        self.requests = 0

        self.heading = QLabel("Open a model")
        self.heading.setWordWrap(True)
        self.layer_spin = QSpinBox()
        self.layer_spin.setPrefix("layer ")
        self.layer_spin.setToolTip("Which layer's MLP (follows the selected layer)")
        self.token_combo = QComboBox()
        self.token_combo.setToolTip("The candidate whose logit the writes explain")
        self.token_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.token_combo.setMinimumContentsLength(16)
        self.rank_combo = QComboBox()
        for key, text in RANKS:
            self.rank_combo.addItem(text, key)
        self.count = QSpinBox()
        self.count.setRange(5, 200)
        self.count.setValue(20)
        self.count.setPrefix("top ")
        self.count.setSuffix(" neurons")
        self.expert_combo = QComboBox()
        self.expert_combo.setToolTip("Which of the experts the router chose for this token (its weight as used)")
        self.expert_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.expert_combo.hide()
        self.experts = None  # engine.routing.ExpertsInside on screen (a mixture-of-experts layer)
        self.clear_button = QPushButton("Restore all neurons")
        self.clear_button.setToolTip("Switch every ablated neuron back on (head ablations stay)")
        controls = QHBoxLayout()
        controls.setContentsMargins(0, 0, 0, 0)
        for w in (self.layer_spin, QLabel("token:"), self.token_combo, self.rank_combo, self.expert_combo, self.count):
            controls.addWidget(w)
        controls.addStretch(1)
        controls.addWidget(self.clear_button)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(20)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)

        self.experts_table = QTableWidget(0, len(EXPERT_COLUMNS))
        self.experts_table.setHorizontalHeaderLabels(list(EXPERT_COLUMNS))
        self.experts_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.experts_table.verticalHeader().hide()
        self.experts_table.verticalHeader().setDefaultSectionSize(20)
        self.experts_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.experts_table.hide()

        self.strip_axis = TokenAxis("bottom")
        self.strip_plot = _plot(self.strip_axis)
        self.strip_plot.getAxis("left").setTicks([[]])
        self.strip_plot.invertY(True)
        self.strip = pg.ImageItem(axisOrder="row-major")
        self.strip_plot.addItem(self.strip)
        self.strip_mark = QGraphicsRectItem()
        pen = pg.mkPen((20, 20, 20), width=2)
        pen.setCosmetic(True)
        self.strip_mark.setPen(pen)
        self.strip_mark.setBrush(QBrush(Qt.BrushStyle.NoBrush))
        self.strip_plot.addItem(self.strip_mark)
        self.strip_plot.setMinimumHeight(170)
        self.strip_plot.setMaximumHeight(190)

        self.norm_plot = _plot(left="‖added‖")
        self.effect_plot = _plot(left="effect")
        self.norm_bars = [pg.BarGraphItem(x=[], height=[], width=0.38, brush=c) for c in (ATTN_COLOR, MLP_COLOR)]
        self.effect_bars = [pg.BarGraphItem(x=[], height=[], width=0.38, brush=c) for c in (ATTN_COLOR, MLP_COLOR)]
        for plot, bars in ((self.norm_plot, self.norm_bars), (self.effect_plot, self.effect_bars)):
            for b in bars:
                plot.addItem(b)
            plot.setLabel("bottom", "layer")
        self.effect_plot.addItem(pg.InfiniteLine(pos=0, angle=0, pen=pg.mkPen((150, 150, 150))))
        self.layer_mark = pg.LinearRegionItem(movable=False, brush=QColor(120, 120, 120, 40), pen=pg.mkPen(None))
        self.effect_plot.addItem(self.layer_mark)
        legend = QLabel("<span style='color:#eb8c28'>■</span> attention &nbsp; <span style='color:#3ca05a'>■</span> MLP")
        legend.setObjectName("caption")
        self.residual_caption = QLabel()
        self.residual_caption.setObjectName("caption")
        self.residual_caption.setWordWrap(True)

        self.movers = QTableWidget(0, 4)
        self.movers.setHorizontalHeaderLabels(["token", "before", "after", "change"])
        self.movers.verticalHeader().hide()
        self.movers.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.movers.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.movers.verticalHeader().setDefaultSectionSize(18)
        self.movers.setMaximumHeight(26 + 18 * 3)
        self.movers_caption = QLabel()
        self.movers_caption.setObjectName("caption")
        self.movers_caption.setWordWrap(True)

        self.message = QLabel()
        self.message.setObjectName("caption")
        self.message.setWordWrap(True)
        self.caption = QLabel()
        self.caption.setObjectName("caption")
        self.caption.setWordWrap(True)

        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addWidget(QLabel("<b>The residual stream at this token, layer by layer</b>"))
        rv.addWidget(self.norm_plot, 1)
        rv.addWidget(self.effect_plot, 1)
        rv.addWidget(legend)
        rv.addWidget(self.residual_caption)
        rv.addWidget(self.movers_caption)
        rv.addWidget(self.movers)
        for plot in (self.norm_plot, self.effect_plot):
            plot.setMinimumHeight(90)
        self.body = QSplitter(Qt.Orientation.Horizontal)
        self.body.addWidget(self.table)
        self.body.addWidget(right)
        self.body.setSizes([760, 420])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(self.heading)
        layout.addLayout(controls)
        layout.addWidget(self.message)
        layout.addWidget(self.body, 1)
        layout.addWidget(self.experts_table, 1)
        layout.addWidget(self.strip_plot)
        layout.addWidget(self.caption)
        self.movers.hide()
        self.movers_caption.hide()

        self.table.cellClicked.connect(self._on_cell_clicked)
        self.table.cellDoubleClicked.connect(lambda row, _c: self.toggle_row(row))
        self.table.currentCellChanged.connect(lambda row, _c, _pr, _pc: self._select_row(row))
        self.clear_button.clicked.connect(self.clear_ablations)
        self.expert_combo.currentIndexChanged.connect(lambda *_a: self.draw_expert())
        self.rank_combo.currentIndexChanged.connect(lambda *_a: self.draw_expert())
        for sig in (self.layer_spin.valueChanged, self.token_combo.currentIndexChanged,
                    self.rank_combo.currentIndexChanged, self.count.valueChanged):
            sig.connect(lambda *_a: self._timer.start())
        state.model_changed.connect(self._on_model)
        state.trace_changed.connect(self._on_trace)
        state.selection_changed.connect(self._timer.start)
        state.layer_changed.connect(self.layer_spin.setValue)
        client.result_ready.connect(self._on_result)
        client.error.connect(self._on_error)
        client.busy_changed.connect(self._on_busy)
        self.show_message("Open a model and type a prompt")

    # -- requests -------------------------------------------------------------------------------
    def position(self) -> int:
        return min(self.state.query, len(self.state.trace) - 1)

    def _fill_tokens(self) -> bool:
        """The candidate tokens at the position; False while its logits row is on its way (the
        panel refreshes when it lands)."""
        trace, pos = self.state.trace, self.position()
        key = (id(trace), pos)
        if key == self._combo_key:
            return True
        logits = None
        if trace.logit_rows is not None:
            try:
                logits = self.arrivals.read(trace, ("logits", pos), lambda t: t.logits_at(pos), self.refresh)
            except EngineError as exc:  # the engine went away: the next token only
                log.warning("inside the MLP: %s", exc)
                logits = None
            if logits is PENDING:
                return False
        self._combo_key = key
        vocab = self.state.model.vocab
        current = self.token_combo.currentData()
        self.token_combo.blockSignals(True)
        self.token_combo.clear()
        seen = set()
        if logits is not None:
            for t in np.argsort(-logits, kind="stable")[:CANDIDATES]:
                t = int(t)
                self.token_combo.addItem(f"“{vocab[t]}” (logit {float(logits[t]):.2f})", t)
                seen.add(t)
        if pos + 1 < len(trace) and trace.token_ids[pos + 1] not in seen:
            t = trace.token_ids[pos + 1]
            self.token_combo.addItem(f"“{vocab[t]}” (the next token)", t)
        i = self.token_combo.findData(current)
        self.token_combo.setCurrentIndex(max(i, 0))  # the same candidate when it is still offered
        self.token_combo.blockSignals(False)
        return True

    def key(self) -> tuple | None:
        s, trace = self.state, self.state.trace
        if trace is None or s.model is None:
            return None
        encoder = trace.family == "encoder"
        moe = self.layer_spin.value() in (getattr(trace, "moe_layers", None) or ())
        self.token_combo.setEnabled(not encoder)
        self.rank_combo.setEnabled(not encoder)
        token = None
        if not encoder:
            if not self._fill_tokens():
                return None
            token = self.token_combo.currentData()
        rank = "activation" if encoder else self.rank_combo.currentData()
        if moe:  # the chosen experts' neurons (ranked here, from every neuron's numbers)
            rank = "experts"
        return (id(trace), self.layer_spin.value(), self.position(), None if token is None else int(token), rank,
                self.count.value())

    def refresh(self) -> None:
        key = self.key()
        if key is None or key == self._wanted or not self.on_screen() or self._in_flight or self.client.running:
            return
        self._wanted = key
        self.requests += 1
        _, layer, pos, token, rank, k = key
        trace = self.state.trace
        if rank == "experts":
            self._latest = self._in_flight = self.client.call(self.OP, mlp_jobs.expert_neurons(trace, layer, pos, k,
                                                                                               token))
            return
        stack = "encoder" if trace.family == "encoder" else "decoder"
        off = sorted(trace.neuron_gates.get(f"{stack}.{layer}.mlp", {}))  # listed even when they now rank low
        self._latest = self._in_flight = self.client.call(self.OP, mlp_jobs.mlp_neurons(trace, layer, pos, token, rank, k,
                                                                                         off))

    def _on_busy(self, busy: bool, _op: str) -> None:
        if not busy:
            self._in_flight = 0
            self._timer.start()

    def _on_error(self, op: str, message: str) -> None:
        if op == self.OP:
            self._in_flight = 0
            self.show_message(f"Could not compute this: {message}")

    def _on_result(self, rid: int, op: str, payload: object) -> None:
        if op != self.OP:
            return
        if rid == self._in_flight:
            self._in_flight = 0
            self._timer.start()
        if rid != self._latest or not isinstance(payload, dict) or payload.get("stale"):
            return
        if payload["trace"] is not self.state.trace:
            return
        if "error" in payload:
            self.show_message(payload["error"])
            return
        if "experts" in payload:
            self.show_experts(payload["trace"], payload["experts"])
            return
        self.show_result(payload["trace"], payload["neurons"])

    def _on_model(self, info: object) -> None:
        self._wanted, self._combo_key, self.baseline, self.result = None, None, None, None
        if info is not None:
            self.layer_spin.setRange(0, max(0, info.n_layers - 1))
        self.show_message("Type a prompt")

    def _on_trace(self, trace: object) -> None:
        if not trace.neuron_gates:
            self.baseline = None
        self.update_movers()
        self._timer.start()

    # -- drawing --------------------------------------------------------------------------------
    def show_message(self, text: str) -> None:
        self.result = self.experts = None
        self.message.setText(text)
        self.message.show()
        self.body.hide()
        self.experts_table.hide()
        self.expert_combo.hide()
        self.strip_plot.hide()
        self.caption.setText("")

    def show_result(self, trace: object, result: object) -> None:
        self.trace, self.result, self.experts = trace, result, None
        self.message.hide()
        self.experts_table.hide()
        self.expert_combo.hide()
        self.clear_button.show()
        self.body.show()
        self.strip_plot.show()
        self.redraw()

    def ablated(self) -> dict[int, float]:
        trace, r = self.state.trace, self.result
        if trace is None or r is None:
            return {}
        return dict(trace.neuron_gates.get(f"{r.stack}.{r.layer}.mlp", {}))

    def redraw(self) -> None:
        r, trace = self.result, self.trace
        if r is None:
            return
        direct = r.token_id is not None
        gated = r.gated
        tok = f"“{r.token}”" if direct else ""
        act = r.activation_function
        question = f"x·w_gate → {act}" if gated else f"x·w_in → {act}"
        headers = ["neuron", "ablate", "answer", "question", "× up", f"writes → {tok}" if direct else "writes",
                   "pushes up (here)", "pushes down (here)"]
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setColumnHidden(4, not gated)
        for c in (5, 6, 7):
            self.table.setColumnHidden(c, not direct)
        off = self.ablated()
        top_w = float(np.nanmax(np.abs([n.write for n in r.neurons]))) if direct and r.neurons else 0.0
        top_a = float(max((abs(n.activation) for n in r.neurons), default=0.0))
        self.table.setRowCount(len(r.neurons))
        for row, n in enumerate(r.neurons):
            gate = off.get(n.index)
            cells = [
                _item(f"N{n.index}", f"neuron {n.index} of {r.d_ff} in layer {r.layer}'s MLP", right=False),
                _item("✕ off" if gate == 0 else (f"×{gate:g}" if gate is not None else "ablate"),
                      "click to switch this neuron off (its activation × 0) or back on", right=False),
                _item(f"{n.activation:+.3f}", "its answer here: the activation "
                      + ("act(x·w_gate)·(x·w_up)" if gated else "act(x·w_in)"), _shade(n.activation, top_a)),
                _item(f"{n.pre_activation:+.3f}", f"the question: {question} (x = the normed vector at this token)"),
                _item(f"{n.up:+.3f}" if n.up is not None else "", "x·w_up: the value the gate lets through"),
                _item(f"{n.write:+.3f}" if direct else "", f"answer × output row, read through the final norm and the "
                      f"unembedding: its direct effect on the logit of {tok}", _shade(n.write, top_w) if direct else None),
                _item(("if it fired: " if n.per_unit else "") + _tokens(n.pushes_up),
                      "the tokens this neuron's write raises most here (logit change)"
                      + (" — silent here: per unit of activation" if n.per_unit else ""), right=False),
                _item(("if it fired: " if n.per_unit else "") + _tokens(n.pushes_down),
                      "the tokens this neuron's write lowers most here", right=False),
            ]
            for c, item in enumerate(cells):
                self.table.setItem(row, c, item)
        if r.neurons:
            rows = [n.index for n in r.neurons]
            row = rows.index(self.selected) if self.selected in rows else 0
            self.table.blockSignals(True)
            self.table.selectRow(row)
            self.table.blockSignals(False)
            self._select_row(row)
        self._draw_residual()
        pos = r.position
        side = "decoder " if trace.family == "encoder-decoder" else ""
        ranked = {"write": f"how much they write toward {tok}", "abs_write": f"|write| toward {tok}",
                  "activation": "|activation|"}[r.rank_by]
        kind = (f"gated MLP: {act}(x·w_gate)·(x·w_up)" if gated else f"MLP: {act}(x·w_in)") + f", {r.d_ff} neurons"
        head = f"<b>Inside the MLP of layer {r.layer}</b> at {side}position {pos} (“{trace.tokens[pos]}”) · {kind}"
        if direct:
            head += (f" · the whole MLP wrote {r.mlp_effect:+.3f} toward {tok} (neurons {r.neurons_effect:+.3f}"
                     + (f", bias {r.bias_effect:+.3f}" if r.bias_effect else "") + ")")
        self.heading.setText(head)
        self.caption.setText(
            "The MLP asks the vector a series of questions and updates its meaning from the answers: a neuron's "
            f"question is its input row (question = x·row), its answer the activation, its write answer × its output "
            f"row. Ranked by {ranked}. " + (r.note + ". " if r.note else "")
            + "Click “ablate” (or double-click a row) to switch a neuron off.")

    def show_experts(self, trace: object, inside: object) -> None:
        """A mixture-of-experts layer: the experts chosen for the token, and the picked one's top neurons."""
        self.trace, self.result, self.experts = trace, None, inside
        self.message.hide()
        self.body.hide()
        self.strip_plot.hide()  # activations are computed at this token only, not along the sequence
        self.experts_table.show()
        current = self.expert_combo.currentData()
        self.expert_combo.blockSignals(True)
        self.expert_combo.clear()
        for e in inside.experts:
            self.expert_combo.addItem(f"expert {e.expert} (weight {e.weight:.3f})", e.expert)
        self.expert_combo.setCurrentIndex(max(self.expert_combo.findData(current), 0))
        self.expert_combo.blockSignals(False)
        self.expert_combo.show()
        self.clear_button.hide()  # neuron ablation is the dense MLPs'; the Experts dock ablates a whole expert
        direct = inside.token_id is not None
        chosen = ", ".join(f"{e.expert} (weight {e.weight:.3f}" + (f", wrote {e.effect:+.3f}" if direct else "") + ")"
                           for e in inside.experts)
        pos = inside.position
        head = (f"<b>Layer {inside.layer} is a mixture-of-experts layer</b> · at position {pos} (“{trace.tokens[pos]}”) "
                f"the router chose experts {chosen}")
        if direct:
            head += f" · the layer's MLP wrote {inside.mlp_effect:+.3f} toward “{inside.token}”"
        self.heading.setText(head)
        self.draw_expert()

    def draw_expert(self) -> None:
        inside = self.experts
        if inside is None or not inside.experts:
            return
        i = max(self.expert_combo.currentIndex(), 0)
        e = inside.experts[i]
        direct = e.effects is not None
        rank = self.rank_combo.currentData() if direct else "size"
        score = {"write": -e.effects if direct else None, "abs_write": -np.abs(e.effects) if direct else None,
                 "activation": -np.abs(e.activations), "size": -e.write_norms}[rank]
        order = [int(j) for j in np.argsort(score, kind="stable")[: self.count.value()]]
        tok = f"“{inside.token}”" if direct else ""
        self.experts_table.setHorizontalHeaderLabels(["neuron", "answer", "× router weight",
                                                      f"writes → {tok}" if direct else "writes", "write size"])
        self.experts_table.setColumnHidden(3, not direct)
        self.experts_table.setRowCount(len(order))
        top_a = float(max((abs(float(e.activations[j])) for j in order), default=0.0))
        top_w = float(max((float(e.write_norms[j]) for j in order), default=0.0))
        top_e = float(max((abs(float(e.effects[j])) for j in order), default=0.0)) if direct else 0.0
        for row, j in enumerate(order):
            a, size = float(e.activations[j]), float(e.write_norms[j])
            effect = float(e.effects[j]) if direct else float("nan")
            cells = [
                _item(f"N{j}", f"neuron {j} of {len(e.activations)} in expert {e.expert}", right=False),
                _item(f"{a:+.3f}", "its answer here: the activation its down projection reads", _shade(a, top_a)),
                _item(f"{a * e.weight:+.3f}", f"the answer × the router weight {e.weight:.3f}"),
                _item(f"{effect:+.3f}" if direct else "", f"weight × answer × output row, read through the final norm "
                      f"and the unembedding: its direct effect on the logit of {tok}",
                      _shade(effect, top_e) if direct else None),
                _item(f"{size:.3f}", "the size of what it writes: |weight × answer| × ‖its down column‖",
                      _shade(size, top_w)),
            ]
            for c, item in enumerate(cells):
                self.experts_table.setItem(row, c, item)
        out = float(np.linalg.norm(e.output))
        ranked = {"write": f"how much they write toward {tok}", "abs_write": f"|write| toward {tok}",
                  "activation": "|activation|", "size": "the size of their write"}[rank]
        if direct:
            effect = (f"; its neurons wrote {float(e.effects.astype(np.float64).sum()):+.3f} toward {tok}"
                      + (f" and its bias {e.bias_effect:+.3f}" if e.bias_effect else ""))
            rest = inside.mlp_effect - sum(x.effect for x in inside.experts)
            how = (" Direct effects read each write through the norms frozen at this forward's own scale and the "
                   "unembedding, as Which heads wrote it does"
                   + (f"; the rest of the layer's part ({rest:+.3f}) is a shared expert or bias beside them."
                      if abs(rest) > 1e-4 else ": the chosen experts' parts add to the layer's."))
        else:
            effect, how = "", f" {inside.note}."
        self.caption.setText(
            f"Expert {e.expert} (router weight {e.weight:.3f}, ‖its weighted write‖ {out:.3f}{effect}). Ranked by "
            f"{ranked}. Only the chosen experts ran for this token; their writes sum to the layer's experts output "
            f"(checked within {inside.error:.2g}).{how} Ablate a whole expert in the Experts dock.")

    def _select_row(self, row: int) -> None:
        r = self.result
        if r is None or not 0 <= row < len(r.neurons):
            return
        n = r.neurons[row]
        self.selected = n.index
        strip = n.strip.astype(np.float32)[None, :]
        m = max(float(np.abs(strip).max(initial=0)), 1e-6)
        self.strip.setLookupTable(colormaps.lookup_table(STRIP_MAP))
        self.strip.setImage(strip, autoLevels=False, levels=(-m, m))
        T = strip.shape[1]
        self.strip.setRect(QRectF(-0.5, -0.5, T, 1))
        self.strip_mark.setRect(QRectF(r.position - 0.5, -0.5, 1, 1))
        self.strip_axis.set_tokens(self.trace.source_tokens if r.stack == "encoder" and self.trace.source_tokens
                                   else self.trace.tokens)
        self.strip_plot.setRange(xRange=(-0.5, T - 0.5), yRange=(-0.5, 0.5), padding=0)
        self.strip_plot.setTitle(f"N{n.index}'s answer at every token (red +, blue −; ±{m:.3g}; box: this token)",
                                 size="9pt")

    def _draw_residual(self) -> None:
        r = self.result
        res = r.residual if r is not None else None
        visible = res is not None
        self.norm_plot.setVisible(visible)
        self.effect_plot.setVisible(visible)
        if res is None:
            self.residual_caption.setText("The residual-stream bars need a decoder (an encoder-only model's MLPs reach "
                                          "its predictions through the non-linear masked-LM head).")
            return
        n = len(res.mlp_norms)
        x = np.arange(n, dtype=float)
        attn_norm = res.attn_norms + (res.cross_norms if res.cross_norms is not None else 0)
        attn_eff = res.attn_effects + (res.cross_effects if res.cross_effects is not None else 0)
        for bars, values in ((self.norm_bars, (attn_norm, res.mlp_norms)), (self.effect_bars, (attn_eff, res.mlp_effects))):
            bars[0].setOpts(x=x - 0.2, height=values[0], width=0.38)
            bars[1].setOpts(x=x + 0.2, height=values[1], width=0.38)
        for plot in (self.norm_plot, self.effect_plot):
            plot.getAxis("bottom").setTicks([[(i, str(i)) for i in range(n)]])
            plot.setXRange(-0.6, n - 0.4, padding=0)
        self.norm_plot.enableAutoRange(axis="y")
        self.effect_plot.enableAutoRange(axis="y")
        self.layer_mark.setRegion((r.layer - 0.5, r.layer + 0.5))
        self.effect_plot.setTitle(f"direct effect on “{r.token}”", size="9pt")
        self.norm_plot.setTitle("norm of what each sublayer added at this token", size="9pt")
        cross = " (cross-attention counted with attention)" if res.cross_effects is not None else ""
        self.residual_caption.setText(
            f"embeddings {res.embeddings_effect:+.2f} + attention {float(attn_eff.sum()):+.2f} + MLPs "
            f"{float(res.mlp_effects.sum()):+.2f} + norm biases {res.other_effect:+.2f} = the logit {res.logit:.2f}"
            f"{cross}. The grey band marks layer {r.layer}.")

    # -- ablation -------------------------------------------------------------------------------
    def _on_cell_clicked(self, row: int, col: int) -> None:
        if col == ABLATE_COLUMN:
            self.toggle_row(row)

    def toggle_row(self, row: int) -> int | None:
        r = self.result
        if r is None or not 0 <= row < len(r.neurons):
            return None
        n = r.neurons[row]
        return self.set_neuron(r.layer, n.index, 1.0 if n.index in self.ablated() else 0.0)

    def set_neuron(self, layer: int, neuron: int, value: float) -> int | None:
        trace = self.state.trace
        if self.state.model is None or trace is None:
            return None
        if not trace.neuron_gates:
            self.baseline = trace  # the un-ablated distribution to compare with
        return self.client.call(self.GATES_OP, mlp_jobs.set_neuron_gates([(layer, neuron, value)]))

    def clear_ablations(self) -> int | None:
        if self.state.model is None:
            return None
        return self.client.call(self.GATES_OP, mlp_jobs.set_neuron_gates([], clear=True))

    def update_movers(self) -> None:
        s, trace, base = self.state, self.state.trace, self.baseline
        if trace is None or s.model is None or not trace.neuron_gates or trace.logit_rows is None:
            self.movers.hide()
            self.movers_caption.hide()
            return
        pos = min(s.query, len(trace) - 1)
        names = ", ".join(f"L{name.split('.')[1]}.N{j}" + ("" if v == 0 else f"×{v:g}")
                          for name, g in trace.neuron_gates.items() for j, v in sorted(g.items()))
        self.movers_caption.show()
        if (base is None or base.logit_rows is None or len(base) <= pos
                or base.token_ids[: pos + 1] != trace.token_ids[: pos + 1] or base.source_ids != trace.source_ids):
            self.movers_caption.setText(f"Ablated neurons: {names}. No un-ablated distribution at position {pos} to "
                                        "compare with.")
            self.movers.hide()
            return
        before = distribution(base.logits_at(pos), 1.0)
        after = distribution(trace.logits_at(pos), 1.0)
        order = np.argsort(-np.abs(after - before), kind="stable")[:N_MOVERS]
        vocab = s.model.vocab
        tv = 0.5 * float(np.abs(after - before).sum())
        self.movers_caption.setText(f"Ablated neurons: {names} · how the candidates moved at position {pos} "
                                    f"(T=1, total variation {tv:.3f}):")
        self.movers.setRowCount(len(order))
        for row, i in enumerate(order):
            d = float(after[i] - before[i])
            items = [QTableWidgetItem(vocab[int(i)]), QTableWidgetItem(f"{before[i]:.4f}"),
                     QTableWidgetItem(f"{after[i]:.4f}"), QTableWidgetItem(f"{d:+.4f}")]
            items[3].setForeground(QColor(30, 140, 60) if d > 0 else QColor(200, 50, 50))
            for c, item in enumerate(items):
                self.movers.setItem(row, c, item)
        self.movers.show()
