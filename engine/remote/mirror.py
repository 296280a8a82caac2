"""Client side of trace mirroring: a real engine Trace, kept up to date from the server's deltas.

The client's copy holds the same pattern blocks (stored rows, or the queries, keys and row statistics
that rebuild them), so every Trace answer (attention, tiles, overviews, rows, head statistics computed
on the patterns) is the same numpy code on the same numbers as in-process, and the last trace stays
browsable when the server goes away. Per step only the new blocks cross (independent of the context
length when patterns are rebuilt; the new row of every head when they are stored). Logit rows stay on
the server until something asks for one (RemoteLogits); a step's top candidates come with it.

Past the mirror limit (delta.py) the blocks stay on the server: the client holds stubs (ServerBlock) and
its Trace asks the server for each tile, overview, row, pooled thumbnail, sink share or routing it is asked
(remote_patterns.py), caching the answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..rebuild import KeyArena
from ..routing import Routing, is_router_name, join_routing, router_name
from ..trace import PatternBlock, Trace, capture_name
from .remote_patterns import (
    AnswerCache,
    BackgroundReads,
    Follow,
    NotHere,
    PatternLink,
    ServerBlock,
    ServerPatterns,
    only_cached,
    seed_followed,
)


@dataclass(frozen=True, eq=False)
class RemoteTrace(Trace):
    """A Trace whose model lives in a remote engine; `remote` names it there (for explanations, analyses).
    Capture points whose blocks stayed on the server (ServerBlock stubs) are answered by asking it."""

    remote: Any = None  # (engine, trace id on the server, sender id)
    shapes: dict = field(default_factory=dict)  # capture name -> keys, for blocks kept on the server
    link: PatternLink | None = None
    reads: BackgroundReads = field(default_factory=BackgroundReads, repr=False, compare=False)

    def _on_server(self, name: str) -> bool:
        blocks = self.blocks.get(name)
        return bool(blocks) and isinstance(blocks[0], ServerBlock)

    @property
    def patterns_on_server(self) -> bool:
        """True when this trace's patterns stayed on the server (past the mirror limit)."""
        return any(self._on_server(n) for n in self.blocks)

    def _source(self, kind: str, layer: int):  # noqa: ANN202 - a PatternSource
        name = self.capture_point(kind, layer)
        if not self._on_server(name):
            return super()._source(kind, layer)
        src = self._sources.get(name)
        if src is None:
            src = self._sources[name] = ServerPatterns(self.link, name, kind, int(layer), self.blocks[name],
                                                       self.shapes[name], self.n_heads, self.rules.get(name))
        return src

    def read_now(self, key: Any, read: Any, on_ready: Any) -> Any:
        """As Trace.read_now: what is not here (patterns kept on the server, logit rows) is fetched in the
        background (PENDING now, on_ready() when it landed)."""
        return self.reads.read_now(self, key, read, on_ready)

    def sink_share(self, kind: str, layer: int) -> np.ndarray | None:
        src = self._source(kind, layer)
        if isinstance(src, ServerPatterns):
            return src.sink_share()
        return super().sink_share(kind, layer)

    def attention_pooled(self, kind: str, layer: int, q0: int, q1: int, k1: int, width: int) -> np.ndarray:
        """As Trace.attention_pooled; on the server, asked for every layer of `kind` with the same region at
        once (the head grid asks each layer's new row after a step: one round trip, not one per layer)."""
        src = self._source(kind, layer)
        if not isinstance(src, ServerPatterns):
            return super().attention_pooled(kind, layer, q0, q1, k1, width)
        q0, q1, k1, width = max(0, int(q0)), min(src.n_queries, int(q1)), min(src.n_keys, int(k1)), max(1, int(width))
        if q0 >= q1 or k1 <= 0:
            return np.zeros((self.n_heads, 0, 0), dtype=np.float32)
        link = self.link
        region = (q0, q1, k1, width)
        if q1 == src.n_queries and q0 == q1 - 1:  # the newest row (the head grid after a step)
            link.follow.add(("pooled", kind, width))

        def key(s: ServerPatterns) -> tuple:
            return link.full(s.key_pooled(*region))

        got = link.cache.get(key(src))
        if got is not None:
            return got
        ask = [src]
        for i in range(self.n_layers.get(kind, 0)):
            name = capture_name(kind, i)
            if i == layer or name in self.no_attention or not self._on_server(name):
                continue
            other = self._source(kind, i)
            if other.n_queries >= q1 and other.n_keys >= k1 and link.cache.get(key(other)) is None:
                ask.append(other)
        answer = link.ask("pooled", names=[s.name for s in ask], args=list(region))
        for s in ask:
            pooled = answer[s.name]
            pooled.flags.writeable = False
            link.cache.put(key(s), pooled)
        return answer[src.name]

    def rollout_on_server(self, kind: str, upto: int) -> np.ndarray | None:
        """engine.analysis.rollout computed by the server when the patterns stayed there (every layer's whole
        pattern would cross otherwise: only the product does); None when they are here."""
        names = [capture_name(kind, i) for i in range(upto + 1)]
        names = [n for n in names if n in self.blocks and n not in self.no_attention]
        if not names or not all(self._on_server(n) for n in names):
            return None
        link = self.link
        key = ("rollout", kind, upto, tuple(self.blocks[n][-1].serial for n in names))
        return link.cached(key, "rollout", args=[kind, int(upto)])

    def pattern_blocks(self, kind: str, layer: int) -> tuple[PatternBlock, ...]:
        src = self._source(kind, layer)
        if not isinstance(src, ServerPatterns):
            return super().pattern_blocks(kind, layer)
        causal = src.rule.causal if src.rule is not None else kind == "self"
        out = []
        for b in src.blocks:
            block = b._got.get("block")
            if block is None:
                n_k = b.q_start + b.n if causal else src.n_keys
                block = b._got["block"] = PatternBlock(b.q_start, src.tiles(b.q_start, b.q_start + b.n, 0, n_k))
            out.append(block)
        return tuple(out)

    def routing(self, layer: int) -> Routing:
        stack = "encoder" if self.family == "encoder" else "decoder"
        name = router_name(stack, int(layer))
        if not self._on_server(name):
            return super().routing(layer)
        # every MoE layer's missing blocks in one round trip (the Experts dock reads them all)
        want = {n: [i for i, b in enumerate(bs) if "block" not in b._got] for n, bs in self.blocks.items()
                if is_router_name(n) and self._on_server(n)}
        want = {n: v for n, v in want.items() if v}
        self.link.follow.add(("routing",))
        if want:
            got = self.link.ask("routing", want=want)
            for n, indices in want.items():
                for i, block in zip(indices, got[n]):
                    self.blocks[n][i]._got["block"] = block
        return join_routing(int(layer), tuple(b._got["block"] for b in self.blocks[name]), self.n_experts)

    @property
    def nbytes(self) -> int:
        """Bytes this process holds for attention (blocks kept on the server count nothing)."""
        total = 0
        for bs in self.blocks.values():
            for b in bs:
                total += b.rows.nbytes if isinstance(b, PatternBlock) else b.nbytes
        return total + sum(k.nbytes for k in self.keys.values())


