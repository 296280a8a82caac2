"""Display transforms for heatmaps (numpy only; no model math): log scale, causal mask, downsampling for thumbnails."""

from __future__ import annotations

import numpy as np

LOG_FLOOR = 1e-4  # weights below this are drawn as the floor colour on the log scale
LOG_LEVELS = (float(np.log10(LOG_FLOOR)), 0.0)
LINEAR_LEVELS = (0.0, 1.0)


def scaled(weights: np.ndarray, log_scale: bool) -> tuple[np.ndarray, tuple[float, float]]:
    """-> (image, levels). Log scale shows log10 of the weights, floored at LOG_FLOOR."""
    if log_scale:
        return np.log10(np.maximum(weights, LOG_FLOOR)).astype(np.float32), LOG_LEVELS
    return weights.astype(np.float32, copy=False), LINEAR_LEVELS


def future_mask(n_q: int, n_k: int) -> np.ndarray:
    """True where key > query: a causal (decoder self-attention) pattern is 0 there by construction.
    Drawn transparent, so "cannot see" looks different from "chose not to look"."""
    return np.triu(np.ones((n_q, n_k), dtype=bool), k=1)


def normalised(thumb: np.ndarray, log_scale: bool) -> np.ndarray:
    """0..1 for a thumbnail: log10 on the fixed LOG_LEVELS range, or linear scaled to the thumbnail's maximum."""
    return normalised_stack(thumb[None], log_scale)[0]


def fit(pattern: np.ndarray, size: int) -> np.ndarray:
    """Resample a [rows, cols] pattern to [size, size] for a thumbnail (see fit_stack)."""
    return fit_stack(pattern[None], size)[0]


def top_indices(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest values, largest first (ties by index). A partial sort: sorting a 50k
    vocabulary every step cost more than the rest of the panel."""
    n = min(n, values.size)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    # the n largest without negating a copy of the vocabulary first
    part = np.argpartition(values, values.size - n)[values.size - n :] if n < values.size else np.arange(values.size)
    return part[np.lexsort((part, -values[part]))]


def fit_stack(patterns: np.ndarray, size: int) -> np.ndarray:
    """Resample a stack [heads, rows, cols] to [heads, size, size] for thumbnails.

    Longer axes are max-pooled (a single strong weight, e.g. an attention sink, must not
    vanish); shorter ones are repeated (nearest neighbour)."""
    out = patterns
    for axis in (1, 2):
        n = out.shape[axis]
        if n == size or n == 0:
            continue
        if n > size:
            # bins [edges[i], edges[i+1]) are w or w+1 wide: the max of w+1 strided takes, each index
            # clipped to its bin's last element (reduceat along a middle axis is several times slower)
            edges = np.linspace(0, n, size + 1).astype(int)
            starts, last = edges[:-1], edges[1:] - 1
            widest = int((edges[1:] - starts).max())
            pooled = np.take(out, starts, axis=axis)
            for j in range(1, widest):
                pooled = np.maximum(pooled, np.take(out, np.minimum(starts + j, last), axis=axis))
            out = pooled
        else:
            idx = (np.arange(size) * n // size).astype(int)
            out = np.take(out, idx, axis=axis)
    if out.shape[1:] != (size, size):
        out = np.zeros((patterns.shape[0], size, size), dtype=np.float32)
    return out


def normalised_stack(thumbs: np.ndarray, log_scale: bool) -> np.ndarray:
    """normalised() per thumbnail of a stack [heads, h, w]."""
    if log_scale:
        lo, hi = LOG_LEVELS
        return (np.log10(np.maximum(thumbs, LOG_FLOOR)) - lo) / (hi - lo)
    peak = thumbs.max(axis=(1, 2), keepdims=True) if thumbs.size else np.zeros((thumbs.shape[0], 1, 1))
    return np.divide(thumbs, peak, out=np.zeros_like(thumbs, dtype=np.float64), where=peak > 0)
