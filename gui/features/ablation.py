"""Head ablation from the head grid: right-click (or Ctrl+click) a head to switch it off or scale it.

The gates live on the model in the worker thread (engine: Model.set_head_gate); the session recomputes
with them and the new Trace says which gates produced it (Trace.gates). Here: the context menu, the
crosses over ablated heads in the grid, a status line, and under the candidates a "biggest movers" table
comparing the next-token distribution with the one from the trace before the ablation.
"""

from __future__ import annotations

import logging

import numpy as np
from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QColor, QCursor, QPainterPath, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGraphicsPathItem,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMenu,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine import capture_name, distribution, parse_capture_name

from ..core import jobs
from ..core.state import InspectorState
from ..core.worker import EngineClient
from ..panels.candidates import LogitsPanel
from ..panels.heads import HeadGrid

log = logging.getLogger(__name__)

N_MOVERS = 4
CROSS_COLOR = QColor(255, 255, 255)
CROSS_SHADOW = QColor(0, 0, 0)
SCALED_COLOR = QColor(255, 190, 40)


def count_gates(gates: dict[str, tuple[float, ...]]) -> tuple[int, int]:
    """(heads switched off, heads scaled) in a Trace.gates-style dict."""
    off = sum(1 for g in gates.values() for v in g if v == 0)
    scaled = sum(1 for g in gates.values() for v in g if 0 < v != 1)
    return off, scaled


def biggest_movers(before: np.ndarray, after: np.ndarray, n: int = N_MOVERS) -> list[tuple[int, float, float]]:
    """[(token id, p before, p after)] of the n tokens whose probability changed most."""
    delta = np.abs(after - before)
    order = np.argsort(-delta, kind="stable")[:n]
    return [(int(i), float(before[i]), float(after[i])) for i in order]


def _prob(p: float) -> str:
    return f"{p:.3f}" if p >= 0.01 else f"{p:.2e}"