class RemoteLogits:
    """A block of logit rows held by the server, fetched a range at a time when asked and kept once fetched."""

    def __init__(self, fetch: Any, sender: int, serial: int, n: int, vocab: int, top: tuple | None = None) -> None:
        self._fetch = fetch  # fetch(sender, serial, start, stop) -> float32 (rows, vocab)
        self.sender, self.serial = sender, serial
        self.shape = (n, vocab)
        self.top = top  # (ids, logits) of the best candidates of the last row (a step's row), or None
        self._rows: dict[int, np.ndarray] = {}

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        start, stop, _ = slice(start, stop).indices(self.shape[0])
        missing = [i for i in range(start, stop) if i not in self._rows]
        if missing:
            if only_cached():
                raise NotHere("logits")
            got = self._fetch(self.sender, self.serial, missing[0], missing[-1] + 1)
            for i, row in zip(range(missing[0], missing[-1] + 1), got):
                row = np.array(row, dtype=np.float32)
                row.flags.writeable = False
                self._rows[i] = row
        if stop <= start:
            return np.zeros((0, self.shape[1]), dtype=np.float32)
        return np.stack([self._rows[i] for i in range(start, stop)])


@dataclass
class TraceMirror:
    """What the client holds of one session's (or one run's) trace, and the Trace made from it."""

    fetch: Any
    engine: Any = None
    static: dict = field(default_factory=dict)
    token_ids: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    special: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    n_prompt: int = 0
    gates: dict = field(default_factory=dict)
    neuron_gates: dict = field(default_factory=dict)
    expert_gates: dict = field(default_factory=dict)
    blocks: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)  # name -> KeyArena
    logits: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)  # capture name -> keys, while blocks stay on the server
    trace: RemoteTrace | None = None

    def apply(self, answer: dict) -> RemoteTrace:
        """Apply a server answer ({"tid", "sender", "delta"}) and return the new Trace."""
        d, sender = answer["delta"], answer["sender"]
        if "static" in d:
            self.static = d["static"]
        keep, ids, toks, special = d["tokens"]
        del self.token_ids[keep:], self.tokens[keep:], self.special[keep:]
        self.token_ids += ids
        self.tokens += toks
        self.special += special
        self.n_prompt = d["n_prompt"]
        keep, steps = d["steps"]
        del self.steps[keep:]
        self.steps += steps
        self.gates = d["gates"]
        self.neuron_gates = d["neuron_gates"]
        self.expert_gates = d.get("expert_gates") or {}  # the transformers backend's MoE models
        for name in d["dropped"]:
            self.blocks.pop(name, None)
        stubs = bool(d.get("on_server"))
        if stubs and "shapes" not in d:
            raise ValueError("a server-side delta without shapes")
        if stubs:
            self.keys.clear()  # nothing to rebuild from here
            self.shapes = dict(d["shapes"])
        for name, (keep, new) in d["blocks"].items():
            if stubs:
                new = [ServerBlock(int(q), int(n), int(serial), str(what)) for q, n, serial, what in new]
            self.blocks[name] = self.blocks.get(name, [])[:keep] + list(new)  # a new list: older traces keep theirs
        self.rules.update(d["rules"])
        for name, (keep, rows) in d["keys"].items():
            arena = self.keys.setdefault(name, KeyArena())
            arena.truncate(keep)
            if rows.shape[1]:
                arena.append(rows)
        if d["logits"] is not None:
            keep, new = d["logits"]
            del self.logits[keep:]
            self.logits += [RemoteLogits(self.fetch, sender, serial, n, vocab, top) for serial, n, vocab, top in new]
        s = self.static
        self.trace = RemoteTrace(
            family=s["family"], model_name=s["model_name"], n_layers=dict(s["n_layers"]), n_heads=s["n_heads"],
            n_kv_heads=s["n_kv_heads"], no_logits_reason=s["no_logits_reason"], token_ids=tuple(self.token_ids),
            tokens=tuple(self.tokens), special=tuple(self.special), n_prompt=self.n_prompt,
            blocks={k: tuple(v) for k, v in self.blocks.items()},
            logit_rows=tuple(self.logits) if s["has_logits"] else None,
            source_ids=s["source_ids"], source_tokens=s["source_tokens"], source_special=s["source_special"],
            steps=tuple(self.steps), gates=dict(self.gates),
            neuron_gates={k: dict(v) for k, v in self.neuron_gates.items()},
            expert_gates={int(k): dict(v) for k, v in self.expert_gates.items()},
            rules={k: r for k, r in self.rules.items() if k in self.blocks},
            keys={k: a.view() for k, a in self.keys.items() if a.length},
            n_experts=s.get("n_experts"), no_attention=dict(s.get("no_attention") or {}),
            remote=(self.engine, answer["tid"], sender), shapes=dict(self.shapes) if stubs else {},
            link=PatternLink(self.engine, answer["tid"], _instance(self.engine), *_cache(self.engine)) if stubs else None)
        if stubs:  # what the window read of the last trace's newest row: answered with the step, or asked now
            if answer.get("followed"):
                seed_followed(self.trace, answer["followed"])
            self.trace.link.follow.prefetch(self.trace)
        return self.trace

    def seed_row(self, position: int, row: np.ndarray) -> None:
        """Keep a logits row the server sent along (so reading it later asks nothing)."""
        start = 0
        for block in self.logits:
            n = block.shape[0]
            if position < start + n:
                row = np.array(row, dtype=np.float32)
                row.flags.writeable = False
                block._rows[position - start] = row
                return
            start += n

    def last_top(self) -> tuple | None:
        """(ids, logits) of the best candidates at the newest position, as the step brought them."""
        return self.logits[-1].top if self.logits else None


def _instance(engine: Any) -> str | None:
    """The server's instance (a restarted server numbers its traces from 1 again)."""
    return (getattr(engine, "info", None) or {}).get("instance")


def _cache(engine: Any) -> tuple[AnswerCache, Follow]:
    """The engine's cache of pattern answers (one per engine: its bound is one bound) and what its views follow."""
    found = getattr(engine, "pattern_cache", None)
    if found is None:
        found = (AnswerCache(), Follow())
        if engine is not None:
            engine.pattern_cache = found
    return found
