"""numpy's BLAS threads in the window's process: all cores but one, as torch's (engine.share_cpu_with_ui).

The display threads' tiles and pooling multiply with numpy, whose OpenBLAS starts a thread per core for a
large product: on a 2-core machine a tile then took both cores from the event loop and the engine worker
(longest stall of a 100-step run 31-36 ms, 17-25 ms with one BLAS thread; tools/bench_gui.py, A/B). OpenBLAS
reads its thread count once, when numpy is first imported, so this runs before anything imports numpy. No
numpy, torch or Qt here.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS",)  # numpy's wheels carry OpenBLAS


def usable_cores() -> int:
    """engine.device.usable_cores, repeated: importing anything from engine imports numpy (and torch)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def share_blas_with_ui(reserve: int = 1) -> int | None:
    """Set numpy's BLAS threads to every usable core but `reserve` (ATTENTION_INSPECTOR_THREADS sets the
    number outright; an OPENBLAS_NUM_THREADS already set is left as it is). Returns the number set, or None
    when nothing was set (numpy already imported, or the variable given)."""
    if "numpy" in sys.modules:
        log.debug("numpy is imported already: its BLAS threads stay as they are")
        return None
    if any(v in os.environ for v in BLAS_VARIABLES):
        return None
    raw = os.environ.get("ATTENTION_INSPECTOR_THREADS", "").strip()
    # a bad value is ignored here; engine.share_cpu_with_ui, which reads it too, says so in the log
    n = int(raw) if raw.isdigit() and int(raw) > 0 else max(1, usable_cores() - reserve)
    for variable in BLAS_VARIABLES:
        os.environ[variable] = str(n)
    return n
