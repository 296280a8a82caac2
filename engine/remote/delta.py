"""Server side of trace mirroring: what a client must add to its copy of a session's Trace.

A session's successive Traces share their pattern blocks, logit rows and keys with the Trace before them
(engine/session.py), so what changes per step is one new block per capture point, one logits row, one
token and its key rows. TraceSender remembers what it sent (blocks by identity, tokens by value) and
answers a delta: for each list, how much of the client's copy stays (`keep`) and what follows it. After
`back()` the lists shrink; after a branch the suffix differs; after a recompute (head gates) everything is
new. Logit rows never cross here: a delta names them (serial, rows, vocabulary) and the client fetches a
row when something asks for it; with the new token, the step's top candidates come along.

The mirror limit: once a delta would send more than `limit` bytes of blocks and keys (a long prompt on a
1B+ model), the sender switches to keeping them on the server for good: the delta then carries a stub per
block (q_start, rows, serial, what) and the keys' lengths, and the client asks for what it draws
(remote_patterns.py, pattern_answers.py). Below it the whole record is mirrored, so a trace stays browsable
when the server dies.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np

from ..errors import CaptureError
from ..routing import is_router_name
from ..trace import Trace, parse_capture_name

log = logging.getLogger(__name__)

TOP_K = 20  # candidates sent with each step (the whole row only when asked for)
# Mirror a trace's blocks (queries, keys, stored rows) while a delta sends at most this many bytes of them:
# every bundled model at its full context, a 1B Llama's prompt up to ~400 tokens (≈ 165 kB a token), a few
# seconds on a slow tunnel once. Past it they stay on the server. `attention-inspector serve --mirror-limit MB`;
# a client may ask for its own (connect(..., mirror_limit=...)).
MIRROR_LIMIT = 64 * 1024 * 1024


def _common_prefix(old: list, new: tuple | list, same=lambda a, b: a is b) -> int:  # noqa: ANN001
    n = 0
    for a, b in zip(old, new):
        if not same(a, b):
            break
        n += 1
    return n


def _eq(a: Any, b: Any) -> bool:
    return a == b


def _what(block: Any) -> str:
    return "query" if hasattr(block, "lse") else "rows" if hasattr(block, "rows") else "routing"


def _block_bytes(block: Any) -> int:
    """Bytes a block's arrays take on the wire (queries, row statistics and keys; stored rows; routing)."""
    return block.nbytes if hasattr(block, "nbytes") else block.rows.nbytes


def _end(block: Any) -> int:
    """The query position after a pattern block (stored rows, or queries to rebuild them from)."""
    n = block.n if hasattr(block, "n") else block.rows.shape[1] if hasattr(block, "rows") else len(block.experts)
    return block.q_start + n


