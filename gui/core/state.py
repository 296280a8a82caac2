"""The one selection/state object every panel reads and subscribes to (ndv / napari style).

It holds the open model's description, the current Trace and what is selected in it
(attention kind, layer, head, query position), plus sampling and display choices. Panels never
talk to each other; they change the state and redraw when it signals.

One signal per field, so a view subscribes to what it draws (the head grid's outline follows
`layer_changed`/`head_changed`, the candidates follow `query_changed`). A change of several fields at
once (`select(kind=…, layer=…)`) sets them all first, emits each field's signal, then one group
signal (`selection_changed`, `display_changed`) for views that draw from many fields and should
redraw once. `model_changed` and `trace_changed` stand for everything: the selection may move with
them (a new model's kind, the query following the frontier) without its field signals.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal, SignalInstance

from engine import SamplingError, SamplingSettings, Trace

from .worker import ModelInfo

log = logging.getLogger(__name__)

SELECTION_FIELDS = ("kind", "layer", "head", "mean_heads", "query", "source_query")
DISPLAY_FIELDS = ("colormap", "log_scale")


class InspectorState(QObject):
    model_changed = Signal(object)  # ModelInfo
    trace_changed = Signal(object)  # Trace (and possibly a moved query; not signalled twice)
    # -- selection, one signal per field ------------------------------------------------------------
    kind_changed = Signal(str)
    layer_changed = Signal(int)
    head_changed = Signal(int)
    mean_heads_changed = Signal(bool)
    query_changed = Signal(int)  # main sequence (decoder, or the encoder-only input)
    source_query_changed = Signal(int)  # source side of an encoder-decoder
    selection_changed = Signal()  # once, after the field signals of one select()
    # -- sampling and view options --------------------------------------------------------------------
    sampling_changed = Signal(object)  # SamplingSettings
    colormap_changed = Signal(str)
    log_scale_changed = Signal(bool)
    display_changed = Signal()  # once, after the field signals of one set_display()
    # why the session on screen no longer matches the prompt box (a refused prompt), "" when it does
    stale_changed = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.model: ModelInfo | None = None
        self.trace: Trace | None = None
        self.previous_trace: Trace | None = None  # the one before: fill-mask shows the predictions that chose
        self.kind = "self"
        self.layer = 0
        self.head = 0
        self.mean_heads = False
        self.query = 0  # query position in the main sequence (decoder, or the encoder-only input)
        self.source_query = 0  # query position in the source (encoder side of an encoder-decoder)
        self.sampling = SamplingSettings()
        self.colormap = "viridis"
        self.log_scale = False
        self.stale = ""

    # -- model & trace --------------------------------------------------------------------------
    def set_model(self, info: ModelInfo) -> None:
        self.model = info
        self.set_stale("")
        self.trace = self.previous_trace = None
        self.kind = "cross" if "cross" in info.kinds else info.kinds[0]
        self.layer = min(self.layer, info.layers_by_kind[self.kind] - 1)
        self.head = min(self.head, info.n_heads - 1)
        self.model_changed.emit(info)

    def set_trace(self, trace: Trace) -> None:
        if trace is self.trace:  # a run's last progress report and its result can be the same trace
            return
        old = self.trace
        # follow the frontier: if the last token was selected (or nothing yet), select the new last one
        following = old is None or self.query >= len(old) - 1 or len(old.token_ids) == 0
        self.previous_trace, self.trace = old, trace
        n = len(trace)
        self.query = n - 1 if following else min(self.query, n - 1)
        if trace.family == "encoder":
            self.query = self._encoder_focus(old, trace)
        if trace.source_tokens is not None:
            ns = len(trace.source_tokens)
            if old is None or old.source_tokens != trace.source_tokens:
                self.source_query = ns - 1
            self.source_query = min(self.source_query, ns - 1)
        self.trace_changed.emit(trace)  # the query may have moved with it: views redraw everything here

    def _encoder_focus(self, old: Trace | None, trace: Trace) -> int:
        """Fill-mask models: look at the token the last step changed, else the first mask, else stay."""
        if trace.steps and (old is None or old.steps != trace.steps):
            return trace.steps[-1].position
        mask = self.model.mask_token if self.model else None
        if (old is None or old.token_ids != trace.token_ids) and mask in trace.tokens:
            return trace.tokens.index(mask)
        return min(self.query, len(trace) - 1)

    def fill_predictions(self, position: int):  # noqa: ANN201 - np.ndarray | None
        """Encoder-only: if the last step filled `position`, the logits it was chosen from (with the mask
        still in place), else None. The current trace's logits there already see the filled token."""
        old, new = self.previous_trace, self.trace
        if old is None or new is None or new.family != "encoder" or not new.steps or old.logit_rows is None:
            return None
        last = new.steps[-1]
        if last.how == "masked" or last.position != position or len(old) != len(new):
            return None
        if old.token_ids[position] != last.replaced_id:
            return None
        return old.logits_at(position)

    # -- what the attention view shows -----------------------------------------------------------
    @property
    def n_layers(self) -> int:
        if self.model is None:
            return 0
        return self.model.layers_by_kind.get(self.kind, 0)

    @property
    def n_heads(self) -> int:
        return self.model.n_heads if self.model else 0

    def uses_source_rows(self, kind: str | None = None) -> bool:
        """Encoder self-attention of an encoder-decoder: the rows are source tokens."""
        kind = kind or self.kind
        return kind == "encoder" and self.model is not None and self.model.family == "encoder-decoder"

    @property
    def row_query(self) -> int:
        """The highlighted row of the current kind's pattern."""
        return self.source_query if self.uses_source_rows() else self.query

    def query_tokens(self, trace: Trace | None = None) -> tuple[str, ...]:
        trace = trace or self.trace
        if trace is None:
            return ()
        return trace.source_tokens if self.uses_source_rows() else trace.tokens

    def key_tokens(self, trace: Trace | None = None) -> tuple[str, ...]:
        trace = trace or self.trace
        if trace is None:
            return ()
        if self.kind == "cross" or self.uses_source_rows():
            return trace.source_tokens
        return trace.tokens

    # -- changes ---------------------------------------------------------------------------------
    def select(self, kind: str | None = None, layer: int | None = None, head: int | None = None,
               query: int | None = None, source_query: int | None = None, mean_heads: bool | None = None) -> None:
        before = {f: getattr(self, f) for f in SELECTION_FIELDS}
        if kind is not None and self.model is not None and kind in self.model.kinds and kind != self.kind:
            self.kind = kind
            self.layer = min(self.layer, self.n_layers - 1)
        if layer is not None and 0 <= layer < self.n_layers:
            self.layer = layer
        if head is not None and 0 <= head < self.n_heads:
            self.head = head
        if mean_heads is not None:
            self.mean_heads = bool(mean_heads)
        n = len(self.trace) if self.trace is not None else 0
        if query is not None and 0 <= query < n:
            self.query = query
        ns = len(self.trace.source_tokens) if self.trace is not None and self.trace.source_tokens else 0
        if source_query is not None and 0 <= source_query < ns:
            self.source_query = source_query
        self._emit_changes(before, self.selection_changed)

    def _emit_changes(self, before: dict[str, object], group: SignalInstance) -> None:
        """Every field is set before any signal goes out, so a handler always reads a consistent state."""
        changed = [f for f, old in before.items() if getattr(self, f) != old]
        for field in changed:
            getattr(self, f"{field}_changed").emit(getattr(self, field))
        if changed:
            group.emit()

    def step_layer(self, delta: int) -> None:
        if self.n_layers:
            self.select(layer=(self.layer + delta) % self.n_layers)

    def step_query(self, delta: int) -> None:
        """Move the highlighted query row (source side for encoder self-attention of an encoder-decoder)."""
        if self.trace is None:
            return
        if self.uses_source_rows():
            self.select(source_query=max(0, min(self.source_query + delta, len(self.trace.source_tokens) - 1)))
        else:
            self.select(query=max(0, min(self.query + delta, len(self.trace) - 1)))

    def step_head(self, delta: int) -> None:
        if self.n_heads:
            self.select(head=(self.head + delta) % self.n_heads)

    def set_sampling(self, **changes: object) -> SamplingSettings:
        """Validated by engine.SamplingSettings; raises SamplingError for values out of range."""
        settings = SamplingSettings(**{**self.sampling.__dict__, **changes})
        if settings != self.sampling:
            self.sampling = settings
            self.sampling_changed.emit(settings)
        return settings

    def set_stale(self, reason: str) -> None:
        """The prompt box holds text the session did not take (`reason`), or "" once they agree again."""
        if reason != self.stale:
            self.stale = reason
            self.stale_changed.emit(reason)

    def set_display(self, colormap: str | None = None, log_scale: bool | None = None) -> None:
        before = {f: getattr(self, f) for f in DISPLAY_FIELDS}
        if colormap is not None:
            self.colormap = colormap
        if log_scale is not None:
            self.log_scale = bool(log_scale)
        self._emit_changes(before, self.display_changed)


__all__ = ["InspectorState", "SamplingError"]
