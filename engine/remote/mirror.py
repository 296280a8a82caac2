"""Client side of trace mirroring: a real engine Trace, kept up to date from the server's deltas.

The client's copy holds the same pattern blocks (stored rows, or the queries, keys and row statistics
that rebuild them), so every Trace answer (attention, tiles, overviews, rows, head statistics computed
on the patterns) is the same numpy code on the same numbers as in-process, and the last trace stays
browsable when the server goes away. Per step only the new blocks cross (independent of the context
length when patterns are rebuilt; the new row of every head when they are stored). Logit rows stay on
the server until something asks for one (RemoteLogits); a step's top candidates come with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..rebuild import KeyArena
from ..trace import Trace


@dataclass(frozen=True, eq=False)
class RemoteTrace(Trace):
    """A Trace whose model lives in a remote engine; `remote` names it there (for explanations, analyses)."""

    remote: Any = None  # (engine, trace id on the server, sender id)


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
        for name, (keep, new) in d["blocks"].items():
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
            remote=(self.engine, answer["tid"], sender))
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
