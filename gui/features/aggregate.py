"""Aggregate attention views beside "mean of heads": attention rollout (Abnar & Zuidema 2020) through the
layers up to the selected one. The math is engine.analysis.rollout (numpy on the immutable Trace);
this module adds the control and hands the attention view its pattern."""

from __future__ import annotations

import logging

import numpy as np
from PySide6.QtCore import QObject, QSignalBlocker
from PySide6.QtWidgets import QCheckBox

from ..core.arrivals import PENDING, PLACEHOLDER
from ..core.state import InspectorState
from ..panels.attention import AttentionView

log = logging.getLogger(__name__)

ROLLOUT_TIP = ("Attention rollout: the mean of heads of each layer mixed half-and-half with the residual "
               "(identity), multiplied through layers 0 … the selected one: where information at each query "
               "came from. Not for cross-attention.")


class RolloutControl(QObject):
    def __init__(self, state: InspectorState, view: AttentionView, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state, self.view = state, view
        self.box = QCheckBox("rollout")
        self.box.setToolTip(ROLLOUT_TIP)
        view.add_control(self.box)
        self._cache: tuple[tuple[int, str, int], np.ndarray] | None = None
        view.set_pattern_source(self.pattern)
        self.box.toggled.connect(self._on_toggled)
        state.kind_changed.connect(lambda _k: self._sync_enabled())
        state.mean_heads_changed.connect(self._on_mean_heads)
        state.model_changed.connect(lambda _i: self._sync_enabled())

    @property
    def active(self) -> bool:
        return self.box.isChecked() and self.state.kind != "cross"

    def set_active(self, on: bool) -> None:
        self.box.setChecked(on)

    def toggle(self) -> None:
        self.box.toggle()

    def _on_toggled(self, on: bool) -> None:
        if on and self.state.mean_heads:
            self.state.select(mean_heads=False)  # one aggregate at a time (this redraws)
        self.view.redraw()

    def _sync_enabled(self) -> None:
        self.box.setEnabled(self.state.kind != "cross")

    def _on_mean_heads(self, on: bool) -> None:
        if on and self.box.isChecked():
            with QSignalBlocker(self.box):  # "mean of heads" was chosen: rollout steps aside
                self.box.setChecked(False)
            self.view.redraw()

    def pattern(self, trace) -> tuple[np.ndarray, str] | None:  # noqa: ANN001 - engine.Trace
        """Called by AttentionView.redraw: the rollout [queries, queries] up to the selected layer, or None."""
        s = self.state
        self.box.setEnabled(s.kind != "cross")  # the view may redraw before _on_selection runs
        on = self.active and not s.mean_heads
        if not on:
            return None
        key = (id(trace), s.kind, s.layer)
        if self._cache is None or self._cache[0] != key:
            from engine import EngineError
            from engine.analysis import rollout

            kind, layer = s.kind, s.layer
            try:  # an engine that keeps the patterns elsewhere computes it there: fetched off the GUI thread
                got = self.view.arrivals.read(trace, ("rollout", kind, layer), lambda t: rollout(t, kind, layer),
                                         self.view.redraw)
            except EngineError as exc:  # e.g. a remote engine that keeps the patterns went away: the pattern instead
                log.warning("rollout: %s", exc)
                return None
            if got is PENDING:  # a blank pattern of the right shape until it lands
                n = trace.attention_shape(kind, layer)[1]
                return np.zeros((n, n), dtype=np.float32), f"rollout of layers 0–{layer} {PLACEHOLDER}"
            self._cache = (key, got)
        return self._cache[1], f"rollout of layers 0–{s.layer}"
