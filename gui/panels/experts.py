"""Experts dock (mixture-of-experts models): tokens (columns) × MoE layers (rows), each cell coloured by the expert
the router weighted most for that token; hovering a cell lists the k experts it chose and their weights. Below, the
selected layer's expert load over the sequence (each expert's share of the choices up to each token, one line per
expert in its colour), and the caption gives the whole sequence's shares. Reads `trace.routing(layer)` (engine), which
holds exactly what the forward weighted the experts with.

Right-click a cell to ablate (or restore) one of the experts that token chose in that layer, or to restore every
expert: the engine multiplies the router's weight for it by 0 (HFModel.set_expert_gate) and the session recomputes,
so the candidates move; ablated experts are named in the caption."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QCursor
from PySide6.QtWidgets import QMenu, QToolTip, QVBoxLayout, QWidget

from engine import EngineError

from ..core import jobs
from ..core.arrivals import PENDING, PLACEHOLDER, Arrivals
from ..core.state import InspectorState
from ..core.worker import EngineClient
from ..widgets.steady_label import SteadyLabel

# 20 distinguishable colours (matplotlib's tab20 order); experts beyond 20 reuse them (the tooltip says which)
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
    (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138),
    (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141),
    (158, 218, 229)], dtype=np.uint8)
EMPTY = "Experts: this model has no mixture of experts (open e.g. a Mixtral, Qwen3-MoE or gpt-oss checkpoint)."


def top_expert_image(trace) -> tuple[list[int], np.ndarray]:  # noqa: ANN001 - engine.Trace
    """-> (MoE layers, RGB uint8 [layers, tokens, 3]) coloured by each token's top expert."""
    layers = list(trace.moe_layers) if hasattr(trace, "moe_layers") else []
    if not layers:
        return [], np.zeros((0, 0, 3), dtype=np.uint8)
    top = np.stack([trace.routing(layer).top_expert for layer in layers])  # (layers, tokens)
    return layers, PALETTE[top % len(PALETTE)]


def describe_choice(trace, layer: int, token: int) -> str:  # noqa: ANN001 - engine.Trace
    r = trace.routing(layer)
    order = np.argsort(-r.weights[token])
    chosen = ", ".join(f"expert {int(r.experts[token, i])} ({float(r.weights[token, i]):.2f})" for i in order)
    return f"layer {layer} · token {token} {trace.tokens[token]!r}: {chosen}"


def running_share(trace, layer: int) -> np.ndarray:  # noqa: ANN001 - engine.Trace
    """[experts, tokens]: each expert's share of all choices made up to and including each token."""
    r = trace.routing(layer)
    n = r.n_experts if r.n_experts is not None else int(r.experts.max(initial=-1)) + 1
    counts = np.zeros((n, len(r.experts)), dtype=np.float64)
    np.add.at(counts, (r.experts.T, np.arange(len(r.experts))[None, :].repeat(r.k, 0)), 1.0)
    return np.cumsum(counts, axis=1) / (r.k * np.arange(1, len(r.experts) + 1))[None, :]


def gated_note(trace) -> str:  # noqa: ANN001 - engine.Trace
    """" · ablated: layer 1 expert 3, …" (scaled gates with their factor); empty when every expert is on."""
    gates = getattr(trace, "expert_gates", None) or {}
    parts = [f"layer {layer} expert {e}" + ("" if v == 0 else f" ×{v:g}")
             for layer, g in sorted(gates.items()) for e, v in sorted(g.items())]
    return " · ablated: " + ", ".join(parts) if parts else ""


def describe_load(trace, layer: int, top: int = 5) -> str:  # noqa: ANN001 - engine.Trace
    r = trace.routing(layer)
    load = r.load()
    busiest = np.argsort(-load)[:top]
    share = ", ".join(f"{int(e)}: {load[e] / max(1, load.sum()):.0%}" for e in busiest if load[e])
    return f"layer {layer} load (share of the {r.k} choices per token) · {share}"


