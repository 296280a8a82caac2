"""Reads that never wait in the GUI thread: Trace.read_now answers at once or says PENDING and fetches in the
background (an engine on another machine that keeps the patterns there); the view shows a placeholder and is called
back here, in the GUI thread, when the answer landed. The same code for every engine: a trace in this process
always answers at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from engine import PENDING

__all__ = ["PENDING", "PLACEHOLDER", "Arrivals"]

PLACEHOLDER = "…"  # what a view shows where an answer is on its way


class Arrivals(QObject):
    """One per view: `read(trace, key, read, redraw)` -> the answer or PENDING; `redraw()` runs in the GUI thread
    once the answer is here (asking again then answers at once, or raises what fetching raised)."""

    _landed = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._landed.connect(self._run)  # emitted from a background thread: queued to this object's (GUI) thread
        self.waiting: set = set()  # keys on their way (tests wait for none)

    def read(self, trace: Any, key: Any, read: Callable[[Any], Any], redraw: Callable[[], None]) -> Any:
        mine = (id(trace), key)
        got = trace.read_now(key, read, lambda: self._landed.emit((mine, redraw)))
        if got is PENDING:
            self.waiting.add(mine)
        return got

    @Slot(object)
    def _run(self, landed: tuple) -> None:
        key, redraw = landed
        self.waiting.discard(key)
        redraw()
