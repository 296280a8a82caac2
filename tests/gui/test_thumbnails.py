"""Incremental thumbnails equal max-pooling the full pattern, through steps, back and growth."""

from __future__ import annotations

import math

import numpy as np

from engine import Session, load_model
from gui.thumbnails import ThumbnailPooler


def _direct(pattern: np.ndarray, w: int) -> np.ndarray:
    h, q, k = pattern.shape
    qb, kb = math.ceil(q / w), math.ceil(k / w)
    p = np.zeros((h, qb * w, kb * w), dtype=np.float32)
    p[:, :q, :k] = pattern
    return p.reshape(h, qb, w, kb, w).max(axis=(2, 4))


def test_pooled_thumbnails_match_direct_pooling(checkpoints):
    model = load_model(checkpoints["decoder"], device="cpu")
    pooler = ThumbnailPooler(size=4)  # tiny, so the bins double several times
    s = Session(model, "In the beginning God created")
    for i in range(14):
        trace = s.trace
        for layer in range(2):
            w = pooler.bin_width(trace, "self", layer)
            got = pooler.pooled(trace, "self", layer)
            np.testing.assert_allclose(got, _direct(trace.attention("self", layer), w), atol=1e-7)
            assert got.shape[1] <= 4
        s.step()
        if i == 6:
            s.back()  # not an extension: rebuilt
    trace = s.trace
    np.testing.assert_array_equal(trace.attention_head("self", 1, 2), trace.attention("self", 1)[2])