class AblationDiff(QWidget):
    """Under the candidates: how the ablation moved the distribution at the selected position.

    One line (a toggle with the summary) when collapsed; expanded, the full heading and the movers table.
    It starts expanded only where the candidates keep room for all their labelled bars; after a click
    it stays as the person left it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setCheckable(True)
        self.toggle.setAutoRaise(True)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setToolTip("Show or hide the biggest movers (the candidates keep their rows either way)")
        self.toggle.clicked.connect(self._on_toggle_clicked)
        self.user_expanded: bool | None = None  # None until the person chooses
        # the one-line summary wraps rather than being cut: it is the ablation's headline after every step
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setObjectName("ablation-summary")
        self.heading = QLabel()
        self.heading.setWordWrap(True)
        self.heading.setObjectName("caption")
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["token", "before", "after", "change"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setDefaultSectionSize(18)
        self.table.setMaximumHeight(26 + 18 * N_MOVERS)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(2)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.toggle, 0, Qt.AlignmentFlag.AlignTop)
        top.addWidget(self.summary, 1)
        layout.addLayout(top)
        layout.addWidget(self.heading)
        layout.addWidget(self.table)
        self.rows: list[tuple[int, float, float]] = []
        self.set_expanded(False)
        self.hide()

    @property
    def expanded(self) -> bool:
        return self.toggle.isChecked()

    def set_expanded(self, on: bool) -> None:
        changed = on != self.toggle.isChecked() or on != self.heading.isVisibleTo(self)
        self.toggle.setChecked(on)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.heading.setVisible(on)
        self.table.setVisible(on and bool(self.rows))
        if changed:  # a dragged splitter handle stays where it was otherwise
            self._fit_in_splitter()

    def _fit_in_splitter(self) -> None:
        """In the candidates' splitter: take the height this state needs (the rest stays the chart's)."""
        splitter = self.parentWidget()
        if not isinstance(splitter, QSplitter) or not self.isVisible():
            return
        sizes = splitter.sizes()
        i = splitter.indexOf(self)
        total = sum(sizes)
        if i < 0 or total <= 0:
            return
        want = min(self.sizeHint().height(), total - 80)
        others = total - want
        rest = [s for j, s in enumerate(sizes) if j != i] or [0]
        scale = others / max(sum(rest), 1)
        splitter.setSizes([want if j == i else int(s * scale) for j, s in enumerate(sizes)])

    def _on_toggle_clicked(self, on: bool) -> None:
        self.user_expanded = on
        self.set_expanded(on)

    def expanded_height(self) -> int:
        """About what the expanded table needs (its heading wraps to two or three lines)."""
        return self.table.maximumHeight() + 3 * self.heading.fontMetrics().height() + 30

    def show_movers(self, heading: str, rows: list[tuple[int, float, float]], vocab: tuple[str, ...],
                    summary: str = "", expand: bool | None = None) -> None:
        """`summary`: the collapsed one-liner; `expand`: the default while the person has not chosen."""
        self.rows = rows
        self.heading.setText(heading)
        self.summary.setText(summary or "Ablation effect")
        self.summary.setToolTip(heading)
        on = self.user_expanded if self.user_expanded is not None else bool(expand)
        self.set_expanded(on)
        self.table.setRowCount(len(rows))
        for r, (tid, p0, p1) in enumerate(rows):
            token = vocab[tid] if tid < len(vocab) else f"<{tid}>"
            d = p1 - p0
            items = [QTableWidgetItem(token), QTableWidgetItem(_prob(p0)), QTableWidgetItem(_prob(p1)),
                     QTableWidgetItem(f"{d:+.2e}" if abs(d) < 0.001 else f"{d:+.3f}")]
            items[3].setForeground(QColor(30, 140, 60) if d > 0 else QColor(200, 50, 50))
            for c, item in enumerate(items):
                self.table.setItem(r, c, item)
        if not self.isVisible():
            self.show()
            self._fit_in_splitter()


class AblationController(QObject):
    """Owns the ablation UI around the head grid and the logits panel; panels stay unaware of it."""

    def __init__(self, state: InspectorState, client: EngineClient, grid: HeadGrid, candidates: LogitsPanel,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state, self.client, self.grid = state, client, grid
        self.gates: dict[str, tuple[float, ...]] = {}  # capture name -> per-head gates (as the model has them)
        self.baseline = None  # the last trace without gates: the "before" of the comparison
        self._pending_gates_rid = 0
        # where the trace before the ablation does not reach (a later step), the "before" is computed: the same
        # tokens with every gate open, one forward per (trace, position), asked for only while ablated
        self._ungated: tuple[object, int, np.ndarray] | None = None  # (trace, position, logits): the one on screen
        self._ungated_rid = 0
        self._ungated_for: tuple[object, int] | None = None  # what the newest request asked for

        self.overlay = QGraphicsPathItem()
        pen = QPen(CROSS_COLOR)
        pen.setWidthF(2.0)
        pen.setCosmetic(True)
        self.overlay.setPen(pen)
        self.overlay.setZValue(8)
        self.shadow = QGraphicsPathItem()
        shadow_pen = QPen(CROSS_SHADOW)
        shadow_pen.setWidthF(4.0)
        shadow_pen.setCosmetic(True)
        self.shadow.setPen(shadow_pen)
        self.shadow.setZValue(7)
        self.scaled_overlay = QGraphicsPathItem()
        spen = QPen(SCALED_COLOR)
        spen.setWidthF(2.0)
        spen.setCosmetic(True)
        spen.setStyle(Qt.PenStyle.DashLine)
        self.scaled_overlay.setPen(spen)
        self.scaled_overlay.setZValue(8)
        for item in (self.shadow, self.overlay, self.scaled_overlay):
            grid.add_overlay(item)

        self.status = QLabel()
        self.status.setObjectName("caption")
        self.status.setWordWrap(True)
        grid.add_footer(self.status)
        self.candidates = candidates
        self.diff = AblationDiff()
        candidates.add_footer(self.diff)

        grid.cell_clicked.connect(self._on_cell_clicked)
        grid.geometry_changed.connect(self.update_overlay)
        state.model_changed.connect(self._on_model)
        state.trace_changed.connect(self._on_trace)
        state.kind_changed.connect(lambda _k: self.update_overlay())  # the crosses of the kind on the grid
        state.query_changed.connect(lambda _q: self.update_diff())  # the movers at the selected position
        client.result_ready.connect(self._on_result)
        self._update_status()

    # -- requests --------------------------------------------------------------------------------
    def gate(self, kind: str, layer: int, head: int) -> float:
        g = self.gates.get(capture_name(kind, layer))
        return float(g[head]) if g is not None else 1.0

    def set_gates(self, changes: list[tuple[str, int, int, float]], clear: bool = False) -> int | None:
        if self.state.model is None:
            return None
        trace = self.state.trace
        if trace is not None and not trace.gates:
            self.baseline = trace  # the un-ablated distribution to compare against
        if clear and not changes:
            self.baseline = None
        self._pending_gates_rid = self.client.call("gates", jobs.set_gates(changes, clear))
        return self._pending_gates_rid

    def ablate(self, layer: int, head: int, value: float = 0.0, kind: str | None = None) -> int | None:
        return self.set_gates([(kind or self.state.kind, layer, head, value)])

    def toggle(self, layer: int, head: int, kind: str | None = None) -> int | None:
        kind = kind or self.state.kind
        return self.ablate(layer, head, 1.0 if self.gate(kind, layer, head) != 1 else 0.0, kind)

    def ablate_layer(self, layer: int, value: float = 0.0, kind: str | None = None) -> int | None:
        kind = kind or self.state.kind
        return self.set_gates([(kind, layer, h, value) for h in range(self.state.n_heads)])

    def clear(self) -> int | None:
        return self.set_gates([], clear=True)

    def scale_dialog(self, layer: int, head: int) -> None:
        kind = self.state.kind
        value, ok = QInputDialog.getDouble(self.grid, "Scale head", f"Multiply the output of layer {layer} head {head} "
                                           "by (0 = ablated, 1 = untouched):", self.gate(kind, layer, head), 0.0, 1.0, 2)
        if ok:
            self.ablate(layer, head, value, kind)

    # -- grid ------------------------------------------------------------------------------------
    def _on_cell_clicked(self, layer: int, head: int, button: Qt.MouseButton, modifiers: Qt.KeyboardModifier) -> None:
        if button == Qt.MouseButton.RightButton:
            self.menu_for(layer, head).popup(QCursor.pos())
        elif button == Qt.MouseButton.LeftButton and modifiers & Qt.KeyboardModifier.ControlModifier:
            self.toggle(layer, head)

    def menu_for(self, layer: int, head: int) -> QMenu:
        kind = self.state.kind
        menu = QMenu(self.grid)
        g = self.gate(kind, layer, head)
        if g == 1:
            menu.addAction(f"Ablate head {layer}.{head}", lambda: self.ablate(layer, head, 0.0, kind))
        else:
            menu.addAction(f"Restore head {layer}.{head} (now ×{g:g})", lambda: self.ablate(layer, head, 1.0, kind))
        menu.addAction("Scale head…", lambda: self.scale_dialog(layer, head))
        menu.addSeparator()
        menu.addAction(f"Ablate whole layer {layer}", lambda: self.ablate_layer(layer, 0.0, kind))
        restore = menu.addAction(f"Restore layer {layer}", lambda: self.ablate_layer(layer, 1.0, kind))
        restore.setEnabled(capture_name(kind, layer) in self.gates)
        clear = menu.addAction("Clear all ablations", self.clear)
        clear.setEnabled(bool(self.gates))
        self.menu = menu  # kept for tests
        return menu

    def update_overlay(self) -> None:
        crosses, dashed = QPainterPath(), QPainterPath()
        grid = self.grid
        if grid.cell_count:
            for name, values in self.gates.items():
                kind, layer = parse_capture_name(name)
                if kind != self.state.kind or layer >= grid.shape[0]:
                    continue
                for head, v in enumerate(values):
                    if v == 1 or head >= grid.shape[1]:
                        continue
                    if v == 0:
                        r = grid.cell_rect(layer, head, inset=0.15)
                        crosses.moveTo(r.topLeft())
                        crosses.lineTo(r.bottomRight())
                        crosses.moveTo(r.bottomLeft())
                        crosses.lineTo(r.topRight())
                    else:
                        dashed.addRect(grid.cell_rect(layer, head, inset=0.08))
        self.overlay.setPath(crosses)
        self.shadow.setPath(crosses)
        self.scaled_overlay.setPath(dashed)

    def _update_status(self) -> None:
        off, scaled = count_gates(self.gates)
        if not off and not scaled:
            self.status.setText("No heads ablated · right-click a head (or Ctrl+click) to ablate or scale it")
            return
        parts = [f"{off} head{'s' if off != 1 else ''} ablated"] + ([f"{scaled} scaled"] if scaled else [])
        self.status.setText(" · ".join(parts) + " (✕ = off, dashed = scaled) · right-click → Clear all ablations")

    # -- state -----------------------------------------------------------------------------------
    def _on_model(self, _info: object) -> None:
        self.gates, self.baseline = {}, None  # a freshly loaded model has no gates
        self._ungated = self._ungated_for = None
        self.update_overlay()
        self._update_status()
        self.diff.hide()

    def _on_trace(self, trace: object) -> None:
        self.gates = dict(trace.gates)
        if not trace.gates:
            self.baseline = None  # nothing ablated: the next ablation compares with this trace
        self.update_overlay()
        self._update_status()
        self.update_diff()

    def _on_result(self, rid: int, op: str, payload: object) -> None:
        if op == "gates" and isinstance(payload, dict):  # no session yet: the gates wait for the next one
            self.gates = dict(payload["gates"])
            self.update_overlay()
            self._update_status()
        elif op == "ungated" and rid == self._ungated_rid and isinstance(payload, dict) and "logits" in payload:
            self._ungated = (payload["trace"], int(payload["position"]), payload["logits"])
            if payload["trace"] is self.state.trace:
                self.update_diff()

    def _before(self, trace, pos: int) -> np.ndarray | None:  # noqa: ANN001 - engine.Trace
        """The un-ablated logits at `pos`: from the trace before the ablation while it has the same tokens
        there, else computed (None until the answer comes; asked for once)."""
        base = self.baseline
        if (base is not None and base.logit_rows is not None and len(base) > pos
                and base.token_ids[: pos + 1] == trace.token_ids[: pos + 1] and base.source_ids == trace.source_ids):
            return base.logits_at(pos)
        if self._ungated is not None and self._ungated[0] is trace and self._ungated[1] == pos:
            return self._ungated[2]
        asked = self._ungated_for
        if asked is None or asked[0] is not trace or asked[1] != pos:
            self._ungated_for = (trace, pos)
            self._ungated_rid = self.client.call("ungated", jobs.ungated_logits(trace, pos))
        return None

    def update_diff(self) -> None:
        s, trace = self.state, self.state.trace
        if trace is None or not trace.gates or trace.logit_rows is None or s.model is None:
            self.diff.hide()
            return
        pos = min(s.query, len(trace) - 1)
        before_logits = self._before(trace, pos)
        if before_logits is None:
            self.diff.show_movers(f"Ablated: working out the distribution at position {pos} without the ablation "
                                  "(one forward pass) to compare with.", [], (),
                                  summary=f"Ablation at position {pos}: comparing with the un-ablated model …")
            return
        before = distribution(before_logits, 1.0)
        after = distribution(trace.logits_at(pos), 1.0)
        tv = 0.5 * float(np.abs(after - before).sum())
        rows = biggest_movers(before, after)
        top0, top1 = int(np.argmax(before)), int(np.argmax(after))
        vocab = s.model.vocab
        same = "top token unchanged" if top0 == top1 else f"top token “{vocab[top0]}” → “{vocab[top1]}”"
        where = f"position {pos}" + (f" (with “{trace.tokens[pos]}” in place)" if trace.family == "encoder" else "")
        # expanded only where the bars keep their readable rows beside the table (else one line)
        room = self.candidates.splitter.height() - self.candidates.chart_height()
        short_same = "top unchanged" if top0 == top1 else f"top → “{vocab[top1]}”"
        self.diff.show_movers(f"Ablation effect at {where}, T=1: total variation {tv:.3f}, {same}. "
                              "Biggest movers:", rows, vocab,
                              summary=f"Ablation at {pos}: TV {tv:.3f}, {short_same}",
                              expand=room >= self.diff.expanded_height())
