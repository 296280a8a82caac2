"""Cooperative cancel points inside a forward: a long prefill stops between layers (and between query-row
chunks of explicit attention) when the flag of the enclosing `cancellable()` block is set.

The flag lives in a context variable, so each thread (the GUI's worker, the server's engine thread) sees only
its own request's flag and no forward signature has to carry it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .errors import Cancelled

_FLAG: ContextVar[Callable[[], bool] | None] = ContextVar("engine_cancel_flag", default=None)


def as_check(cancel: Any) -> Callable[[], bool] | None:
    """A threading.Event, a callable returning bool, or None -> a no-argument check (or None)."""
    if cancel is None:
        return None
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return cancel
    raise TypeError(f"cancel must be a threading.Event or a callable, not {type(cancel).__name__}")


@contextmanager
def cancellable(cancel: Any) -> Iterator[None]:
    """Forwards run inside this block raise Cancelled at their next cancel point once `cancel` is set. `cancel`
    None keeps the enclosing block's flag (a session's step without its own flag inside a caller's block)."""
    check = as_check(cancel)
    if check is None:
        yield
        return
    token = _FLAG.set(check)
    try:
        yield
    finally:
        _FLAG.reset(token)


def checkpoint() -> None:
    """Raise Cancelled when the enclosing block's flag is set (nothing outside a cancellable block)."""
    check = _FLAG.get()
    if check is not None and check():
        raise Cancelled("cancelled: the forward was stopped before it finished; the session is as it was before")
