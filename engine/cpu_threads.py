"""Torch's CPU threads for an interactive process, set without importing torch: a window that only reaches a
remote engine never imports it, and one with an engine in this process imports it with its first model.

share_cpu_with_ui() sets the number at once when torch is already imported, else keeps it for
apply_pending(), which engine.device calls when it is first imported (every model load goes through it)."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

_pending: int | None = None


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def share_cpu_with_ui(reserve: int = 1, threads: int | None = None) -> int:
    """Torch's CPU compute threads for an interactive process: every usable core but `reserve`, so that the
    window's event loop and its display threads always have a core while a run computes (on 2 cores a
    two-thread matmul left the GUI thread waiting for a core: event-loop stalls of 100-300 ms). `threads`
    (or the ATTENTION_INSPECTOR_THREADS environment variable) sets the number outright. Returns it; torch gets
    it now if imported, else when the engine first imports it."""
    global _pending
    wanted = threads
    if not wanted:
        raw = os.environ.get("ATTENTION_INSPECTOR_THREADS", "").strip()
        try:
            wanted = int(raw) if raw else 0
        except ValueError:
            log.warning("ATTENTION_INSPECTOR_THREADS=%r is not a number of threads; using the default", raw)
            wanted = 0
    n = wanted if wanted > 0 else max(1, usable_cores() - reserve)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
        _pending = None
    else:
        _pending = n
    return n


def apply_pending() -> None:
    """Give torch (imported by now) the thread count share_cpu_with_ui() kept while it was not."""
    global _pending
    if _pending is not None:
        import torch

        torch.set_num_threads(_pending)
        _pending = None
