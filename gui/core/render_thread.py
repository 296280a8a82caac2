"""A display thread beside the engine worker: pooled overviews and visible tiles of immutable Traces.

The engine worker is the only thread that touches Model and Session, and during Run it is busy stepping;
a Trace, though, is immutable plain numpy, so reading it (tiles, pooled overviews) is safe from any
thread. A view submits `fn()` under a key ("grid", "tile", …); only the newest request per key runs
(older ones waiting are replaced: latest wins), and each result comes back on the GUI thread through a
queued signal with the generation it was asked for, so a view drops what a newer request made stale.
numpy releases the GIL in its loops, so pooling here leaves the GUI thread free.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)


class RenderThread(QObject):
    """`submit(key, fn)` -> generation; `ready(key, generation, result)` on the GUI thread, or
    `failed(key, generation, message)`. One daemon thread per owner; `stop()` ends it."""

    ready = Signal(str, int, object)
    failed = Signal(str, int, str)

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._cond = threading.Condition()
        self._waiting: dict[str, tuple[int, Callable[[], Any]]] = {}
        self._generation = 0
        self._busy = 0  # requests taken but not answered yet
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"render-{name}", daemon=True)
        self._thread.start()
        self.destroyed.connect(lambda *_: self.stop())

    def submit(self, key: str, fn: Callable[[], Any]) -> int:
        with self._cond:
            self._generation += 1
            self._waiting[key] = (self._generation, fn)  # replaces an older request of this key not yet started
            self._cond.notify()
            return self._generation

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._waiting and not self._busy

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._waiting.clear()
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
