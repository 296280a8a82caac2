"""Logit lens dock: for the selected query position, the top tokens read off the residual stream after
each layer (final norm + unembedding), as a layer × rank table with probabilities.

Computed in the worker (engine.analysis.logit_lens) when the trace or the query position changes and
the dock is on screen; results of older requests are dropped. Encoder-decoder models: the decoder side.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from ..core import jobs
from ..core.state import InspectorState
from ..core.worker import EngineClient
from ..widgets.refreshing import RefreshWhenShown

log = logging.getLogger(__name__)

TINT = (90, 140, 220)


class LogitLensPanel(RefreshWhenShown):
    def __init__(self, state: InspectorState, client: EngineClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state, self.client = state, client
        self.top = jobs.LENS_TOP
        self.result: dict | None = None  # the lens on screen
        self._latest = 0  # request id whose answer is wanted
        self._wanted: tuple[int, int] | None = None  # (id(trace), position) requested or shown
        self.requests = 0
        self._in_flight = 0  # at most one request queued: a long run's progress must not pile up work

        self.heading = QLabel()
        self.heading.setWordWrap(True)
        self.table = QTableWidget(0, self.top)
        self.table.setHorizontalHeaderLabels([f"#{i + 1}" for i in range(self.top)])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)  # scrolls, never "…"
        self.table.verticalHeader().setDefaultSectionSize(34)
        self.table.setToolTip("Row: the residual stream after that layer, read through the final norm and the "
                              "unembedding. Cell: a token and its probability; shade = probability.")
        self.message = QLabel()
        self.message.setObjectName("caption")
        self.message.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(self.heading)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.message)

        state.model_changed.connect(self._on_model)
        state.trace_changed.connect(lambda _t: self._timer.start())
        state.query_changed.connect(lambda _q: self._timer.start())  # the lens reads the selected position
        client.result_ready.connect(self._on_result)
        client.busy_changed.connect(self._on_busy)
        self._show_message("Open a model to see the logit lens")

    def _on_model(self, _info: object) -> None:
        self.result, self._wanted, self._latest = None, None, 0
        self._show_message("Type a prompt")

    def _show_message(self, text: str) -> None:
        self.result = None
        self.table.setRowCount(0)
        self.table.hide()
        self.heading.setText(text)
        self.message.setText("")

    def position(self) -> int:
        trace = self.state.trace
        return min(self.state.query, len(trace) - 1) if trace is not None else 0




    def refresh(self) -> None:
        s, trace = self.state, self.state.trace
        if s.model is None or trace is None:
            return
        if not s.model.has_logits or trace.logit_rows is None:
            self._show_message("No logit lens: " + (trace.no_logits_reason or "this model makes no token predictions"))
            self._wanted = None
            return
        key = (id(trace), self.position())
        if key == self._wanted or not self.on_screen() or self._in_flight or self.client.running:
            return  # asked again when the answer, or the end of the run, arrives
        self._wanted = key
        self.requests += 1
        self._latest = self._in_flight = self.client.call("lens", jobs.logit_lens(trace, key[1], self.top))
        self.message.setText("computing …")

    def _on_busy(self, busy: bool, _op: str) -> None:
        if not busy:  # nothing is in flight any more (answered, dropped or failed): catch up
            self._in_flight = 0
            self._timer.start()

    def _on_result(self, rid: int, op: str, payload: object) -> None:
        if op == "lens" and rid == self._in_flight:
            self._in_flight = 0
            self._timer.start()  # the selection may have moved on meanwhile
        if op != "lens" or rid != self._latest:
            return  # stale: a newer position or trace was asked for
        if payload["trace"] is not self.state.trace or payload.get("stale"):
            return
        self.show_lens(payload)

    def show_lens(self, payload: dict) -> None:
        s, trace = self.state, payload["trace"]
        pos = payload["position"]
        ids, probs = payload["top_ids"], payload["top_probs"]
        vocab = s.model.vocab if s.model else ()
        self.result = payload
        n_layers = ids.shape[0]
        self.table.show()
        self.table.setRowCount(n_layers)
        self.table.setVerticalHeaderLabels([f"L{i}" + (" out" if i == n_layers - 1 else "") for i in range(n_layers)])
        text_color = self.palette().windowText().color()
        for layer in range(n_layers):
            for r in range(ids.shape[1]):
                tid, p = int(ids[layer, r]), float(probs[layer, r])
                token = vocab[tid] if tid < len(vocab) else f"<{tid}>"
                item = QTableWidgetItem(f"{token}\n{p:.3f}" if p >= 0.001 else f"{token}\n{p:.1e}")
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                item.setBackground(QColor(*TINT, int(25 + 200 * min(p, 1.0))))
                item.setForeground(text_color)
                item.setToolTip(f"layer {layer}, rank {r + 1}: “{token}” (id {tid}) p={p:.4f}")
                self.table.setItem(layer, r, item)
        side = "decoder, " if trace.family == "encoder-decoder" else ""
        if trace.family == "encoder":
            what = f"Masked-LM predictions at position {pos} (“{trace.tokens[pos]}”)"
        else:
            what = f"Next token after “{trace.tokens[pos]}” ({side}position {pos})"
        self.heading.setText(f"{what}, read off the residual stream after each layer")
        self.message.setText("Rows: layers (L0 = after the first). The last row is the model's own prediction (T=1). "
                             "Select another query token to move.")

    def cell_text(self, layer: int, rank: int) -> str:
        item = self.table.item(layer, rank)
        return item.text() if item is not None else ""
