"""Opening models with progress and cancel, and the Hugging Face cache listing behind File → Open from cache.

`load_with_progress` runs in the engine worker thread (gui/core/worker.py): it asks the engine (in this
process or remote) to name the model and size its weights before reading them, so the status bar can say
what is loading, then hands the engine's progress fractions on as LoadProgress values. `CacheScanner`
lists the cache in a thread of its own, so the dialog answers at once even while the worker is busy loading or running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class LoadProgress:
    """One report of a load in progress (plain data, crosses threads)."""

    source: str
    name: str  # the model's display name
    size_bytes: int  # its weights on disk (0 when unknown)
    fraction: float  # 0..1
    message: str  # the engine's own words ("model.safetensors: 1.2 GB of 2.5 GB")


def describe_source(source: str, engine: Any) -> tuple[str, int]:
    """(display name, weight bytes) of what `source` names on `engine`; (source, 0) when it does not
    resolve (load_model then says why)."""
    from engine import EngineError

    try:
        return engine.describe_source(source)
    except (EngineError, OSError, ValueError):
        return source, 0


def format_size(n: int) -> str:
    if n <= 0:
        return ""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 100 * scale else f"{n / scale:.0f} {unit}"
    return f"{n} B"


def load_with_progress(engine: Any, source: str, device: str | None, dtype: str | None,
                       report: Callable[[LoadProgress], None], cancel: threading.Event | None,
                       options: dict | None = None) -> Any:
    """engine.load_model with its progress turned into LoadProgress reports; raises LoadCancelled when
    `cancel` is set (the engine frees what it had allocated; a remote engine is told to stop)."""
    name, size = describe_source(source, engine)
    report(LoadProgress(source, name, size, 0.0, f"opening {name}"))

    def progress(fraction: float, message: str) -> None:
        report(LoadProgress(source, name, size, float(fraction), str(message)))

    return engine.load_model(source, device=device, dtype=dtype, progress=progress, cancel=cancel, **(options or {}))


class CacheScanner(QObject):
    """Lists the Hugging Face cache (engine.checkpoints.cached_model_infos) in a daemon thread; the result
    arrives in the GUI thread as `scanned` (a list of CachedModel) or `failed` (a message)."""

    scanned = Signal(object)
    failed = Signal(str)

    def __init__(self, parent: QObject | None = None,
                 scan: Callable[[], list] | None = None) -> None:
        super().__init__(parent)
        self._scan = scan
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._thread = threading.Thread(target=self._work, name="hf-cache-scan", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            if self._scan is not None:
                infos = self._scan()
            else:
                from engine.checkpoints import cached_model_infos

                infos = cached_model_infos()
            self.scanned.emit(list(infos))  # queued into the GUI thread: the receiver lives there
        except Exception as exc:  # noqa: BLE001 - a broken cache is a message, never a dead thread
            log.warning("scanning the Hugging Face cache failed: %s", exc)
            self.failed.emit(f"could not list the Hugging Face cache: {exc}")
