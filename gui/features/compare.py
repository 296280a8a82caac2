"""Compare two prompts: run a second prompt on the same model (one forward in the worker, the open
session untouched) and show the selected head for both, their difference on the shared prefix, and
the two next-token distributions side by side. The Patch tab (gui/features/patching.py) runs the prompt on
screen with one component taken from the second prompt, and sweeps every head."""

from __future__ import annotations

import logging

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from engine import EngineError, distribution

from ..core import jobs
from ..core.arrivals import PENDING, PLACEHOLDER, Arrivals
from ..core.state import InspectorState
from ..core.worker import EngineClient
from ..rendering import colormaps, display
from ..rendering.labels import kind_name
from ..widgets.token_axis import TokenAxis
from .patching import PatchPanel

log = logging.getLogger(__name__)

DIFF_MAP = "CET-D1"
N_CANDIDATES = 8


def shared_prefix(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> int:
    if a is None or b is None:
        return 0
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class _Heatmap:
    def __init__(self, layout: pg.GraphicsLayoutWidget, col: int) -> None:
        self.left, self.bottom = TokenAxis("left"), TokenAxis("bottom")
        self.plot = layout.addPlot(row=0, col=col, axisItems={"left": self.left, "bottom": self.bottom})
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.invertY(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        pen = pg.mkPen((255, 80, 80), width=1.5, style=Qt.PenStyle.DashLine)
        self.h_line = pg.InfiniteLine(angle=0, pen=pen)  # where the two sequences part
        self.v_line = pg.InfiniteLine(angle=90, pen=pen)
        for line in (self.h_line, self.v_line):
            line.hide()
            self.plot.addItem(line)
        self.pattern: np.ndarray | None = None

    def show(self, pattern: np.ndarray, levels: tuple[float, float], lut: np.ndarray, title: str,
             queries: tuple[str, ...], keys: tuple[str, ...], causal: bool = False,
             split: tuple[int, int] | None = None) -> None:
        self.pattern = pattern
        n_q, n_k = pattern.shape
        img = pattern.astype(np.float32)  # a copy
        if causal:
            img[display.future_mask(n_q, n_k)] = np.nan  # transparent, as in the large view
        self.image.setLookupTable(lut)
        self.image.setImage(img, autoLevels=False, levels=levels)
        for line, at, n in ((self.h_line, split[0] if split else None, n_q), (self.v_line, split[1] if split else None, n_k)):
            line.setVisible(at is not None and 0 < at < n)
            if at is not None:
                line.setPos(at - 0.5)
        self.image.setRect(QRectF(-0.5, -0.5, n_k, n_q))
        self.left.set_tokens(queries)
        self.bottom.set_tokens(keys)
        self.plot.setRange(xRange=(-0.5, n_k - 0.5), yRange=(-0.5, n_q - 0.5), padding=0)
        self.plot.setTitle(title, size="9pt")

    def clear(self, title: str = "") -> None:
        self.pattern = None
        self.h_line.hide()
        self.v_line.hide()
        self.image.clear()
        self.left.set_tokens(())
        self.bottom.set_tokens(())
        self.plot.setTitle(title, size="9pt")


class CompareDialog(QDialog):
    def __init__(self, state: InspectorState, client: EngineClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Compare two prompts")
        self.state, self.client = state, client
        self.arrivals = Arrivals(self)  # both patterns: at once, or fetched in the background (redrawn then)
        self.other = None  # the second prompt's Trace
        self._latest = 0
        self.diff: np.ndarray | None = None

        self.prompt_edit = QLineEdit()
        self.prompt_edit.setPlaceholderText("second prompt (same model, same ablations)")
        self.source_edit = QLineEdit()
        self.source_edit.setPlaceholderText("second source text (encoder)")
        self.run_button = QPushButton("Run")
        self.run_button.setDefault(True)
        top = QHBoxLayout()
        top.addWidget(self.source_edit, 1)
        top.addWidget(self.prompt_edit, 1)
        top.addWidget(self.run_button)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.caption.setObjectName("caption")
        self.graphics = pg.GraphicsLayoutWidget()
        self.maps = [_Heatmap(self.graphics, c) for c in range(3)]
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["token", "p (this prompt)", "p (second prompt)"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setDefaultSectionSize(18)
        self.table.setMaximumHeight(200)
        attention = QWidget()
        inner = QVBoxLayout(attention)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.addWidget(self.caption)
        inner.addWidget(self.graphics, 1)
        inner.addWidget(QLabel("Next-token distributions after the last token of each (T=1):"))
        inner.addWidget(self.table)
        self.patch = PatchPanel(state, client, lambda: (self.prompt_edit.text(), self.source_edit.text() or None))
        self.tabs = QTabWidget()
        self.tabs.addTab(attention, "Attention")
        self.tabs.addTab(self.patch, "Patch")
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.tabs, 1)

        self.run_button.clicked.connect(self.run)
        self.prompt_edit.returnPressed.connect(self.run)
        client.result_ready.connect(self._on_result)
        state.selection_changed.connect(self.redraw)
        state.trace_changed.connect(lambda _t: self.redraw())
        state.display_changed.connect(self.redraw)
        state.model_changed.connect(self._on_model)
        self._on_model(state.model)  # the shell themes its plots (style lives above features)
        self.resize(1100, 650)

    def _on_model(self, info: object) -> None:
        self.other = None
        enc_dec = info is not None and info.family == "encoder-decoder"
        self.source_edit.setVisible(enc_dec)
        self.prompt_edit.setPlaceholderText("second decoder prompt (may be empty)" if enc_dec else
                                            "second prompt (same model, same ablations)")
        self.redraw()

    def run(self) -> int | None:
        if self.state.model is None:
            self.caption.setText("Open a model first.")
            return None
        self.caption.setText("running the second prompt …")
        self._latest = self.client.call("compare", jobs.run_other(self.prompt_edit.text(),
                                                                          self.source_edit.text() or None))
        return self._latest

    def _on_result(self, rid: int, op: str, payload: object) -> None:
        if op == "compare" and rid == self._latest:
            self.other = payload["trace"]
            self.redraw()

    # -- drawing -------------------------------------------------------------------------------
    def _rows_and_keys(self, trace, kind: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple, tuple]:  # noqa: ANN001
        """(query ids, key ids, query tokens, key tokens) of `kind` in `trace`."""
        main, src = (trace.token_ids, trace.tokens), (trace.source_ids, trace.source_tokens)
        if kind == "cross":
            return main[0], src[0], main[1], src[1]
        if kind == "encoder" and trace.source_ids is not None:
            return src[0], src[0], src[1], src[1]
        return main[0], main[0], main[1], main[1]

    def _read(self, trace) -> object:  # noqa: ANN001
        """The pattern on screen of `trace` (its last logits row fetched too, for the table), or PENDING while
        it is on its way (fetched in the background; redrawn then)."""
        s = self.state
        kind, layer, head, mean = s.kind, s.layer, s.head, s.mean_heads

        def read(t) -> np.ndarray:  # noqa: ANN001
            if t.logit_rows is not None:
                t.logits_at(len(t) - 1)
            return t.attention(kind, layer).mean(0) if mean else t.attention_head(kind, layer, head)

        return self.arrivals.read(trace, ("compare", kind, layer, head, mean), read, self.redraw)

    def redraw(self) -> None:
        s, a, b = self.state, self.state.trace, self.other
        if s.model is None or a is None or b is None or s.kind not in a.kinds or b.model_name != a.model_name:
            for m in self.maps:
                m.clear()
            self.table.setRowCount(0)
            self.diff = None
            self.caption.setText("Type a second prompt and press Run: the selected head is shown for both "
                                 "prompts and their difference on the shared prefix.")
            return
        try:
            pa, pb = self._read(a), self._read(b)
        except EngineError as exc:  # the engine went away before sending a pattern
            self.caption.setText(str(exc))
            return
        if pa is PENDING or pb is PENDING:
            self.caption.setText(f"layer {s.layer}: {PLACEHOLDER}")
            return
        qa, ka, qta, kta = self._rows_and_keys(a, s.kind)
        qb, kb, qtb, ktb = self._rows_and_keys(b, s.kind)
        nq, nk = shared_prefix(qa, qb), shared_prefix(ka, kb)  # where the two sequences part
        mq, mk = min(len(qa), len(qb)), min(len(ka), len(kb))  # compared position by position up to here
        causal = s.kind == "self"
        lut = colormaps.lookup_table(s.colormap)
        img_a, levels = display.scaled(pa, s.log_scale)
        img_b, _ = display.scaled(pb, s.log_scale)
        head = "mean of heads" if s.mean_heads else f"head {s.head}"
        what = f"{kind_name(s.kind, s.model.family)} · layer {s.layer} · {head}"
        split = (nq, nk)
        self.maps[0].show(img_a, levels, lut, "this prompt", qta, kta, causal, split)
        self.maps[1].show(img_b, levels, lut, "second prompt", qtb, ktb, causal, split)
        if mq and mk:
            # aligned at the start: identical tokens up to the shared prefix (dashed lines), then each its own
            self.diff = pa[:mq, :mk] - pb[:mq, :mk]
            m = max(float(np.abs(self.diff).max()), 1e-6)
            diff_lut = colormaps.lookup_table(DIFF_MAP)
            labels_q = tuple(x if x == y else f"{x}|{y}" for x, y in zip(qta[:mq], qtb[:mq], strict=True))
            labels_k = tuple(x if x == y else f"{x}|{y}" for x, y in zip(kta[:mk], ktb[:mk], strict=True))
            self.maps[2].show(self.diff, (-m, m), diff_lut, f"this − second (±{m:.3g}; red dashes: end of the "
                              "shared prefix)", labels_q, labels_k, causal, split)
            shared = (f"shared prefix: {nq} query × {nk} key tokens"
                      + (" (causal: rows inside it cannot differ)" if causal and nq == nk else ""))
        else:
            self.diff = None
            self.maps[2].clear("no shared prefix to compare")
            shared = "no shared prefix"
        self.caption.setText(f"{what} · {shared}")
        self._fill_table(a, b)

    def _fill_table(self, a, b) -> None:  # noqa: ANN001
        vocab = self.state.model.vocab
        if a.logit_rows is None or b.logit_rows is None:
            self.table.setRowCount(0)
            return
        pa = distribution(a.logits_at(len(a) - 1), 1.0)
        pb = distribution(b.logits_at(len(b) - 1), 1.0)
        ids: list[int] = []
        for i in list(np.argsort(-pa)[:N_CANDIDATES]) + list(np.argsort(-pb)[:N_CANDIDATES]):
            if int(i) not in ids:
                ids.append(int(i))
        ids.sort(key=lambda i: -max(pa[i], pb[i]))
        self.table.setRowCount(len(ids))
        for r, i in enumerate(ids):
            token = vocab[i] if i < len(vocab) else f"<{i}>"
            cells = [token, f"{pa[i]:.4f}", f"{pb[i]:.4f}"]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)
        self.candidates = ids
