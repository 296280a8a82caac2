"""The part of one head's pattern that is on screen, at screen resolution (numpy + the Trace API only).

A long context's pattern (32k × 32k) is never assembled: the big view asks for the visible region
[q0, q1) × [k0, k1) at no more cells than it has pixels. Where a pixel covers at most one cell the tile is
exact (`attention_tile`); where it covers several, each pixel is the max of the cells it covers
(`attention_overview`, so one strong weight never vanishes). Runs in the view's display thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine import Trace


@dataclass(frozen=True)
class Tile:
    weights: np.ndarray  # float32 (rows, cols): exact weights, or the max of each pixel's cells
    q0: int
    q1: int
    k0: int
    k1: int
    row_edges: np.ndarray  # query position where each row starts (rows + 1), absolute
    col_edges: np.ndarray  # key position where each column starts (cols + 1), absolute
    exact: bool  # one cell per pixel

    @property
    def future(self) -> np.ndarray:
        """True where every cell a pixel covers is a later key than every query (causal: masked)."""
        return self.col_edges[:-1][None, :] > (self.row_edges[1:] - 1)[:, None]


def region(view_range: tuple[tuple[float, float], tuple[float, float]], n_q: int, n_k: int) -> tuple[int, int, int, int]:
    """((x0, x1), (y0, y1)) in data coordinates (cell (q, k) centred on (k, q)) -> q0, q1, k0, k1, clipped."""
    (x0, x1), (y0, y1) = view_range
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    k0, k1 = max(0, math.floor(x0 + 0.5)), min(n_k, math.ceil(x1 + 0.5))
    q0, q1 = max(0, math.floor(y0 + 0.5)), min(n_q, math.ceil(y1 + 0.5))
    return q0, max(q0, q1), k0, max(k0, k1)


def edges(start: int, stop: int, bins: int) -> np.ndarray:
    """The engine's overview bins: start + ⌊i n / bins⌋, i = 0..bins."""
    n = stop - start
    return start + (np.arange(bins + 1) * n) // bins


def visible_tile(trace: Trace, kind: str, layer: int, heads: list[int], q0: int, q1: int, k0: int, k1: int,
                 rows: int, cols: int) -> Tile:
    """The region at ≤ rows × cols cells; several heads are averaged (pooled: the mean of each head's max)."""
    nq, nk = q1 - q0, k1 - k0
    r, c = max(1, min(rows, nq)), max(1, min(cols, nk))
    exact = r == nq and c == nk
    if exact:
        parts = _head_tiles(trace, kind, layer, heads, q0, q1, k0, k1)
    else:
        pooled = trace.attention_overview(kind, layer, heads=heads, rows=r, cols=c, reduce="max",
                                          q_range=(q0, q1), k_range=(k0, k1))
        parts = list(pooled)
    weights = parts[0] if len(parts) == 1 else np.mean(np.stack(parts), axis=0, dtype=np.float64).astype(np.float32)
    return Tile(weights, q0, q1, k0, k1, edges(q0, q1, r), edges(k0, k1, c), exact)


def row_weights(trace: Trace, kind: str, layer: int, heads: list[int], query: int) -> np.ndarray:
    """One query row over every key, exact (heads averaged), float32 [keys]."""
    n_k = trace.attention_shape(kind, layer)[2]
    parts = [p[0] for p in _head_tiles(trace, kind, layer, heads, query, query + 1, 0, n_k)]
    return parts[0] if len(parts) == 1 else np.mean(np.stack(parts), axis=0, dtype=np.float64).astype(np.float32)


def weight_at(trace: Trace, kind: str, layer: int, heads: list[int], query: int, key: int) -> float:
    """The exact weight of one cell (heads averaged)."""
    return float(np.mean([float(p[0, 0]) for p in _head_tiles(trace, kind, layer, heads, query, query + 1, key, key + 1)]))


def _head_tiles(trace: Trace, kind: str, layer: int, heads: list[int], q0: int, q1: int, k0: int, k1: int) -> list:
    """attention_tile of each of `heads`; several at once in one attention_tiles call (one batched product in
    process, one request to a remote engine that keeps the patterns, instead of one per head)."""
    if len(heads) == 1:
        return [trace.attention_tile(kind, layer, heads[0], q0, q1, k0, k1)]
    return list(trace.attention_tiles(kind, layer, q0, q1, k0, k1)[list(heads)])
