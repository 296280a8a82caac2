"""Max-pooled thumbnails of every layer's attention, kept up to date incrementally as a session steps.

A stepping session adds one query row per layer per step; rebuilding every thumbnail from the full
pattern would cost O(layers · heads · n²) per step (hundreds of ms for GPT-2 at 1024 tokens). Traces
share their pattern blocks with the trace before them, so only the new blocks are pooled. Bins are
powers of two wide; when the sequence outgrows the thumbnail the bins double and the pooled image is
merged 2×2 (max of max is max), so nothing is recomputed. Numpy only: a display transform.

Traces that keep stored rows are pooled from their blocks; traces that rebuild patterns on demand (long
contexts) are pooled from exact tiles a chunk of rows at a time (`attention_tile`), never a whole dense
pattern: the prefill once, then the one row per head each step adds, pooled by the Trace itself
(`attention_pooled`: a remote engine's trace asks its server, so only the pooled bins cross). Rebuilding is
real work (q·k per cell), so the head grid runs that in its display thread (gui/core/render_thread.py).
"""

from __future__ import annotations

import math

import numpy as np

from engine import Trace, capture_name
from engine.trace import pool_aligned  # numpy only: the same bins as Trace.attention_pooled


class _Pooled:
    def __init__(self, n_heads: int, size: int) -> None:
        self.size = size
        self.width = 1  # bin width in tokens (a power of two)
        self.acc = np.zeros((n_heads, size, size), dtype=np.float32)
        self.blocks: list = []  # the trace's blocks (PatternBlock or engine QueryBlock) pooled so far
        self.n_q = self.n_k = 0

    def _grow_to(self, n: int) -> None:
        while math.ceil(n / self.width) > self.size:
            h, s = self.acc.shape[0], self.size
            merged = self.acc.reshape(h, s // 2, 2, s // 2, 2).max(axis=(2, 4))
            self.acc = np.zeros_like(self.acc)
            self.acc[:, : s // 2, : s // 2] = merged
            self.width *= 2

    def add_rows(self, q_start: int, rows: np.ndarray) -> None:
        """Pool rows (heads, n, keys) of query positions q_start.. into the accumulator."""
        h, nr, nk = rows.shape
        self._grow_to(max(q_start + nr, nk))
        w = self.width
        pool_aligned(self.acc, rows, q_start, w)
        self.n_q = max(self.n_q, q_start + nr)
        self.n_k = max(self.n_k, nk)

    def add_block(self, trace: Trace, kind: str, layer: int, block) -> None:  # noqa: ANN001 - engine block
        rows = getattr(block, "rows", None)
        if rows is not None:  # stored rows
            self.add_rows(block.q_start, rows)
        else:  # rebuilt (here or on a remote engine): the trace pools exact rows into the bins itself
            n_keys = trace.attention_shape(kind, layer)[2]
            end = block.q_start + block.n
            nk = min(n_keys, end) if kind == "self" else n_keys  # causal: later keys are 0
            self._grow_to(max(end, nk))
            w = self.width
            pooled = trace.attention_pooled(kind, layer, block.q_start, end, nk, w)  # bins from block.q_start // w
            b0 = block.q_start // w
            target = self.acc[:, b0 : b0 + pooled.shape[1], : pooled.shape[2]]
            np.maximum(target, pooled, out=target)
            self.n_q = max(self.n_q, end)
            self.n_k = max(self.n_k, nk)
        self.blocks.append(block)

    def image(self) -> np.ndarray:
        w = self.width
        return self.acc[:, : math.ceil(self.n_q / w), : math.ceil(self.n_k / w)]


class ThumbnailPooler:
    """pooled(trace, kind, layer) -> float32 [heads, ≤size, ≤size], max over square bins of 2^k tokens."""

    def __init__(self, size: int = 64) -> None:
        if size < 2 or size & (size - 1):
            raise ValueError("size must be a power of two")
        self.size = size
        self._cache: dict[str, _Pooled] = {}

    def clear(self) -> None:
        self._cache.clear()

    def bin_width(self, trace: Trace, kind: str, layer: int) -> int:
        return self._get(trace, kind, layer).width

    def pooled(self, trace: Trace, kind: str, layer: int) -> np.ndarray:
        return self._get(trace, kind, layer).image()

    def stack(self, trace: Trace, kind: str) -> tuple[np.ndarray, int]:
        """Every layer's pooled image of `kind` as one array [layers, heads, m, m] (a copy; layers that were
        not captured are zeros) and the bin width in tokens."""
        n_layers = trace.n_layers[kind]
        images = [self.pooled(trace, kind, layer) if self.captured(trace, kind, layer) else None
                  for layer in range(n_layers)]
        shape = next((im.shape for im in images if im is not None), (trace.n_heads, 1, 1))
        out = np.zeros((n_layers, *shape), dtype=np.float32)
        for layer, im in enumerate(images):
            if im is not None:
                out[layer] = im
        widths = [self.bin_width(trace, kind, layer) for layer in range(n_layers) if images[layer] is not None]
        return out, (widths[0] if widths else 1)

    @staticmethod
    def captured(trace: Trace, kind: str, layer: int) -> bool:
        return capture_name(kind, layer) in trace.blocks

    @staticmethod
    def rebuilds(trace: Trace, kind: str) -> bool:
        """The trace rebuilds this kind's patterns on demand (no stored rows to pool cheaply)."""
        names = (capture_name(kind, layer) for layer in range(trace.n_layers.get(kind, 0)))
        return any(not hasattr(trace.blocks[n][0], "rows") for n in names if trace.blocks.get(n))

    def _get(self, trace: Trace, kind: str, layer: int) -> _Pooled:
        name = capture_name(kind, layer)
        blocks = trace.blocks[name]  # shared by identity with the traces before it
        pooled = self._cache.get(name)
        seen = len(pooled.blocks) if pooled is not None else 0
        extends = (pooled is not None and len(blocks) >= seen and seen > 0
                   and blocks[0] is pooled.blocks[0] and blocks[seen - 1] is pooled.blocks[-1])
        if not extends:
            pooled = self._cache[name] = _Pooled(trace.n_heads, self.size)
            seen = 0
        for block in blocks[seen:]:
            pooled.add_block(trace, kind, layer, block)
        return pooled
