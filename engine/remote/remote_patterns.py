"""Client side of server-side patterns: a trace whose rebuild records stay on the server.

When mirroring a trace would send more than the mirror limit (a long prompt on a 1B+ model: its queries
and keys are gigabytes), the server sends only a stub per block (where its rows start, how many, a serial)
and the client's Trace answers tiles, overviews, rows, pooled thumbnails, sink shares and routing by asking
the server for exactly that (engine/remote/pattern_answers.py computes it there with the same Trace code).

Answers are cached by what they depend on: a row of a causal pattern never changes once its block exists
(later steps only add keys after it), and blocks are shared by identity between a session's traces, so a
tile is keyed by the serial of the last block it reads, not by the trace: redrawing it, or drawing it again
after the next step, does not cross the wire twice. After the server goes away, what was fetched stays
drawable and everything else raises EngineGone.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CaptureError, EngineError
from ..rebuild import PatternSource, ScoreRule

log = logging.getLogger(__name__)

CACHE_BYTES = 256 * 1024 * 1024  # answers kept per engine (least recently used first out)
# a whole pattern asked exactly (a short context's view) is asked again with the next step only up to this many
# cells: one export of a long context's patterns must not ride along with every later step
FOLLOW_CELLS = 1 << 20


@dataclass(frozen=True, eq=False)
class ServerBlock:
    """A block that stayed on the server: rows q_start .. q_start + n of one capture point (or tokens of one
    MoE layer's routing); `serial` names it there. `_got` keeps what was fetched of it (routing)."""

    q_start: int
    n: int
    serial: int
    what: str  # "query" (rebuilt), "rows" (stored pattern rows) or "routing"
    _got: dict = field(default_factory=dict, repr=False)

    @property
    def nbytes(self) -> int:
        return 0  # nothing of it is held here


class AnswerCache:
    """Server answers by key, at most CACHE_BYTES of arrays, least recently used dropped first; thread-safe
    (the display threads and the worker ask at once)."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self.bytes = 0
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any, replace: bool = False) -> Any:
        size = _nbytes(value)
        with self._lock:
            if key in self._items:
                if not replace:
                    return self._items[key]
                self.bytes -= _nbytes(self._items.pop(key))
            self._items[key] = value
            self.bytes += size
            while self.bytes > self.limit and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self.bytes -= _nbytes(old)
        return value


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 64


class Follow:
    """What the window asked of a trace's newest row (one head's or every head's row of a layer, the head grid's
    pooled row, a sink share, the routing) or of its whole pattern (the fitted view's overview). A step's request
    carries these; the server answers them for the new trace along with the step (no round trip more), and what
    it did not answer the client asks right after, in the thread that stepped: a view that reads it in the GUI
    or a display thread finds it cached. An entry lasts one step unless asked again (a view that moved on stops
    costing)."""

    def __init__(self) -> None:
        self._asked: set = set()
        self._lock = threading.Lock()
        self._local = threading.local()

    def add(self, item: tuple) -> None:
        if not getattr(self._local, "prefetching", False):
            with self._lock:
                self._asked.add(item)

    def items(self) -> list:
        """What to ask along with the next step (as lists, for the wire)."""
        with self._lock:
            return [list(i) for i in self._asked if i[0] in NEWEST_OPS]

    def take(self) -> set:
        with self._lock:
            asked, self._asked = self._asked, set()
        return asked

    def prefetch(self, trace: Any) -> None:
        """Ask `trace` (just stepped) what was asked of the trace before, for its newest row; failures are left
        for the view to meet (and say)."""
        from ..errors import EngineError
        from ..trace import parse_capture_name

        asked = self.take()
        if not asked:
            return
        self._local.prefetching = True
        try:
            for item in asked:
                op, name = item[0], item[1] if len(item) > 1 else None
                try:
                    if op == "routing":
                        if trace.moe_layers:
                            trace.routing(trace.moe_layers[0])  # every MoE layer's new blocks in one request
                        continue
                    if op == "pooled":  # every layer of the kind in one request
                        name = next(iter(pooled_layers(trace, item[1])), None)
                        if name is not None:
                            kind, layer = parse_capture_name(name)
                            _h, nq, nk = trace.attention_shape(kind, layer)
                            trace.attention_pooled(kind, layer, nq - 1, nq, newest_keys(kind, nq, nk), item[2])
                        continue
                    if name not in trace.blocks:
                        continue
                    kind, layer = parse_capture_name(name)
                    _h, nq, nk = trace.attention_shape(kind, layer)
                    if op == "overview":
                        rows, cols = (nq if item[3] < 0 else item[3]), (nk if item[4] < 0 else item[4])
                        trace.attention_overview(kind, layer, heads=list(item[2]), rows=rows, cols=cols, reduce=item[5])
                    elif op == "tile":
                        trace.attention_tile(kind, layer, item[2], nq - 1, nq, 0, nk)
                    elif op == "tiles":
                        trace.attention_tiles(kind, layer, nq - 1, nq, 0, nk)
                    elif op == "tile-whole":
                        trace.attention_tile(kind, layer, item[2], 0, nq, 0, nk)
                    elif op == "tiles-whole":
                        trace.attention_tiles(kind, layer, 0, nq, 0, nk)
                    elif op == "sink":
                        trace.sink_share(kind, layer)
                except EngineError as exc:
                    log.debug("prefetching %s failed: %s", item, exc)
        finally:
            self._local.prefetching = False


NEWEST_OPS = frozenset({"tile", "tiles", "tile-whole", "tiles-whole", "pooled", "overview"})  # answered by the server along with a step


def pooled_layers(trace: Any, kind: str) -> list[str]:
    """The capture names of `kind` with a pattern in `trace` (what the head grid pools)."""
    from ..trace import capture_name

    names = (capture_name(kind, i) for i in range(trace.n_layers.get(kind, 0)))
    return [n for n in names if n in trace.blocks and n not in trace.no_attention]


def newest_keys(kind: str, n_queries: int, n_keys: int) -> int:
    """The keys the head grid pools for the newest row (self-attention: up to it; the rest are masked)."""
    return min(n_keys, n_queries) if kind == "self" else n_keys


def seed_followed(trace: Any, followed: list) -> None:
    """Cache what the server answered along with a step ([item, args, answer] for the new trace) under the keys
    the trace's own requests will use."""
    from ..trace import capture_name, parse_capture_name

    link = trace.link
    for item, args, got in followed:
        op = item[0]
        if op == "pooled":
            for name, pooled in got.items():
                kind, layer = parse_capture_name(name)
                pooled.flags.writeable = False
                link.cache.put(link.full(trace._source(kind, layer).key_pooled(*args)), pooled)
            continue
        kind, layer = parse_capture_name(item[1])
        if capture_name(kind, layer) not in trace.blocks:
            continue
        src = trace._source(kind, layer)
        if not isinstance(src, ServerPatterns):
            continue
        key = {"tile": src.key_tile, "tiles": src.key_tiles, "tile-whole": src.key_tile, "tiles-whole": src.key_tiles,
               "overview": src.key_overview}[op](*args)
        got.flags.writeable = False
        link.cache.put(link.full(key), got)


class NotHere(Exception):
    """Raised inside Trace.read_now's first try when the answer would have to be asked of the server."""


_BACKGROUND = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pattern-reads")  # what read_now fetches
_only_cached = threading.local()


def only_cached() -> bool:
    """True inside BackgroundReads.read_now's first try (in that thread): a request must raise NotHere."""
    return getattr(_only_cached, "on", False)


class BackgroundReads:
    """Trace.read_now for a remote trace: `read` from what is here, else PENDING and `read` runs in a background
    thread (what it fetches is kept: patterns in the answer cache, logit rows in their block), then `on_ready()`."""

    def __init__(self) -> None:
        self._on_way: set = set()  # keys being fetched
        self._failed: dict = {}  # key -> what fetching raised (raised once, by the next read_now)
        self._lock = threading.Lock()

    def read_now(self, trace: Any, key: Any, read: Callable[[Any], Any], on_ready: Callable[[], None]) -> Any:
        from ..trace import PENDING

        with self._lock:
            failed = self._failed.pop(key, None)
        if failed is not None:
            raise failed
        _only_cached.on = True
        try:
            return read(trace)
        except NotHere:
            pass
        finally:
            _only_cached.on = False
        with self._lock:
            if key in self._on_way:
                return PENDING
            self._on_way.add(key)

        def fetch() -> None:
            try:
                read(trace)
            except Exception as exc:  # noqa: BLE001 - handed to the next read_now (EngineGone, a bad request)
                if not isinstance(exc, EngineError):  # e.g. the connection closed under it: still the engine's
                    log.warning("read_now %s: %r", key, exc)
                    exc = EngineError(f"the engine could not answer: {exc}")
                with self._lock:
                    self._failed[key] = exc
            finally:
                with self._lock:
                    self._on_way.discard(key)
            try:
                on_ready()
            except Exception:  # noqa: BLE001 - a view that went away
                log.exception("read_now: on_ready failed")

        _BACKGROUND.submit(fetch)
        return PENDING


class PatternLink:
    """How one remote trace reaches its server: the engine, the trace's id there, the server's instance."""

    def __init__(self, engine: Any, tid: int, instance: str | None, cache: AnswerCache, follow: Follow | None = None) -> None:
        self.engine, self.tid, self.instance, self.cache = engine, tid, instance, cache
        self.follow = follow or Follow()

    def ask(self, op: str, **body: Any) -> Any:
        if only_cached():
            raise NotHere(op)
        return self.engine.call("patterns", {"tid": self.tid, "instance": self.instance, "op": op, **body})

    def full(self, key: tuple) -> tuple:
        return (self.instance, *key)

    def cached(self, key: tuple, op: str, **body: Any) -> Any:
        """The answer to `op` under `key` (the server's instance, then what the answer depends on), asked once."""
        key = self.full(key)
        got = self.cache.get(key)
        if got is None:
            got = self.ask(op, **body)
            if isinstance(got, np.ndarray):
                got.flags.writeable = False  # shared by every later caller
            got = self.cache.put(key, got)
        return got


def reads_all_blocks(name: str, rule: ScoreRule | None) -> bool:
    """Whether a row's weights depend on every block (non-causal self-attention: keys after it too), rather
    than only on the blocks up to its own (causal rows; cross-attention reads the source kept with block 0)."""
    return rule is not None and not rule.causal and not name.endswith("cross_attn")


class ServerPatterns(PatternSource):
    """The patterns of one capture point of a remote trace, answered by its server a tile at a time."""

    def __init__(self, link: PatternLink, name: str, kind: str, layer: int, blocks: tuple[ServerBlock, ...],
                 n_keys: int, n_heads: int, rule: ScoreRule | None) -> None:
        self.link, self.name, self.kind, self.layer = link, name, kind, layer
        self.blocks = blocks
        self.rule = rule
        self.n_heads = n_heads
        self.n_keys = int(n_keys)
        self.n_queries = blocks[-1].q_start + blocks[-1].n if blocks else 0
        self._all = reads_all_blocks(name, rule)

    def lineage(self, q1: int) -> int:
        """The serial of the last block rows before q1 read: the same serial means the same answer."""
        if self._all:
            return self.blocks[-1].serial
        for b in self.blocks:
            if b.q_start + b.n >= q1:
                return b.serial
        return self.blocks[-1].serial

    def _args(self, *args: Any) -> list:
        return [self.kind, self.layer, *args]

    def _newest_row(self, q0: int, q1: int, k0: int, k1: int) -> bool:
        return q1 == self.n_queries and q0 == q1 - 1 and k0 == 0 and k1 == self.n_keys

    def _whole(self, q0: int, q1: int, k0: int, k1: int) -> bool:
        return (q0, q1, k0, k1) == (0, self.n_queries, 0, self.n_keys)

    # -- what an answer depends on (the cache's keys; seed_followed builds the same) ------------------------------
    def key_tile(self, head: int, q0: int, q1: int, k0: int, k1: int) -> tuple:
        return (self.name, self.lineage(q1), "tile", int(head), int(q0), int(q1), int(k0), int(k1))

    def key_tiles(self, q0: int, q1: int, k0: int, k1: int) -> tuple:
        return (self.name, self.lineage(q1), "tiles", int(q0), int(q1), int(k0), int(k1))

    def key_overview(self, heads: Any, rows: int, cols: int, reduce: str, q_range: Any, k_range: Any) -> tuple:
        q_range, k_range = (int(q_range[0]), int(q_range[1])), (int(k_range[0]), int(k_range[1]))
        return (self.name, self.lineage(q_range[1]), "overview", tuple(int(h) for h in heads), int(rows), int(cols),
                str(reduce), q_range, k_range)

    def key_pooled(self, q0: int, q1: int, k1: int, width: int) -> tuple:
        return (self.name, self.lineage(q1), "pooled", int(q0), int(q1), int(k1), int(width))

    def tile(self, head: int, q0: int, q1: int, k0: int, k1: int, log: bool = False) -> np.ndarray:
        if log:
            raise CaptureError("log weights are not asked of a remote engine")
        if self._newest_row(q0, q1, k0, k1):
            self.link.follow.add(("tile", self.name, int(head)))
        elif self._whole(q0, q1, k0, k1) and (q1 - q0) * (k1 - k0) <= FOLLOW_CELLS:  # a view showing it all exactly
            self.link.follow.add(("tile-whole", self.name, int(head)))
        return self.link.cached(self.key_tile(head, q0, q1, k0, k1), "tile", args=self._args(head, q0, q1, k0, k1))

    def tiles(self, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        if self._newest_row(q0, q1, k0, k1):
            self.link.follow.add(("tiles", self.name))
        elif self._whole(q0, q1, k0, k1) and self.n_heads * (q1 - q0) * (k1 - k0) <= FOLLOW_CELLS:
            self.link.follow.add(("tiles-whole", self.name))
        return self.link.cached(self.key_tiles(q0, q1, k0, k1), "tiles", args=self._args(q0, q1, k0, k1))

    def overview(self, heads: list[int], rows: int, cols: int, reduce: str = "max",
                 q_range: tuple[int, int] | None = None, k_range: tuple[int, int] | None = None) -> np.ndarray:
        q_range = tuple(q_range) if q_range else (0, self.n_queries)
        k_range = tuple(k_range) if k_range else (0, self.n_keys)
        if q_range == (0, self.n_queries) and k_range == (0, self.n_keys):  # the whole pattern (a fitted view)
            # rows / cols as many as the pattern has (-1) follow its growth; fewer (the screen's) stay
            r = -1 if rows >= self.n_queries else int(rows)
            c = -1 if cols >= self.n_keys else int(cols)
            self.link.follow.add(("overview", self.name, tuple(int(h) for h in heads), r, c, str(reduce)))
        key = self.key_overview(heads, rows, cols, reduce, q_range, k_range)
        return self.link.cached(key, "overview", args=self._args(list(heads), rows, cols, reduce, list(q_range),
                                                                 list(k_range)))

    def sink_share(self) -> np.ndarray | None:
        """[heads, queries]: rows already fetched for the same blocks are kept; only newer blocks' rows cross."""
        if self.rule is None or self.rule.sinks is None:
            return None
        self.link.follow.add(("sink", self.name))
        cache = self.link.cache
        serials = tuple(b.serial for b in self.blocks)
        prefix_key = (self.link.instance, self.name, "sink-prefix")
        have = cache.get(prefix_key)
        kept, rows = 0, None
        if have is not None:
            old_serials, old_rows = have
            while kept < min(len(old_serials), len(serials)) and old_serials[kept] == serials[kept]:
                kept += 1
            if kept:
                rows = old_rows[:, : self.blocks[kept - 1].q_start + self.blocks[kept - 1].n]
        if kept < len(self.blocks):
            start = self.blocks[kept].q_start
            new = self.link.ask("sink_share", args=self._args(start))
            rows = new if rows is None else np.concatenate([rows, new], axis=1)
            rows.flags.writeable = False
            cache.put(prefix_key, (serials, rows), replace=True)
        return rows
