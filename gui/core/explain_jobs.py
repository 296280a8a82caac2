"""Jobs behind the "Inside this head" dock (engine.explain): one head's chain for one query, direct logit
attribution, the nearest tokens to an embedding, and the positional scheme.

Each function returns `fn(worker)` for EngineClient.call(op, fn); it runs in the worker thread and returns
a dict with the trace it was asked about (the panel drops answers for a trace no longer on screen) and
engine.explain's numpy dataclasses. An explanation the model cannot give (direct logit attribution of an
encoder-only model) comes back as {"error": message}: the panel shows it in place, not as a window error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.errors import EngineError

from .jobs import open_model, same_model
from .worker import EngineWorker


def inside_head(trace: Any, kind: str, layer: int, head: int, query: int) -> Callable:
    """q, k, v, q·k, scale, soft-cap, bias, mask, softmax and the value-weighted norms of one head, one query."""

    def fn(w: EngineWorker) -> dict:
        model = open_model(w)
        if not same_model(model, trace):
            return {"trace": trace, "stale": True}
        key = (kind, layer, head, query)
        try:
            return {"trace": trace, "key": key, "inside": w.engine.inside_head(model, trace, kind, layer, head, query)}
        except EngineError as exc:  # a capture the trace lacks, or an explanation this model cannot give
            return {"trace": trace, "key": key, "error": str(exc)}

    return fn


def attribution(trace: Any, position: int, token_id: int | None) -> Callable:
    """Direct logit attribution at `position` toward `token_id` (None: the most likely next token)."""

    def fn(w: EngineWorker) -> dict:
        model = open_model(w)
        if not same_model(model, trace):
            return {"trace": trace, "stale": True}
        key = (position, token_id)
        try:
            return {"trace": trace, "key": key, "attribution": w.engine.attribute(model, trace, position, token_id)}
        except EngineError as exc:  # a capture the trace lacks, or an explanation this model cannot give
            return {"trace": trace, "key": key, "error": str(exc)}

    return fn


def embeddings(trace: Any, token_id: int, k: int, metric: str) -> Callable:
    """The k nearest tokens to `token_id`'s input embedding, and the positional scheme (made once per model)."""

    def fn(w: EngineWorker) -> dict:
        model = open_model(w)
        if not same_model(model, trace):
            return {"trace": trace, "stale": True}
        key = (token_id, k, metric)
        positions = w.cache.get("positions_view")  # the cache is emptied when the model changes
        if positions is None:
            positions = w.cache["positions_view"] = w.engine.positions_view(model)
        try:
            near = w.engine.nearest_tokens(model, token_id, k, metric)
        except EngineError as exc:  # a capture the trace lacks, or an explanation this model cannot give
            return {"trace": trace, "key": key, "error": str(exc), "positions": positions}
        return {"trace": trace, "key": key, "nearest": near, "positions": positions}

    return fn
