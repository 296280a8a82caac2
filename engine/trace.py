"""Trace: everything a run or a session recorded, as plain numpy on the CPU. The one object the GUI sees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from .errors import CaptureError
from .rebuild import PatternSource, QueryBlock, Rebuilt, ScoreRule, Stored, as_float32, block_keys
from .routing import Routing, RoutingBlock, is_router_name, join_routing, router_name

KINDS = ("encoder", "self", "cross")
UNEMBED_SLAB = 8192  # vocabulary columns widened from bfloat16 at a time for lazy logit rows
POOL_CHUNK_BYTES = 16 * 1024 * 1024  # rows of every head rebuilt at a time by attention_pooled
PENDING = type("Pending", (), {"__repr__": lambda self: "PENDING", "__bool__": lambda self: False})()
"""What Trace.read_now answers when the answer is on its way (a remote engine that keeps the patterns)."""
DENSE_LIMIT = 4 * 1024**3  # bytes: a whole layer's pattern beyond this must be asked for by head, tile or overview


def capture_name(kind: str, layer: int) -> str:
    """The module-tree name of a pattern: encoder.{i}.attn, decoder.{i}.attn or decoder.{i}.cross_attn."""
    return {"encoder": f"encoder.{layer}.attn", "self": f"decoder.{layer}.attn", "cross": f"decoder.{layer}.cross_attn"}[kind]


def mlp_name(stack: str, layer: int) -> str:
    """The module-tree name of an MLP: decoder.{i}.mlp or encoder.{i}.mlp (neuron gates, patching)."""
    if stack not in ("encoder", "decoder"):
        raise CaptureError(f"stack must be 'encoder' or 'decoder', not {stack!r}")
    return f"{stack}.{layer}.mlp"


def parse_capture_name(name: str) -> tuple[str, int]:
    """The inverse of capture_name: "decoder.3.cross_attn" -> ("cross", 3)."""
    try:
        stack, layer, what = name.split(".")
        kind = {("encoder", "attn"): "encoder", ("decoder", "attn"): "self", ("decoder", "cross_attn"): "cross"}[(stack, what)]
        return kind, int(layer)
    except (ValueError, KeyError) as exc:
        raise CaptureError(f"{name!r} is not a capture name (encoder.i.attn, decoder.i.attn, decoder.i.cross_attn)") from exc


@dataclass(frozen=True)
class StepInfo:
    """How one token after the prompt was chosen."""

    position: int  # index of the chosen token in the main sequence
    token_id: int
    token: str
    how: str  # "greedy" | "sampled" | "forced" | "masked" (encoder: a token replaced by [MASK])
    prob: float  # probability of the chosen token under the settings in force
    replaced_id: int | None = None  # encoder fill-mask: the id that stood at `position` before


@dataclass(frozen=True)
class PatternBlock:
    """Rows q_start .. q_start+n of one capture point: array (heads, n, keys), read-only."""

    q_start: int
    rows: np.ndarray


@dataclass(frozen=True, eq=False)
class LazyLogits:
    """Logit rows kept as final hidden states: soft-cap((h · scale) Wᵀ + bias), computed when first asked
    for, as Transformer.logits does on the device. Wᵀ is shared read-only data (no reference to the model)."""

    hidden: np.ndarray  # (n, d) float32
    unembedding_t: np.ndarray  # (d, vocab): float32, or bfloat16 bits (uint16) widened a slab of columns at a time
    bias: np.ndarray | None
    scale: float
    cap: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.hidden.shape[0], self.unembedding_t.shape[1])

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        h = self.hidden[start:stop]
        h = h * self.scale if self.scale != 1.0 else h
        w = self.unembedding_t
        if w.dtype == np.float32:
            out = h @ w
        else:  # bfloat16 kept as the model's own bits: no float32 copy of a 128k-token vocabulary
            out = np.empty((h.shape[0], w.shape[1]), dtype=np.float32)
            for c in range(0, w.shape[1], UNEMBED_SLAB):
                out[:, c : c + UNEMBED_SLAB] = h @ as_float32(w[:, c : c + UNEMBED_SLAB])
        return softcap(out + self.bias if self.bias is not None else out, self.cap)


def pool_aligned(out: np.ndarray, rows: np.ndarray, offset: int, width: int) -> None:
    """Max rows (heads, n, keys) into `out` (heads, row bins, key bins) in place: row i goes to bin
    (offset + i) // width, key j to bin j // width (a partial last bin pads with zeros: weights are ≥ 0)."""
    h, n, nk = rows.shape
    nkb = -(-nk // width)
    if nkb * width != nk:
        rows = np.pad(rows, ((0, 0), (0, 0), (0, nkb * width - nk)))
    pooled = rows.reshape(h, n, nkb, width).max(axis=-1) if width > 1 else rows  # (h, n, nkb)
    bins = (offset + np.arange(n)) // width
    starts = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
    reduced = np.maximum.reduceat(pooled, starts, axis=1) if len(starts) < n else pooled
    target = bins[starts]
    out[:, target, :nkb] = np.maximum(out[:, target, :nkb], reduced)


def softcap(logits, cap: float | None):  # noqa: ANN001, ANN201 - a torch tensor or a numpy array
    """The final-logit soft-cap c·tanh(x / c) (Gemma 2), one definition for the torch path and lazy numpy rows."""
    if cap is None:
        return logits
    scaled = logits / cap
    return (np.tanh(scaled) if isinstance(scaled, np.ndarray) else scaled.tanh()) * cap


def _rows(block: np.ndarray | LazyLogits, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows of one logits block: an array, or anything with rows(start, stop) (LazyLogits, a remote engine's)."""
    if isinstance(block, np.ndarray):
        return block[start:stop]
    return block.rows(start, stop)


@dataclass(frozen=True, eq=False)
class Trace:
    family: str
    model_name: str
    n_layers: dict[str, int]  # kind -> layers of that kind
    n_heads: int
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    special: tuple[bool, ...]
    n_prompt: int
    blocks: dict[str, tuple[PatternBlock, ...]]  # capture name -> row blocks in query order
    logit_rows: tuple[np.ndarray | LazyLogits, ...] | None  # (n, vocab) blocks in token order
    source_ids: tuple[int, ...] | None = None
    source_tokens: tuple[str, ...] | None = None
    source_special: tuple[bool, ...] | None = None
    steps: tuple[StepInfo, ...] = ()
    gates: dict[str, tuple[float, ...]] = field(default_factory=dict)  # capture name -> head gates != 1
    neuron_gates: dict[str, dict[int, float]] = field(default_factory=dict)  # "decoder.3.mlp" -> {neuron: gate != 1}
    expert_gates: dict[int, dict[int, float]] = field(default_factory=dict)  # MoE layer -> {expert: gate != 1}
    no_logits_reason: str | None = None
    n_kv_heads: int | None = None  # key/value heads; fewer than n_heads with grouped-query attention
    rules: dict[str, ScoreRule] = field(default_factory=dict)  # capture name -> score rule (rebuilt points)
    keys: dict[str, np.ndarray] = field(default_factory=dict)  # capture name -> keys (kv heads, S, hs), else from blocks
    n_experts: int | None = None  # experts per MoE layer (mixture-of-experts models); routing blocks under "*.router"
    # capture name -> what the layer has instead of attention ("conv", "linear_attention", "mamba"): hybrids keep
    # their true layer numbers, and these layers have no pattern
    no_attention: dict[str, str] = field(default_factory=dict)
    _sources: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # name -> PatternSource, made once

    @property
    def kv_group(self) -> int:
        """How many consecutive query heads share one key/value head (1 without grouped-query attention)."""
        return self.n_heads // (self.n_kv_heads or self.n_heads)

    def kv_head(self, head: int) -> int:
        """The key/value head that query head `head` reads."""
        return head // self.kv_group

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if self.n_layers.get(k))

    @property
    def capture_names(self) -> list[str]:
        return [capture_name(k, i) for k in self.kinds for i in range(self.n_layers[k])]

    def __len__(self) -> int:
        return len(self.token_ids)

    def capture_point(self, kind: str, layer: int) -> str:
        """The capture name of (kind, layer), after checking that this trace recorded it."""
        if kind not in self.kinds:
            raise CaptureError(f"this {self.family} model has no {kind!r} attention; choose one of {', '.join(self.kinds)}")
        n = self.n_layers[kind]
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < n:
            raise CaptureError(f"layer {layer} does not exist for {kind!r} attention; layers are 0..{n - 1}")
        name = capture_name(kind, int(layer))
        if name in self.no_attention:
            have = [i for i in range(n) if capture_name(kind, i) not in self.no_attention]
            raise CaptureError(f"layer {layer} has no attention (a {self.no_attention[name]} layer); the layers with "
                               f"attention are {', '.join(map(str, have))}")
        if name not in self.blocks:
            raise CaptureError(f"the {kind} attention of layer {layer} was not recorded for this trace (the session ran "
                               "with capture=False, or with capture= naming other layers)")
        return name

    def _source(self, kind: str, layer: int) -> PatternSource:
        name = self.capture_point(kind, layer)
        src = self._sources.get(name)
        if src is None:
            blocks = self.blocks[name]
            if isinstance(blocks[0], QueryBlock):
                keys = self.keys.get(name)
                src = Rebuilt(self.rules[name], blocks, keys if keys is not None else block_keys(blocks))
            else:
                src = Stored(blocks)
            self._sources[name] = src
        return src

    def _head(self, head: int) -> int:
        if not isinstance(head, (int, np.integer)) or not 0 <= head < self.n_heads:
            raise CaptureError(f"head {head} does not exist; heads are 0..{self.n_heads - 1}")
        return int(head)

    def attention_shape(self, kind: str, layer: int) -> tuple[int, int, int]:
        """(heads, queries, keys) of a pattern, without computing it."""
        src = self._source(kind, layer)
        return self.n_heads, src.n_queries, src.n_keys

    def attention(self, kind: str, layer: int) -> np.ndarray:
        """Pattern (post-softmax) as float32 [heads, queries, keys]; causal entries above the diagonal are 0."""
        src = self._source(kind, layer)
        size = self.n_heads * src.n_queries * src.n_keys * 4
        if size > DENSE_LIMIT:
            raise CaptureError(f"the {kind} pattern of layer {layer} would take {size / 2**30:.1f} GiB; ask for one head, "
                               "a tile (attention_tile) or a pooled overview (attention_overview) instead")
        return src.tiles(0, src.n_queries, 0, src.n_keys)

    def attention_head(self, kind: str, layer: int, head: int) -> np.ndarray:
        """One head's pattern, float32 [queries, keys], without assembling the other heads."""
        src = self._source(kind, layer)
        return src.tile(self._head(head), 0, src.n_queries, 0, src.n_keys)

    def attention_tile(self, kind: str, layer: int, head: int, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        """Rows q0..q1 over keys k0..k1 of one head's pattern, float32 (clipped to the pattern's size)."""
        src = self._source(kind, layer)
        q0, q1 = max(0, int(q0)), min(src.n_queries, int(q1))
        k0, k1 = max(0, int(k0)), min(src.n_keys, int(k1))
        if q0 >= q1 or k0 >= k1:
            return np.zeros((max(0, q1 - q0), max(0, k1 - k0)), dtype=np.float32)
        return src.tile(self._head(head), q0, q1, k0, k1)

    def attention_tiles(self, kind: str, layer: int, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        """attention_tile of every head at once, float32 [heads, rows, keys] (clipped to the pattern's size)."""
        src = self._source(kind, layer)
        q0, q1 = max(0, int(q0)), min(src.n_queries, int(q1))
        k0, k1 = max(0, int(k0)), min(src.n_keys, int(k1))
        if q0 >= q1 or k0 >= k1:
            return np.zeros((self.n_heads, max(0, q1 - q0), max(0, k1 - k0)), dtype=np.float32)
        return src.tiles(q0, q1, k0, k1)

    def attention_overview(self, kind: str, layer: int, heads: list[int] | None = None, rows: int = 256, cols: int = 256,
                           reduce: str = "max", q_range: tuple[int, int] | None = None,
                           k_range: tuple[int, int] | None = None) -> np.ndarray:
        """Pooled patterns float32 [len(heads), rows', cols'] of `heads` (default: all) over q_range × k_range:
        each cell the max (or mean) of the cells it covers, never more cells than the region has. Computed a
        chunk of rows at a time, so a long context never needs a whole pattern in memory."""
        if reduce not in ("max", "mean"):
            raise CaptureError(f"reduce must be 'max' or 'mean', not {reduce!r}")
        src = self._source(kind, layer)
        heads = list(range(self.n_heads)) if heads is None else [self._head(h) for h in heads]
        q_range = (max(0, q_range[0]), min(src.n_queries, q_range[1])) if q_range else None
        k_range = (max(0, k_range[0]), min(src.n_keys, k_range[1])) if k_range else None
        return src.overview(heads, rows, cols, reduce, q_range, k_range)

    def attention_pooled(self, kind: str, layer: int, q0: int, q1: int, k1: int, width: int) -> np.ndarray:
        """Every head's rows q0..q1 over keys 0..k1, max-pooled over square bins of `width` positions aligned to
        multiples of it (the head grid's thumbnails): float32 [heads, (q1 - 1) // width - q0 // width + 1,
        ⌈k1 / width⌉]. A chunk of rows at a time, so a long prefill never needs its whole pattern."""
        src = self._source(kind, layer)
        q0, q1, k1, width = max(0, int(q0)), min(src.n_queries, int(q1)), min(src.n_keys, int(k1)), max(1, int(width))
        if q0 >= q1 or k1 <= 0:
            return np.zeros((self.n_heads, 0, 0), dtype=np.float32)
        out = np.zeros((self.n_heads, (q1 - 1) // width - q0 // width + 1, -(-k1 // width)), dtype=np.float32)
        chunk = max(1, POOL_CHUNK_BYTES // (4 * k1 * self.n_heads))
        for a in range(q0, q1, chunk):
            z = min(a + chunk, q1)
            pool_aligned(out, src.tiles(a, z, 0, k1), a - (q0 // width) * width, width)
        return out

    def pattern_blocks(self, kind: str, layer: int) -> tuple[PatternBlock, ...]:
        """The row blocks of one capture point, in query order (shared with earlier traces of the same
        session, so a view can update incrementally by identity). Rebuilt points build each block's rows
        once, on first request."""
        src = self._source(kind, layer)
        if isinstance(src, Stored):
            return src.blocks
        out = []
        for b in src.blocks:
            block = b._dense.get("block")
            if block is None:
                block = b._dense["block"] = PatternBlock(b.q_start, src.dense_rows(b))
            out.append(block)
        return tuple(out)

    def attention_row(self, kind: str, layer: int, query: int) -> np.ndarray:
        """One query's attention over keys, float32 [heads, keys], without assembling the whole pattern."""
        src = self._source(kind, layer)
        if isinstance(src, Stored):
            for b in src.blocks:
                if b.q_start <= query < b.q_start + b.rows.shape[1]:
                    return b.rows[:, query - b.q_start].astype(np.float32)
        elif isinstance(query, (int, np.integer)) and 0 <= query < src.n_queries:
            return src.tiles(int(query), int(query) + 1, 0, src.n_keys)[:, 0]
        raise CaptureError(f"query position {query} is outside 0..{len(self) - 1}")

    def sink_share(self, kind: str, layer: int) -> np.ndarray | None:
        """Per head and query row, the share of attention that went to the sink (gpt-oss): 1 − the row's sum
        over the keys, float32 [heads, queries]; None where the layer has no sink. Exact and O(T): each row's
        lse already holds the sink term, so the share is exp(sink − lse)."""
        src = self._source(kind, layer)
        if not isinstance(src, Rebuilt) or src.rule.sinks is None:
            return None
        sinks = src.rule.sinks.astype(np.float32)[:, None]
        return np.concatenate([np.exp(sinks - b.lse) for b in src.blocks], axis=1).astype(np.float32, copy=False)

    @property
    def moe_layers(self) -> list[int]:
        """Layers whose routing this trace recorded (mixture-of-experts models), in order."""
        return sorted(int(n.split(".")[1]) for n in self.blocks if is_router_name(n))

    def routing(self, layer: int) -> Routing:
        """The experts each token took in MoE layer `layer` and their weights, as the forward used them."""
        stack = "encoder" if self.family == "encoder" else "decoder"
        blocks = self.blocks.get(router_name(stack, int(layer)))
        if not blocks:
            moe = self.moe_layers
            raise CaptureError(f"layer {layer} has no recorded expert routing; "
                               + (f"MoE layers: {', '.join(map(str, moe))}" if moe else "this model has no mixture of experts"))
        return join_routing(int(layer), blocks, self.n_experts)

    def patterns(self) -> dict[str, np.ndarray]:
        """Every pattern under its capture name."""
        return {capture_name(k, i): self.attention(k, i) for k in self.kinds for i in range(self.n_layers[k])}

    @cached_property
    def logits(self) -> np.ndarray | None:
        """float32 [tokens, vocab]: row i are the logits at position i (next token; encoders: masked-LM)."""
        if self.logit_rows is None:
            return None
        out = np.concatenate([_rows(b) for b in self.logit_rows], axis=0).astype(np.float32, copy=False)
        out.flags.writeable = False
        return out

    def logits_at(self, position: int) -> np.ndarray | None:
        if self.logit_rows is None:
            return None
        if not isinstance(position, (int, np.integer)) or not 0 <= position < len(self):
            raise CaptureError(f"position {position} is outside 0..{len(self) - 1}")
        start = 0
        for block in self.logit_rows:
            if position < start + block.shape[0]:
                return np.array(_rows(block, position - start, position - start + 1)[0], dtype=np.float32)  # a copy
            start += block.shape[0]
        raise CaptureError(f"position {position} is outside 0..{len(self) - 1}")

    def read_now(self, key: object, read: Callable[[Trace], Any], on_ready: Callable[[], None]) -> Any:
        """`read(self)` if it can be answered without waiting on a network, else PENDING: then it is fetched in
        the background and `on_ready()` is called (from another thread) once asking again answers at once (or
        raises what fetching raised, e.g. EngineGone). `key` names the read (the same read, the same key: asked
        twice while on its way, it is fetched once). A trace in this process has everything: always answered."""
        return read(self)

    @property
    def nbytes(self) -> int:
        """Bytes kept for attention: stored pattern rows, or the queries, keys and row statistics that
        rebuild them (blocks shared with earlier traces counted once per trace)."""
        total = sum(b.nbytes if isinstance(b, (QueryBlock, RoutingBlock)) else b.rows.nbytes
                    for bs in self.blocks.values() for b in bs)
        return total + sum(k.nbytes for k in self.keys.values())
