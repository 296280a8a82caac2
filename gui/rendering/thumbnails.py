"""Max-pooled thumbnails of every layer's attention, kept up to date incrementally as a session steps.

A stepping session adds one query row per layer per step; rebuilding every thumbnail from the full
pattern would cost O(layers · heads · n²) per step (hundreds of ms for GPT-2 at 1024 tokens). Traces
share their pattern blocks with the trace before them, so only the new blocks are pooled. Bins are
powers of two wide; when the sequence outgrows the thumbnail the bins double and the pooled image is
merged 2×2 (max of max is max), so nothing is recomputed. Numpy only: a display transform.
"""

from __future__ import annotations

import math

import numpy as np

from engine import PatternBlock, Trace, capture_name


class _Pooled:
    def __init__(self, n_heads: int, size: int) -> None:
        self.size = size
        self.width = 1  # bin width in tokens (a power of two)
        self.acc = np.zeros((n_heads, size, size), dtype=np.float32)
        self.blocks: list[PatternBlock] = []
        self.n_q = self.n_k = 0

    def _grow_to(self, n: int) -> None:
        while math.ceil(n / self.width) > self.size:
            h, s = self.acc.shape[0], self.size
            merged = self.acc.reshape(h, s // 2, 2, s // 2, 2).max(axis=(2, 4))
            self.acc = np.zeros_like(self.acc)
            self.acc[:, : s // 2, : s // 2] = merged
            self.width *= 2

    def add(self, block: PatternBlock) -> None:
        rows = block.rows
        h, nr, nk = rows.shape
        self._grow_to(max(block.q_start + nr, nk))
        w = self.width
        nkb = math.ceil(nk / w)
        if nkb * w != nk:
            rows = np.pad(rows, ((0, 0), (0, 0), (0, nkb * w - nk)))
        pooled = rows.reshape(h, nr, nkb, w).max(axis=-1) if w > 1 else rows  # (h, nr, nkb)
        bins = (block.q_start + np.arange(nr)) // w
        starts = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
        reduced = np.maximum.reduceat(pooled, starts, axis=1) if len(starts) < nr else pooled
        target = bins[starts]
        self.acc[:, target, :nkb] = np.maximum(self.acc[:, target, :nkb], reduced)
        self.blocks.append(block)
        self.n_q = max(self.n_q, block.q_start + nr)
        self.n_k = max(self.n_k, nk)

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

    def _get(self, trace: Trace, kind: str, layer: int) -> _Pooled:
        name = capture_name(kind, layer)
        blocks = trace.pattern_blocks(kind, layer)
        pooled = self._cache.get(name)
        seen = len(pooled.blocks) if pooled is not None else 0
        extends = (pooled is not None and len(blocks) >= seen and seen > 0
                   and blocks[0] is pooled.blocks[0] and blocks[seen - 1] is pooled.blocks[-1])
        if not extends:
            pooled = self._cache[name] = _Pooled(trace.n_heads, self.size)
            seen = 0
        for block in blocks[seen:]:
            pooled.add(block)
        return pooled
