"""The stepper (Step / Back / Run N / Stop / Reset) and the tokens as chips.

Click a chip to select it as the query; hover one to tint the others by how much the selected
head attends from it to them. Chips are pooled and reused, never rebuilt per step.
"""

from __future__ import annotations

import logging

import numpy as np
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QEnterEvent, QMouseEvent, QPainter, QPalette, QPen
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine import Trace

from ..core.state import InspectorState
from ..core.worker import EngineClient
from ..widgets.flow_layout import FlowLayout

log = logging.getLogger(__name__)

TINT = QColor(255, 120, 30)
SELECTED = QColor(224, 64, 64)


class TokenChip(QLabel):
    """One token. Painted by hand (not with style sheets): re-polishing hundreds of chips on every
    hover would lag; a repaint is cheap."""

    clicked = Signal(int)
    hovered = Signal(int)  # -1 when the mouse leaves

    def __init__(self, index: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.index = index
        self.role = "prompt"
        self.selected = False
        self.tint = 0.0
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setContentsMargins(6, 2, 6, 2)

    def set_role(self, role: str) -> None:
        if role != self.role:
            self.role = role
            font = self.font()
            font.setItalic(role in ("special", "masked"))
            self.setFont(font)
            muted = role in ("special", "masked")
            self.setForegroundRole(QPalette.ColorRole.PlaceholderText if muted else QPalette.ColorRole.WindowText)
            self.update()

    def set_marks(self, selected: bool, tint: float) -> None:
        tint = round(tint * 32) / 32  # no repaint for invisible changes
        if selected != self.selected or tint != self.tint:
            self.selected, self.tint = selected, tint
            self.update()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt API
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit(self.index)

    def enterEvent(self, event: QEnterEvent) -> None:  # noqa: N802
        self.hovered.emit(self.index)

    def leaveEvent(self, event) -> None:  # noqa: ANN001, N802
        self.hovered.emit(-1)

    def colours(self) -> tuple[QColor, QColor, Qt.PenStyle]:
        """(fill, border, border style) for the role, the hover tint and the selection."""
        pal = self.palette()
        light = pal.window().color().lightness() > 128
        fill, border, style = {
            "prompt": (pal.button().color(), pal.mid().color(), Qt.PenStyle.SolidLine),
            "generated": (QColor("#d5ecd4" if light else "#2f5a33"), QColor("#5aa35a"), Qt.PenStyle.SolidLine),
            "special": (QColor(0, 0, 0, 0), pal.mid().color(), Qt.PenStyle.DashLine),
            "filled": (QColor("#fde2c4" if light else "#6b4a1e"), QColor("#d08a2c"), Qt.PenStyle.SolidLine),
            "masked": (QColor(0, 0, 0, 0), QColor("#d08a2c"), Qt.PenStyle.DashLine),
        }[self.role]
        if self.tint > 0:
            fill = QColor(TINT.red(), TINT.green(), TINT.blue(), int(40 + 215 * self.tint))
        if self.selected:
            border, style = SELECTED, Qt.PenStyle.SolidLine
        return fill, border, style

    def paintEvent(self, event) -> None:  # noqa: ANN001, N802
        fill, border, style = self.colours()
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        pen = QPen(border, 2.0 if self.selected else 1.0, style)
        painter.setPen(pen)
        painter.setBrush(fill)
        painter.drawRoundedRect(QRectF(self.rect()).adjusted(1, 1, -1, -1), 4, 4)
        painter.end()
        super().paintEvent(event)  # the text


MAX_CHIPS = 512  # a longer sequence shows its last MAX_CHIPS tokens as chips (where steps happen); the views show all


class ChipRow(QWidget):
    """A wrapping row of chips for one sequence (the main one, or the encoder-decoder's source). A long one
    (a document of thousands of tokens) shows its last MAX_CHIPS tokens: a chip per token would cost the
    window seconds per step; `offset` is the position of the first chip."""

    clicked = Signal(int)
    hovered = Signal(int)

    def __init__(self, caption: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.flow = FlowLayout(self)
        self.caption = QLabel(caption)  # inline, first in the flow: saves a line per row
        self.caption.setObjectName("caption")
        self.flow.addWidget(self.caption)
        self.more = QLabel()  # "… 4,129 earlier tokens" when the row is windowed
        self.more.setObjectName("caption")
        self.more.hide()
        self.flow.addWidget(self.more)
        self.chips: list[TokenChip] = []
        self.n = 0
        self.offset = 0

    def chip_at(self, position: int) -> TokenChip | None:
        i = position - self.offset
        return self.chips[i] if 0 <= i < self.n else None

    def set_tokens(self, tokens: tuple[str, ...], roles: list[str], tips: list[str]) -> None:
        offset = max(0, len(tokens) - MAX_CHIPS)
        if offset != self.offset or (offset > 0) != self.more.isVisibleTo(self):
            self.more.setText(f"… {offset:,} earlier tokens (all of them in the attention view)")
            self.more.setVisible(offset > 0)
        self.offset = offset
        tokens, roles, tips = tokens[offset:], roles[offset:], tips[offset:]
        while len(self.chips) < len(tokens):
            chip = TokenChip(len(self.chips), self)
            chip.clicked.connect(lambda i: self.clicked.emit(i + self.offset))
            chip.hovered.connect(lambda i: self.hovered.emit(i + self.offset if i >= 0 else i))
            self.flow.addWidget(chip)
            self.chips.append(chip)
        changed = len(tokens) != self.n
        self.n = len(tokens)
        for i, chip in enumerate(self.chips):
            if i < self.n:
                shown = (tokens[i] if tokens[i] else "∅", roles[i], tips[i])
                if getattr(chip, "_shown", None) == shown and chip.isVisibleTo(self):
                    continue  # a step changes a chip or two; restyling hundreds cost more than the heatmaps
                chip._shown = shown
                chip.setText(shown[0])
                chip.set_role(shown[1])
                chip.setToolTip(shown[2])
                chip.show()
                changed = True
            elif chip.isVisibleTo(self):
                chip.hide()
                changed = True
        if changed:
            self.flow.invalidate()

    def set_marks(self, selected: int | None, tints: np.ndarray | None) -> None:
        for i in range(self.n):
            p = i + self.offset
            self.chips[i].set_marks(p == selected, float(tints[p]) if tints is not None and p < len(tints) else 0.0)


class TokenStrip(QWidget):
    def __init__(self, state: InspectorState, client: EngineClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.client = client
        self.hover: tuple[str, int] | None = None  # ("main" | "source", position)

        # -- stepper ---------------------------------------------------------------------------------
        self.back_button = QPushButton("← Back")
        self.back_button.setToolTip("Undo the last step (←)")
        self.step_button = QPushButton("Step →")
        self.step_button.setToolTip("Choose the next token (→)")
        self.run_spin = QSpinBox()
        self.run_spin.setRange(1, 100000)
        self.run_spin.setValue(10)
        self.run_spin.setToolTip("How many steps Run takes")
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Take that many steps (Enter); press again (or Esc) to stop")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("Start again from the prompt (Ctrl+R)")
        self.mask_button = QPushButton("Mask selected")
        self.mask_button.setToolTip("Replace the selected token with the mask token (M); Step then fills it")
        self.summary = QLabel()
        self.summary.setObjectName("caption")
        bar = QHBoxLayout()
        bar.setContentsMargins(4, 2, 4, 2)
        for w in (self.back_button, self.step_button, self.run_spin, self.run_button, self.reset_button, self.mask_button):
            bar.addWidget(w)
        bar.addSpacing(12)
        bar.addWidget(self.summary, 1)

        # -- chips -----------------------------------------------------------------------------------
        self.source_row = ChipRow("source:")
        self.main_row = ChipRow("decoder:")
        inner = QWidget()
        rows = QVBoxLayout(inner)
        rows.setContentsMargins(2, 0, 2, 0)
        rows.setSpacing(1)
        for w in (self.source_row, self.main_row):
            rows.addWidget(w)
        rows.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(inner)
        self.scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addLayout(bar)
        layout.addWidget(self.scroll, 1)

        # -- wiring ----------------------------------------------------------------------------------
        self.step_button.clicked.connect(self.step)
        self.back_button.clicked.connect(self.back)
        self.run_button.clicked.connect(self.run_or_stop)
        self.mask_button.clicked.connect(self.mask_selected)
        self.main_row.clicked.connect(self._select_main)
        self.source_row.clicked.connect(self._select_source)
        self.main_row.hovered.connect(lambda i: self._hover("main", i))
        self.source_row.hovered.connect(lambda i: self._hover("source", i))
        client.busy_changed.connect(lambda _b, _op: self._sync_buttons())
        state.model_changed.connect(self._on_model)
        state.trace_changed.connect(self._on_trace)
        state.selection_changed.connect(self._refresh_marks)
        self._on_model(None)

    # -- actions ---------------------------------------------------------------------------------------
    def _ready(self) -> bool:
        return self.state.trace is not None and not self.client.loading

    def step(self) -> None:
        if self._ready():
            self.client.step()

    def back(self) -> None:
        if self._ready():
            self.client.back()

    def run_or_stop(self) -> None:
        if self.client.running:
            self.client.stop()
        elif self._ready():
            self.client.run(self.run_spin.value())
        self._sync_buttons()

    def mask_selected(self) -> None:
        if self._ready() and self.state.trace.family == "encoder":
            self.client.mask(self.state.query)

    def _select_main(self, i: int) -> None:
        kind = "self" if self.state.uses_source_rows() else None  # leave the encoder side
        self.state.select(kind=kind, query=i)

    def _select_source(self, i: int) -> None:
        kind = None if self.state.kind == "cross" else "encoder"  # cross keeps its decoder query
        self.state.select(kind=kind, source_query=i)

    # -- state -> widgets ------------------------------------------------------------------------------
    def _sync_buttons(self) -> None:
        has = self.state.trace is not None
        running = self.client.running
        # a checkpoint without a prediction head (sentence-embedding BERT) can be inspected but not stepped
        predicts = self.state.model is not None and self.state.model.has_logits
        self.run_button.setText("Stop" if running else "Run")
        for w in (self.back_button, self.reset_button):
            w.setEnabled(has and not running)
        for w in (self.step_button, self.run_spin):
            w.setEnabled(has and predicts and not running)
        self.run_button.setEnabled((has and predicts) or running)
        self.mask_button.setEnabled(has and not running)

    def _on_model(self, info) -> None:  # noqa: ANN001 - ModelInfo | None
        family = info.family if info else None
        two_rows = family == "encoder-decoder"
        self.source_row.setVisible(two_rows)
        self.main_row.caption.setVisible(two_rows)
        self.mask_button.setVisible(family == "encoder")
        self.step_button.setText("Fill mask →" if family == "encoder" else "Step →")
        self.main_row.set_tokens((), [], [])
        self.source_row.set_tokens((), [], [])
        self.summary.setText("" if info else "No model open")
        self._sync_buttons()

    def _on_trace(self, trace: Trace) -> None:
        steps = {s.position: s for s in trace.steps}
        roles, tips = [], []
        for i in range(len(trace)):
            step = steps.get(i)
            if trace.family == "encoder" and step is not None:
                role = "masked" if step.how == "masked" else "filled"
            elif trace.special[i]:
                role = "special"
            else:
                role = "generated" if i >= trace.n_prompt else "prompt"
            roles.append(role)
            tip = f"position {i} · id {trace.token_ids[i]} · {role}"
            if step is not None:
                tip += f" · {step.how}, p={step.prob:.3f}"
            tips.append(tip)
        self.main_row.set_tokens(trace.tokens, roles, tips)
        if trace.source_tokens is not None:
            self.source_row.set_tokens(
                trace.source_tokens, ["special" if sp else "prompt" for sp in trace.source_special],
                [f"source position {i} · id {t}" for i, t in enumerate(trace.source_ids)])
        n_gen = len(trace) - trace.n_prompt
        last = trace.steps[-1] if trace.steps else None
        text = (f"{len(trace)} tokens" if trace.family == "encoder" else
                f"{len(trace)} tokens ({trace.n_prompt} prompt + {n_gen} generated)")
        if last is not None:
            text += f" · last: “{last.token}” ({last.how}, p={last.prob:.3f})"
        self.summary.setText(text)
        self._sync_buttons()
        self._refresh_marks()
        self.scroll.ensureWidgetVisible(self.main_row.chip_at(len(trace) - 1) or self.main_row)

    # -- selection and hover tint ----------------------------------------------------------------------
    def _hover(self, side: str, i: int) -> None:
        self.hover = (side, i) if i >= 0 else None
        self._refresh_marks()

    def hover_weights(self) -> tuple[str, np.ndarray] | None:
        """(side tinted, tint 0..1) for the hovered token under the selected head: the square root of the
        weight, so that weak attention still shows while uniform attention does not look strong."""
        s, trace = self.state, self.state.trace
        if self.hover is None or trace is None:
            return None
        side, i = self.hover
        if side == "source":
            kind, tinted = "encoder", "source"
        elif s.kind == "cross":
            kind, tinted = "cross", "source"
        else:
            kind, tinted = ("encoder" if trace.family == "encoder" else "self"), "main"
        if kind not in trace.kinds:
            return None
        layer = min(s.layer, trace.n_layers[kind] - 1)
        rows = trace.attention_row(kind, layer, i)  # [heads, keys]
        w = rows.mean(axis=0) if s.mean_heads else rows[s.head]
        return tinted, np.sqrt(np.clip(w, 0.0, 1.0))

    def _refresh_marks(self) -> None:
        s = self.state
        tint = self.hover_weights()
        main_tint = tint[1] if tint and tint[0] == "main" else None
        source_tint = tint[1] if tint and tint[0] == "source" else None
        self.main_row.set_marks(s.query if s.trace is not None else None, main_tint)
        if self.source_row.isVisible() or self.source_row.n:
            self.source_row.set_marks(s.source_query if s.uses_source_rows() else None, source_tint)