class TraceSender:
    """Per session (or per one-off run): the state of the client's mirror, and deltas against it."""

    _serials = itertools.count(1)

    def __init__(self, limit: int | None = MIRROR_LIMIT) -> None:
        self.limit = limit  # None: always mirror; 0: never
        self.on_server = False  # blocks stay on the server (switched on once a delta passed the limit)
        self.serials: dict[str, list[int]] = {}  # capture name -> a serial per block, as self.blocks
        self.blocks: dict[str, list] = {}
        self.tokens: list[tuple[int, str, bool]] = []
        self.steps: list = []
        self.logit_rows: list = []
        self.logit_serials: list[int] = []
        self.key_rows: dict[str, int] = {}
        self.rules: dict[str, Any] = {}
        self.static_sent = False
        self._held: dict[int, Any] = {}  # serial -> logits block of the current trace, for the client's lazy fetches

    def reset(self) -> None:
        self.__init__(self.limit)

    def delta(self, trace: Trace) -> dict:
        out: dict[str, Any] = {}
        if not self.static_sent:
            out["static"] = {
                "family": trace.family, "model_name": trace.model_name, "n_layers": dict(trace.n_layers),
                "n_heads": trace.n_heads, "n_kv_heads": trace.n_kv_heads, "no_logits_reason": trace.no_logits_reason,
                "source_ids": trace.source_ids, "source_tokens": trace.source_tokens, "source_special": trace.source_special,
                "has_logits": trace.logit_rows is not None,
                # the transformers backend's: experts per MoE layer, and hybrids' layers without attention
                "n_experts": trace.n_experts, "no_attention": dict(trace.no_attention)}
            self.static_sent = True
        toks = list(zip(trace.token_ids, trace.tokens, trace.special))
        keep = _common_prefix(self.tokens, toks, _eq)
        out["tokens"] = (keep, [t[0] for t in toks[keep:]], [t[1] for t in toks[keep:]], [t[2] for t in toks[keep:]])
        self.tokens = toks
        out["n_prompt"] = trace.n_prompt
        keep = _common_prefix(self.steps, trace.steps, _eq)
        out["steps"] = (keep, list(trace.steps[keep:]))
        self.steps = list(trace.steps)
        out["gates"] = {k: tuple(v) for k, v in trace.gates.items()}
        out["neuron_gates"] = {k: dict(v) for k, v in trace.neuron_gates.items()}
        out["expert_gates"] = {int(k): dict(v) for k, v in trace.expert_gates.items()}
        blocks = {}
        kept_to: dict[str, int] = {}  # capture name -> query position up to which the client's blocks stay
        for name, bs in trace.blocks.items():
            old = self.blocks.get(name, [])
            keep = _common_prefix(old, bs)
            blocks[name] = (keep, list(bs[keep:]))
            self.blocks[name] = list(bs)
            self.serials[name] = self.serials.get(name, [])[:keep] + [next(self._serials) for _ in bs[keep:]]
            kept_to[name] = _end(bs[keep - 1]) if keep else 0
        out["blocks"] = blocks
        out["dropped"] = [n for n in self.blocks if n not in trace.blocks]
        for n in out["dropped"]:
            del self.blocks[n], self.serials[n]
        rules = {name: rule for name, rule in trace.rules.items() if self.rules.get(name) is not rule}
        self.rules.update(rules)
        out["rules"] = rules
        keys = {}
        n_tok_keep = out["tokens"][0]
        for name, k in trace.keys.items():
            # self-attention keys sit at token positions: rows before the first changed token are the client's,
            # unless the forward that made them is gone too (a recompute after head gates changes every key after
            # the gated layer while the tokens stay): keys are kept only as far as the blocks made with them
            made = kept_to.get(name, 0)
            if name.endswith("cross_attn"):  # keys of the source, made once: kept while any block is
                made = k.shape[1] if made else 0
            keep = min(self.key_rows.get(name, 0), n_tok_keep, k.shape[1], made)
            keys[name] = (keep, np.ascontiguousarray(k[:, keep:]))
            self.key_rows[name] = k.shape[1]
        out["keys"] = keys
        switching = False
        if not self.on_server and self.limit is not None:
            size = sum(_block_bytes(b) for _, new in blocks.values() for b in new)
            size += sum(rows.nbytes for _, rows in keys.values())
            if size > self.limit:
                self.on_server = switching = True
                log.info("a trace's record (%.1f MB) passed the mirror limit (%.1f MB): its patterns stay on the server",
                         size / 2**20, self.limit / 2**20)
        if self.on_server:
            self._stub(trace, out, switching)
        out["logits"] = self._logits(trace)
        return out

    def _stub(self, trace: Trace, out: dict, switching: bool) -> None:
        """Blocks as stubs (q_start, rows, serial, what), no keys; after a switch every block anew."""
        stubs = {}
        for name, (keep, new) in out["blocks"].items():
            if switching:
                keep, new = 0, self.blocks[name]
            serials = self.serials[name][keep:]
            stubs[name] = (keep, [(b.q_start, _end(b) - b.q_start, serial, _what(b)) for b, serial in zip(new, serials)])
        out["blocks"], out["keys"], out["on_server"] = stubs, {}, True
        shapes = {}
        for name in trace.blocks:
            if not is_router_name(name):
                try:
                    shapes[name] = trace.attention_shape(*parse_capture_name(name))[2]
                except CaptureError:  # a layer without attention (hybrids): nothing to ask for
                    continue
        out["shapes"] = shapes

    def _logits(self, trace: Trace) -> tuple[int, list] | None:
        if trace.logit_rows is None:
            return None
        rows = trace.logit_rows
        keep = _common_prefix(self.logit_rows, rows)
        new = []
        serials = self.logit_serials[:keep]
        for block in rows[keep:]:
            serial = next(self._serials)
            serials.append(serial)
            self._held[serial] = block
            n, vocab = block.shape
            last = block[-1] if isinstance(block, np.ndarray) else None
            top = None
            if last is not None:  # a step's row: its best candidates come with it
                order = np.argsort(-last, kind="stable")[:TOP_K]
                top = (order.astype(np.int64), np.asarray(last[order], dtype=np.float32))
            new.append((serial, int(n), int(vocab), top))
        for serial in self.logit_serials[keep:]:
            self._held.pop(serial, None)
        self.logit_rows, self.logit_serials = list(rows), serials
        return keep, new

    def logit_rows_of(self, serial: int, start: int, stop: int) -> np.ndarray:
        from ..errors import SessionError

        block = self._held.get(serial)
        if block is None:
            raise SessionError("those logits are no longer held by the server (the session moved on); step again")
        return np.asarray(block.rows(start, stop) if hasattr(block, "rows") else block[start:stop], dtype=np.float32)
