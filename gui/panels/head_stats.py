"""Head statistics dock: every head of every kind with its entropy, previous-token, induction, sink and
mean-distance scores (engine.analysis.head_statistics, computed in the worker), as a sortable table.
Selecting a row shows that head. It also feeds the head grid's "colour by" mode (gui/panels/heads.py: one
colour per head for a statistic); "colour grid by" here is the same choice as the grid's own box."""

from __future__ import annotations

import logging
import math

from PySide6.QtCore import QSignalBlocker, Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core import jobs
from ..core.state import InspectorState
from ..core.worker import EngineClient
from ..rendering.head_statistics import statistic_arrays
from ..widgets.refreshing import RefreshWhenShown
from .heads import HeadGrid

log = logging.getLogger(__name__)

# (HeadStat field, column title, tooltip)
COLUMNS = (
    ("kind", "kind", "attention kind"),
    ("layer", "layer", ""),
    ("head", "head", ""),
    ("entropy", "entropy", "mean row entropy in bits (0 = always one key)"),
    ("prev_token", "prev-token", "mean weight on the key just before the query"),
    ("induction", "induction", "mean weight on the token after the previous occurrence, on a repeated random "
                               "sequence (main stack only)"),
    ("sink", "sink", "mean weight on the first key"),
    ("distance", "mean distance", "mean |query − key| weighted by attention"),
    ("sink_share", "sink (gpt-oss)", "mean share of a row that went to the attention sink (a softmax term with no "
                                     "value: why the row's weights sum to less than one); shown for models with sinks"),
)
STATISTICS = tuple(c[0] for c in COLUMNS[3:-1])  # the grid's colour-by choices (the sink share is not one)
SINK_COLUMN = len(COLUMNS) - 1


class _Item(QTableWidgetItem):
    """Sorts by number (NaN last), shows a rounded value."""

    def __init__(self, value: object) -> None:
        if value is None:
            text, value = "—", float("nan")  # sorts last, as NaN does
        elif isinstance(value, float):
            text = "—" if math.isnan(value) else f"{value:.3f}"
        else:
            text = str(value)
        super().__init__(text)
        self.key = value
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        a, b = self.key, getattr(other, "key", None)
        if isinstance(a, float) and isinstance(b, float):
            if math.isnan(a) or math.isnan(b):
                return not math.isnan(a) and math.isnan(b)
            return a < b
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return a < b
        return str(a) < str(b)