class ExpertsPanel(QWidget):
    def __init__(self, state: InspectorState, client: EngineClient | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.arrivals = Arrivals(self)  # the routing: at once, or fetched in the background (redrawn then)
        self.state, self.client = state, client
        self.layers: list[int] = []
        self.load_share: np.ndarray | None = None  # [experts, tokens] drawn in the load plot
        self.graphics = pg.GraphicsLayoutWidget()
        self.plot = self.graphics.addPlot()
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.invertY(True)
        self.plot.setLabel("bottom", "token")
        self.plot.setLabel("left", "MoE layer")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.graphics.nextRow()
        self.load_plot = self.graphics.addPlot()  # the selected layer's load over the sequence
        self.load_plot.setMenuEnabled(False)
        self.load_plot.hideButtons()
        self.load_plot.setLabel("left", "share")
        self.load_plot.getAxis("left").enableAutoSIPrefix(False)  # shares, not "x0.001"
        self.load_plot.setXLink(self.plot)
        self.load_plot.setMaximumHeight(140)
        self.load_lines: list = []
        self.caption = SteadyLabel()
        self.caption.setContentsMargins(4, 0, 4, 0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.caption)
        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.graphics.scene().sigMouseClicked.connect(self._on_clicked)
        state.trace_changed.connect(lambda _t: self.redraw())
        state.layer_changed.connect(lambda _v: self._show_caption())
        self.caption.setText(EMPTY)

    def redraw(self) -> None:
        trace = self.state.trace
        layers = list(getattr(trace, "moe_layers", None) or [])
        try:
            if layers and self.arrivals.read(trace, ("routing",), lambda t: [t.routing(n) for n in layers],
                                             self.redraw) is PENDING:
                self.layers = []  # nothing reads the routing until it is here (the last picture stays)
                self.caption.setText(f"Experts: routing {PLACEHOLDER}")
                return
            self.layers, rgb = top_expert_image(trace) if trace is not None else ([], None)
        except EngineError as exc:  # a remote engine that keeps the routing went away before sending it
            self.caption.setText(str(exc))
            return
        if not self.layers:
            self.image.clear()
            self._draw_load(None)
            self.caption.setText(EMPTY)
            return
        self.image.setImage(rgb, autoLevels=False)
        self.image.setRect(QRectF(0, 0, rgb.shape[1], rgb.shape[0]))
        self.plot.getAxis("left").setTicks([[(i + 0.5, str(layer)) for i, layer in enumerate(self.layers)]])
        self._show_caption()

    def _selected_layer(self) -> int | None:
        if not self.layers:
            return None
        return self.state.layer if self.state.layer in self.layers else self.layers[0]

    def _draw_load(self, share: np.ndarray | None) -> None:
        """One line per expert (updated in place; lines added or hidden as the expert count changes)."""
        n = 0 if share is None else share.shape[0]
        while len(self.load_lines) < n:
            color = PALETTE[len(self.load_lines) % len(PALETTE)]
            self.load_lines.append(self.load_plot.plot(pen=pg.mkPen(tuple(int(c) for c in color), width=1.5)))
        x = np.arange(share.shape[1]) + 0.5 if share is not None else None
        for i, line in enumerate(self.load_lines):
            if i < n:
                line.setData(x, share[i])
                line.show()
            else:
                line.hide()

    def _show_caption(self) -> None:
        trace, layer = self.state.trace, self._selected_layer()
        if trace is None or layer is None:
            return
        self.load_share = running_share(trace, layer)
        self._draw_load(self.load_share)
        head = (f"{len(self.layers)} MoE layers × {len(trace)} tokens, coloured by each token's top expert "
                f"({trace.n_experts} experts) · ")
        self.caption.setText(head + describe_load(trace, layer) + gated_note(trace))

    def cell_at(self, scene_pos: QPointF) -> tuple[int, int] | None:
        if not self.layers or self.state.trace is None:
            return None
        p = self.plot.getViewBox().mapSceneToView(scene_pos)
        row, token = int(np.floor(p.y())), int(np.floor(p.x()))
        if 0 <= row < len(self.layers) and 0 <= token < len(self.state.trace):
            return self.layers[row], token
        return None

    # -- expert ablation -------------------------------------------------------------------------------
    def expert_gate(self, layer: int, expert: int) -> float:
        trace = self.state.trace
        return float(((getattr(trace, "expert_gates", None) or {}).get(layer) or {}).get(expert, 1.0))

    def set_expert_gates(self, changes: list[tuple[int, int, float]], clear: bool = False) -> int | None:
        """Ask the engine to gate experts; the recomputed trace comes back through the "gates" operation."""
        if self.client is None or self.state.model is None:
            return None
        return self.client.call("gates", jobs.set_expert_gates(changes, clear))

    def toggle_expert(self, layer: int, expert: int) -> int | None:
        return self.set_expert_gates([(layer, expert, 1.0 if self.expert_gate(layer, expert) != 1 else 0.0)])

    def menu_for(self, layer: int, token: int) -> QMenu:
        """Ablate / restore each expert this token chose in `layer`, and restore every expert."""
        menu = QMenu(self)
        r = self.state.trace.routing(layer)
        for e in sorted(int(x) for x in r.experts[token]):
            off = self.expert_gate(layer, e) != 1
            action = menu.addAction(f"{'Restore' if off else 'Ablate'} expert {e} of layer {layer}")
            action.triggered.connect(lambda _c=False, e=e: self.toggle_expert(layer, e))
        gated = getattr(self.state.trace, "expert_gates", None) or {}
        restore = menu.addAction("Restore every expert")
        restore.setEnabled(bool(gated))
        restore.triggered.connect(lambda _c=False: self.set_expert_gates([], clear=True))
        return menu

    def _on_clicked(self, event) -> None:  # noqa: ANN001 - pyqtgraph MouseClickEvent
        if event.button() != Qt.MouseButton.RightButton:
            return
        cell = self.cell_at(event.scenePos())
        if cell is not None and self.client is not None:
            event.accept()
            self.menu_for(*cell).exec(QCursor.pos())

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        cell = self.cell_at(scene_pos)
        if cell is None:
            QToolTip.hideText()
        else:
            QToolTip.showText(QCursor.pos(), describe_choice(self.state.trace, *cell), self.graphics)
