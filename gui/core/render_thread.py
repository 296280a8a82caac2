"""A display thread beside the engine worker: pooled overviews and visible tiles of immutable Traces.

The engine worker is the only thread that touches Model and Session, and during Run it is busy stepping;
a Trace, though, is immutable plain numpy, so reading it (tiles, pooled overviews) is safe from any
thread. A view submits `fn()` under a key ("grid", "tile", …); only the newest request per key runs
(older ones waiting are replaced: latest wins), and each result comes back on the GUI thread through a
queued signal with the generation it was asked for, so a view drops what a newer request made stale.

A request starts once the GUI thread has finished what it was doing: a low-priority posted event (queued
behind the window's own repaint, which Qt posts at that priority too) releases it to the thread. Started
at once, the thread's numpy calls competed for the GIL with the rest of the step's slots and paints: every
call into Qt there waited to take the GIL back (pyqtgraph's updateMatrix after a tile request: 0.2 → 2 ms).
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QCoreApplication, QEvent, QObject, Qt, Signal

log = logging.getLogger(__name__)


class RenderThread(QObject):
    """`submit(key, fn)` -> generation; `ready(key, generation, result)` on the GUI thread, or
    `failed(key, generation, message)`. One daemon thread per owner; `stop()` ends it."""

    ready = Signal(str, int, object)
    failed = Signal(str, int, str)
    _RELEASE = QEvent.Type(QEvent.registerEventType())  # hands the held requests to the thread

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._cond = threading.Condition()
        self._waiting: dict[str, tuple[int, Callable[[], Any]]] = {}  # released: the thread takes these
        self._held: dict[str, tuple[int, Callable[[], Any]]] = {}  # until the GUI thread is done with its turn
        self._release_posted = False
        self._generation = 0
        self._busy = 0  # requests taken but not answered yet
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"render-{name}", daemon=True)
        self._thread.start()
        self.destroyed.connect(lambda *_: self.stop())

    def submit(self, key: str, fn: Callable[[], Any]) -> int:
        with self._cond:
            self._generation += 1
            self._held[key] = (self._generation, fn)  # replaces an older request of this key not yet started
            generation, post = self._generation, not self._release_posted
            self._release_posted = True
        if post:
            QCoreApplication.postEvent(self, QEvent(self._RELEASE), Qt.EventPriority.LowEventPriority.value)
        return generation

    def event(self, event: QEvent) -> bool:
        if event.type() == self._RELEASE:
            self._release()
            return True
        return super().event(event)

    def _release(self) -> None:
        with self._cond:
            self._release_posted = False
            self._waiting.update(self._held)  # a held request replaces a released one of its key not yet started
            self._held.clear()
            self._cond.notify()

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._waiting and not self._held and not self._busy

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._waiting.clear()
            self._held.clear()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                key = next(iter(self._waiting))
                generation, fn = self._waiting.pop(key)
                self._busy += 1
            try:
                result, error = fn(), None
            except Exception as exc:  # noqa: BLE001 - a bad request must not end the thread
                log.error("render %s failed:\n%s", key, traceback.format_exc())
                result, error = None, f"{type(exc).__name__}: {exc}"
            try:
                if not self._stopped:
                    if error is None:
                        self.ready.emit(key, generation, result)
                    else:
                        self.failed.emit(key, generation, error)
            except RuntimeError:  # the owner (and this QObject) is gone
                return
            finally:
                with self._cond:
                    self._busy -= 1
