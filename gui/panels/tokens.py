"""The stepper (Step / Back / Run N / Stop / Reset) and the tokens as chips.

Click a chip to select it as the query; hover one to tint the others by how much the selected
head attends from it to them. Each sequence is one painted TokenFlow (every token shown, however
long): a step places and paints only the new token; roles are worked out only for positions that
changed, tooltips only for the token hovered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from PySide6.QtWidgets import (
    QHBoxLayout,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine import EngineError, Trace

from ..core.arrivals import PENDING, Arrivals
from ..core.state import InspectorState
from ..core.worker import EngineClient
from ..widgets.steady_label import SteadyLabel
from ..widgets.token_flow import TokenFlow

log = logging.getLogger(__name__)


class TokenStrip(QWidget):
    def __init__(self, state: InspectorState, client: EngineClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.arrivals = Arrivals(self)  # a hovered token's row: at once, or fetched in the background (no tint till then)
        self.state = state
        self.client = client
        self.hover: tuple[str, int] | None = None  # ("main" | "source", position)
        self.trace: Trace | None = None  # the one the rows show (tooltips read it)
        self._roles: list[str] = []  # of the main row, for self.trace
        self._source_special: tuple[bool, ...] | None = None  # what the source row's roles were made from
        self._source_roles: list[str] = []
        self._reveal: int | None = None  # the position to scroll into view (the last token), until it is
        self.before_step: Callable[[], None] | None = None  # the window's: an edit waiting to start its session
        self._text = ""  # the summary without a notice

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
        self.summary = SteadyLabel(wrap=False)  # changes every step: must not re-lay out the window
        self.summary.setObjectName("caption")
        bar = QHBoxLayout()
        bar.setContentsMargins(4, 2, 4, 2)
        for w in (self.back_button, self.step_button, self.run_spin, self.run_button, self.reset_button, self.mask_button):
            bar.addWidget(w)
        bar.addSpacing(12)
        bar.addWidget(self.summary, 1)

        # -- chips -----------------------------------------------------------------------------------
        self.source_row = TokenFlow("source:")
        self.source_row.set_caption_visible(True)
        self.main_row = TokenFlow("decoder:")
        self.main_row.tooltip = self._main_tip
        self.source_row.tooltip = self._source_tip
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
        # a step that starts a new row grows the strip after _on_trace: scroll once the range has grown
        self.scroll.verticalScrollBar().rangeChanged.connect(lambda _lo, _hi: self._scroll_to_reveal(last_try=True))
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
        state.stale_changed.connect(lambda _r: self._show_summary())
        self._on_model(None)

    # -- actions ---------------------------------------------------------------------------------------
    def _ready(self) -> bool:
        return self.state.trace is not None and not self.client.loading

    def _prepare(self) -> bool:
        """Before a step or run: start a session typed but not yet sent; a finished generation is said in the
        summary, not sent to fail as an error (the model choosing its end token is the normal end)."""
        if self.before_step is not None:
            self.before_step()
        if not self._ready():
            return False
        why = finished_reason(self.state.trace, self.state.model)
        if why and not self.state.stale:
            self.summary.setText(f"{why} · Back, or double-click a candidate to branch")
            return False
        return True

    def step(self) -> None:
        if self._prepare():
            self.client.step()

    def back(self) -> None:
        if self._ready():
            self.client.back()

    def run_or_stop(self) -> None:
        if self.client.running:
            self.client.stop()
        elif self._prepare():
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
        self.main_row.set_caption_visible(two_rows)
        self.mask_button.setVisible(family == "encoder")
        self.step_button.setText("Fill mask →" if family == "encoder" else "Step →")
        self.trace, self._roles, self._source_special, self._source_roles = None, [], None, []
        self.main_row.set_tokens((), [])
        self.source_row.set_tokens((), [])
        self._text = "" if info else "No model open"
        self._show_summary()
        self._sync_buttons()

    def _main_roles(self, trace: Trace) -> list[str]:
        """Role of each main-row token. A decoder's depends only on `special` and the prompt length, so a
        step works out only the positions past the unchanged prefix; an encoder's fill-mask steps can be
        anywhere (and it is at most a few hundred tokens): all of them."""
        old, n = self.trace, len(trace)
        k = 0
        if old is not None and trace.family != "encoder" and (old.family, old.n_prompt) == (trace.family, trace.n_prompt):
            k = min(len(old), n, len(self._roles))
            if old.special[:k] != trace.special[:k]:
                k = next(i for i in range(k) if old.special[i] != trace.special[i])
        special, n_prompt = trace.special, trace.n_prompt
        roles = self._roles[:k] + ["special" if special[i] else "generated" if i >= n_prompt else "prompt"
                                   for i in range(k, n)]
        if trace.family == "encoder":
            for step in trace.steps:
                roles[step.position] = "masked" if step.how == "masked" else "filled"
        return roles

    def _step_at(self, i: int):  # noqa: ANN202 - StepInfo | None
        return next((s for s in reversed(self.trace.steps) if s.position == i), None) if self.trace else None

    def _main_tip(self, i: int) -> str:
        trace = self.trace
        if trace is None or i >= len(trace):
            return ""
        tip = f"position {i} · id {trace.token_ids[i]} · {self.main_row.role(i)}"
        step = self._step_at(i)
        if step is not None:
            tip += f" · {step.how}, p={step.prob:.3f}"
        return tip

    def _source_tip(self, i: int) -> str:
        ids = self.trace.source_ids if self.trace is not None else None
        return f"source position {i} · id {ids[i]}" if ids is not None and i < len(ids) else ""

    def _on_trace(self, trace: Trace) -> None:
        roles = self._main_roles(trace)
        self.trace, self._roles = trace, roles
        self.main_row.set_tokens(trace.tokens, roles)
        if trace.source_tokens is not None:
            if trace.source_special != self._source_special:
                self._source_special = trace.source_special
                self._source_roles = ["special" if sp else "prompt" for sp in trace.source_special]
            self.source_row.set_tokens(trace.source_tokens, self._source_roles)
        n_gen = len(trace) - trace.n_prompt
        last = trace.steps[-1] if trace.steps else None
        text = (f"{len(trace)} tokens" if trace.family == "encoder" else
                f"{len(trace)} tokens ({trace.n_prompt} prompt + {n_gen} generated)")
        if last is not None:
            text += f" · last: “{last.token}” ({last.how}, p={last.prob:.3f})"
        why = finished_reason(trace, self.state.model)
        self._text = text + (f" · {why}" if why else "")
        self._show_summary()
        self._sync_buttons()
        self._refresh_marks()
        if len(trace):
            self._reveal = len(trace) - 1
            self._scroll_to_reveal()

    def _show_summary(self) -> None:
        stale = self.state.stale
        self.summary.setText(("⚠ Step is off: the prompt was not taken (see the prompt panel) · " if stale else "")
                             + self._text)
        tip = f"Step is off until a prompt is taken: {stale}" if stale else ""
        self.summary.setToolTip(tip)
        self.step_button.setToolTip(tip or "Choose the next token (→)")

    def _scroll_to_reveal(self, last_try: bool = False) -> None:
        """Scroll so that the last token is in view; once more when the scroll range grows to reach it (the
        place is read then: the rows above may have moved it)."""
        i = self._reveal
        if i is None or i >= self.main_row.n:
            self._reveal = None
            return
        r = self.main_row.rect(i)
        c = self.main_row.mapTo(self.scroll.widget(), r.center())
        self.scroll.ensureVisible(c.x(), c.y(), r.width() // 2 + 4, r.height() // 2 + 4)
        viewport = self.scroll.viewport()
        if last_try or viewport.rect().contains(self.scroll.widget().mapTo(viewport, c)):
            self._reveal = None

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
        try:
            rows = self.arrivals.read(trace, ("row", kind, layer, i), lambda t: t.attention_row(kind, layer, i),
                                      self._refresh_marks)  # [heads, keys]
        except EngineError as exc:  # a remote engine that keeps the patterns went away: no tint
            log.warning("token strip: %s", exc)
            return None
        if rows is PENDING:
            return None
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


def finished_reason(trace: Trace | None, info) -> str:  # noqa: ANN001 - ModelInfo | None
    """Why no further step is possible ("" if one is): the model chose its end token, or the context is full.
    Encoder-only models fill masks: they are done when none is left (the engine says so)."""
    if trace is None or info is None or trace.family == "encoder":
        return ""
    ids = trace.token_ids
    if trace.steps and ids and ids[-1] in info.stop_ids:
        return f"finished: the model chose “{info.vocab[ids[-1]]}” (its end token, the normal end)"
    if len(ids) >= info.max_positions:
        return f"finished: the context is full ({info.max_positions} tokens)"
    return ""
