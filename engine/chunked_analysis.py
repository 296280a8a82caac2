"""Analyses that never hold a whole pattern: they read a chunk of query rows at a time through the Trace's
tile API, so they work at any context length (memory: one chunk of rows × keys per head).

    pattern_statistics_chunked(trace, kind, layer)   # = analysis.pattern_statistics(trace.attention(kind, layer))
    rollout_row(trace, kind, query, upto=None)       # = analysis.rollout(trace, kind, upto)[query]
"""

from __future__ import annotations

import numpy as np

from .errors import CaptureError
from .trace import Trace

CHUNK_BYTES = 32 * 1024 * 1024  # float64 values of one chunk of rows of one head


def _chunks(n_rows: int, n_keys: int):  # noqa: ANN202
    step = max(1, CHUNK_BYTES // (8 * max(1, n_keys)))
    for a in range(0, n_rows, step):
        yield a, min(n_rows, a + step)


def pattern_statistics_chunked(trace: Trace, kind: str, layer: int) -> dict[str, np.ndarray]:
    """Per-head entropy, normalised entropy, previous-token, sink and distance statistics, exactly as
    engine.analysis.pattern_statistics computes them on the whole pattern, one chunk of rows at a time."""
    heads, q, k = trace.attention_shape(kind, layer)
    causal = kind == "self"
    n_keys = np.arange(1, q + 1) if causal and q == k else np.full(q, k)
    max_ent = np.log2(np.maximum(n_keys, 1))
    valid = n_keys > 1
    sums = {name: np.zeros(heads) for name in ("entropy", "entropy_norm", "prev_token", "sink", "distance")}
    kj = np.arange(k)[None, :]
    for a, b in _chunks(q, k):
        qi = np.arange(a, b)[:, None]
        for h in range(heads):
            p = trace.attention_tile(kind, layer, h, a, b, 0, k).astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                ent = -np.where(p > 0, p * np.log2(p), 0.0).sum(-1)
                norm = np.where(max_ent[a:b] > 0, ent / max_ent[a:b], 0.0)
            sums["entropy"][h] += ent[valid[a:b]].sum()
            sums["entropy_norm"][h] += norm[valid[a:b]].sum()
            rows = np.arange(max(a, 1), min(b, k))
            sums["prev_token"][h] += p[rows - a, rows - 1].sum()
            sums["sink"][h] += p[max(0, 1 - a) if q > 1 else 0 :, 0].sum()
            sums["distance"][h] += (p * np.abs(qi - kj)).sum()
    n_valid, n_prev = int(valid.sum()), max(0, min(q, k) - 1)
    out = {
        "entropy": sums["entropy"] / n_valid if n_valid else np.zeros(heads),
        "entropy_norm": sums["entropy_norm"] / n_valid if n_valid else np.zeros(heads),
        "prev_token": sums["prev_token"] / n_prev if n_prev else np.zeros(heads),
        "sink": sums["sink"] / (q - 1 if q > 1 else q),
        "distance": sums["distance"] / q,
    }
    return out


def rollout_row(trace: Trace, kind: str, query: int, upto: int | None = None) -> np.ndarray:
    """One query's row of attention rollout (Abnar & Zuidema 2020) through layers 0..upto: e_q · Â_upto ⋯ Â_0
    with Â = rows-renormalised 0.5·mean-of-heads + 0.5·I, float32 [keys]. Only the rows the running vector
    touches are read, a chunk at a time: never a T × T product."""
    if kind == "cross":
        raise CaptureError("rollout follows one stack's self-attention; choose 'self' or 'encoder'")
    n = trace.n_layers.get(kind, 0)
    if not n:
        raise CaptureError(f"this model has no {kind!r} attention")
    upto = n - 1 if upto is None else upto
    heads, q, k = trace.attention_shape(kind, 0)
    if not 0 <= query < q:
        raise CaptureError(f"query position {query} is outside 0..{q - 1}")
    v = np.zeros(q, dtype=np.float64)
    v[query] = 1.0
    for layer in range(upto, -1, -1):
        out = np.zeros(k, dtype=np.float64)
        rows = np.flatnonzero(v)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        for a, b in _chunks(hi - lo, k):
            a, b = a + lo, b + lo
            mean = sum(trace.attention_tile(kind, layer, h, a, b, 0, k).astype(np.float64) for h in range(heads)) / heads
            a_hat = 0.5 * mean
            a_hat[np.arange(b - a), np.arange(a, b)] += 0.5
            a_hat /= a_hat.sum(-1, keepdims=True)
            out += v[a:b] @ a_hat
        v = out[:q] if k >= q else np.pad(out, (0, q - k))
    return v.astype(np.float32)
