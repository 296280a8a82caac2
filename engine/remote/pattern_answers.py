"""Server side of server-side patterns: tiles, overviews, pooled thumbnails, sink shares and routing of a
trace held here, answered in a thread of their own.

A client whose trace passed the mirror limit (delta.py) asks for what it draws (remote_patterns.py). The
answer is the same Trace method the client would have run on a mirrored copy, so the numbers are the same.
Traces are immutable, so this thread reads them beside the engine thread (which keeps stepping) and the
socket thread (which keeps answering pings and cancels); its answers go back through the server's reply pipe.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import zmq

from ..errors import EngineError, SessionError
from ..trace import parse_capture_name
from .protocol import Prepared, error_body

log = logging.getLogger(__name__)

PATTERN_OPS = frozenset({"tile", "tiles", "overview", "pooled", "sink_share", "routing", "rollout"})


def answer(trace: Any, body: dict) -> Any:
    """What the client's Trace would have computed on a mirrored copy, for one request."""
    op, args = body.get("op"), list(body.get("args") or ())
    if op == "routing":  # {router name: [block index, ...]} -> {name: [RoutingBlock, ...]}
        return {name: [trace.blocks[name][int(i)] for i in indices] for name, indices in body["want"].items()}
    if op == "pooled":  # the same region of several layers: {name: pooled}
        out = {}
        for name in body["names"]:
            kind, layer = parse_capture_name(name)
            out[name] = trace.attention_pooled(kind, layer, *args)
        return out
    if op == "rollout":  # engine.analysis.rollout: only the product crosses, not every layer's pattern
        from ..analysis import rollout

        return rollout(trace, args[0], int(args[1]))
    kind, layer, rest = args[0], int(args[1]), args[2:]
    if op == "tile":
        return trace.attention_tile(kind, layer, *rest)
    if op == "tiles":
        return trace.attention_tiles(kind, layer, *rest)
    if op == "overview":
        heads, rows, cols, reduce, q_range, k_range = rest
        return trace.attention_overview(kind, layer, heads=heads, rows=rows, cols=cols, reduce=reduce,
                                        q_range=tuple(q_range), k_range=tuple(k_range))
    if op == "sink_share":
        share = trace.sink_share(kind, layer)
        return None if share is None else share[:, int(rest[0]):]
    raise EngineError(f"no pattern request {op!r} over the wire (a newer client?)")


def newest_answers(trace: Any, items: list) -> list:
    """What a client's views asked of its last trace (remote_patterns.Follow), answered for `trace` (the step's
    new one) to go with the step's answer: [item, args, answer] each; what cannot be answered is left out (the
    client asks for it itself if a view still wants it)."""
    from .remote_patterns import pooled_layers

    out = []
    for item in items[:64]:
        try:
            op = item[0]
            if op == "pooled":
                kind, width = str(item[1]), int(item[2])
                names = pooled_layers(trace, kind)
                if not names:
                    continue
                _h, nq, nk = trace.attention_shape(kind, parse_capture_name(names[0])[1])
                args = [nq - 1, nq, min(nk, nq) if kind == "self" else nk, width]
                got = {}
                for name in names:
                    k, layer = parse_capture_name(name)
                    if trace.attention_shape(k, layer)[1:] == (nq, nk):
                        got[name] = trace.attention_pooled(k, layer, *args)
                out.append([item, args, got])
                continue
            kind, layer = parse_capture_name(str(item[1]))
            _h, nq, nk = trace.attention_shape(kind, layer)
            if op == "tile":
                args = [int(item[2]), nq - 1, nq, 0, nk]
                out.append([item, args, trace.attention_tile(kind, layer, *args)])
            elif op == "tiles":
                args = [nq - 1, nq, 0, nk]
                out.append([item, args, trace.attention_tiles(kind, layer, *args)])
            elif op == "tile-whole":
                args = [int(item[2]), 0, nq, 0, nk]
                out.append([item, args, trace.attention_tile(kind, layer, *args)])
            elif op == "tiles-whole":
                args = [0, nq, 0, nk]
                out.append([item, args, trace.attention_tiles(kind, layer, *args)])
            elif op == "overview":
                heads, rows, cols, reduce = [int(h) for h in item[2]], int(item[3]), int(item[4]), str(item[5])
                rows, cols = (nq if rows < 0 else rows), (nk if cols < 0 else cols)  # -1: as many as the pattern has
                args = [heads, rows, cols, reduce, [0, nq], [0, nk]]
                out.append([item, args, trace.attention_overview(kind, layer, heads=heads, rows=rows, cols=cols,
                                                                 reduce=reduce, q_range=(0, nq), k_range=(0, nk))])
        except (EngineError, IndexError, TypeError, ValueError) as exc:  # a view's wish that does not fit this trace
            log.debug("not answered with the step: %s (%s)", item, exc)
    return out


class PatternThread:
    """Answers "patterns" requests in order, off the engine and socket threads: `put(ident, sid, rid, body)`.
    `post(wake, ident, sid, Prepared)` hands an answer to the socket thread, which stamps it (replay protection)."""

    def __init__(self, ctx: zmq.Context, pipe: str, key: bytes, lookup: Callable[[dict], Any],
                 post: Callable[[Any, bytes, str, Prepared], None]) -> None:
        self._ctx, self._pipe, self._key, self._lookup, self._post = ctx, pipe, key, lookup, post
        self._inbox: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="patterns", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, ident: bytes, sid: str, rid: Any, body: dict) -> None:
        self._inbox.put((ident, sid, rid, body))

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join(5)

    def _loop(self) -> None:
        out = self._ctx.socket(zmq.PUSH)
        out.connect(self._pipe)
        try:
            while True:
                item = self._inbox.get()
                if item is None:
                    return
                ident, sid, rid, body = item
                try:
                    reply = {"ok": answer(self._lookup(body), body)}
                except Exception as exc:  # noqa: BLE001 - a bad request is an answer, never a dead thread
                    if not isinstance(exc, EngineError):
                        log.exception("a pattern request failed")
                    reply = {"error": error_body(exc)}
                self._post(out, ident, sid, Prepared(self._key, {"id": rid}, reply))
        finally:
            out.close(0)


def stale(instance: Any) -> SessionError:
    return SessionError("that trace was made by an earlier run of the engine server (it restarted); step again "
                        f"(instance {instance!r})")