class HeadStatsPanel(RefreshWhenShown):
    def __init__(self, state: InspectorState, client: EngineClient, grid: HeadGrid,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state, self.client = state, client
        self.stats: list = []  # engine.analysis.HeadStat of the trace on screen
        self.stats_trace = None
        self._latest = 0
        self._wanted: int | None = None  # id of the trace asked for
        self.requests = 0
        self._in_flight = 0  # at most one request queued: a long run's progress must not pile up work
        self.grid = grid

        self.color_box = QComboBox()  # mirrors the grid's own "colour by" box
        for i in range(grid.color_box.count()):
            self.color_box.addItem(grid.color_box.itemText(i), grid.color_box.itemData(i))
        self.color_box.setToolTip("Colour each head of the head grid by this statistic (or show its pattern)")
        self.message = QLabel()
        self.message.setObjectName("caption")
        self.message.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c[1] for c in COLUMNS])
        for i, (_k, _t, tip) in enumerate(COLUMNS):
            if tip:
                self.table.horizontalHeaderItem(i).setToolTip(tip)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(20)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setSortingEnabled(True)
        top = QHBoxLayout()
        top.addWidget(QLabel("colour grid by"))
        top.addWidget(self.color_box)
        top.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.message)

        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.color_box.currentIndexChanged.connect(lambda _i: grid.set_color_by(self.color_box.currentData()))
        grid.color_by_changed.connect(self._on_grid_color_by)
        state.model_changed.connect(self._on_model)
        state.trace_changed.connect(lambda _t: self._timer.start())
        client.result_ready.connect(self._on_result)
        client.busy_changed.connect(self._on_busy)
        self.message.setText("Open a model to see head statistics")

    @property
    def color_by(self) -> str | None:
        """The statistic the head grid is coloured by (None: patterns): it needs the numbers even when this
        dock is hidden."""
        return self.grid.color_by

    def _on_grid_color_by(self, key: str | None) -> None:
        with QSignalBlocker(self.color_box):
            self.color_box.setCurrentIndex(self.color_box.findData(key))
        self._timer.start()

    def _on_model(self, _info: object) -> None:
        self.stats, self.stats_trace, self._wanted, self._latest = [], None, None, 0
        self.table.setRowCount(0)
        self.message.setText("Type a prompt")

    def refresh(self) -> None:
        trace = self.state.trace
        if trace is None or self.state.model is None:
            return
        if id(trace) == self._wanted or not (self.on_screen() or self.color_by) or self._in_flight or self.client.running:
            return  # asked again when the answer, or the end of the run, arrives
        self._wanted = id(trace)
        self.requests += 1
        self._latest = self._in_flight = self.client.call("head_stats", jobs.head_statistics(trace))
        self.message.setText("computing … (the induction score runs the model on repeated random tokens once)")

    def _on_busy(self, busy: bool, _op: str) -> None:
        if not busy:  # nothing is in flight any more (answered, dropped or failed): catch up
            self._in_flight = 0
            self._timer.start()

    def _on_result(self, rid: int, op: str, payload: object) -> None:
        if op == "head_stats" and rid == self._in_flight:
            self._in_flight = 0
            self._timer.start()  # the selection may have moved on meanwhile
        if op != "head_stats" or rid != self._latest or payload["trace"] is not self.state.trace \
                or payload.get("stale"):
            return
        self.show_stats(payload["trace"], payload["stats"])

    def show_stats(self, trace: object, stats: list) -> None:
        self.stats, self.stats_trace = stats, trace
        header = self.table.horizontalHeader()
        column, order = header.sortIndicatorSection(), header.sortIndicatorOrder()
        self.table.setSortingEnabled(False)
        with QSignalBlocker(self.table):  # refilling is not the person choosing a row
            self.table.setRowCount(len(stats))
            for r, st in enumerate(stats):
                for c, (key, _t, _tip) in enumerate(COLUMNS):
                    item = _Item(getattr(st, key))
                    item.setData(Qt.ItemDataRole.UserRole, r)
                    self.table.setItem(r, c, item)
            self.table.setSortingEnabled(True)
            if 0 <= column < len(COLUMNS):
                self.table.sortItems(column, order)
            self._select_current_row()
        self.table.setColumnHidden(SINK_COLUMN, all(st.sink_share is None for st in stats))
        n_gated = sum(1 for g in trace.gates.values() for v in g if v != 1)
        gated = f" · with {n_gated} head{'s' if n_gated != 1 else ''} ablated/scaled" if n_gated else ""
        self.message.setText(f"{len(stats)} heads on {len(trace)} tokens{gated}. Click a column to sort, "
                             "a row to show the head.")
        self.grid.set_statistics(trace, statistic_arrays(stats, trace.n_layers, trace.n_heads))

    def _select_current_row(self) -> None:
        """Highlight the head on screen (not whatever row index was selected before the refill)."""
        s = self.state
        self.table.clearSelection()
        for r in range(self.table.rowCount()):
            st = self.row_stat(r)
            if (st.kind, st.layer, st.head) == (s.kind, s.layer, s.head):
                self.table.selectRow(r)
                break

    def row_stat(self, row: int):  # noqa: ANN201 - HeadStat
        return self.stats[self.table.item(row, 0).data(Qt.ItemDataRole.UserRole)]

    def _on_row_selected(self) -> None:
        rows = {i.row() for i in self.table.selectedItems()}
        if len(rows) == 1 and self.stats:
            st = self.row_stat(rows.pop())
            self.state.select(kind=st.kind)  # first the kind: the layer range depends on it
            self.state.select(layer=st.layer, head=st.head, mean_heads=False)
