"""Incremental thumbnails equal max-pooling the full pattern, through steps, back and growth."""

from __future__ import annotations

import math

import numpy as np

from engine import Session, load_model
from gui.rendering.thumbnails import ThumbnailPooler


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


def test_head_grid_atlas_puts_each_head_in_its_cell(qtbot, window, checkpoints):
    """The atlas, built for all layers at once, holds at (layer, head) that head's own thumbnail,
    scaled to its maximum, with gap pixels between cells and future keys as background."""
    from gui.panels.heads import GAP, GAP_INDEX
    from gui.rendering import display
    from tests.gui.conftest import open_model

    win = window
    open_model(qtbot, win, checkpoints["decoder"], prompt="In the beginning God created the heaven", steps=3)
    grid, trace = win.head_grid, win.state.trace
    t, cell = grid.thumb, grid.thumb + GAP
    fresh = ThumbnailPooler(size=grid.pooler.size)
    assert grid.atlas.shape == (2 * cell - GAP, 4 * cell - GAP)
    for layer in range(2):
        pooled = fresh.pooled(trace, "self", layer)
        hidden = display.fit((~display.future_mask(*pooled.shape[1:])).astype(np.float32), t) == 0
        for head in range(4):
            want = np.round(display.normalised(display.fit(pooled[head], t), False) * (GAP_INDEX - 1)).astype(np.uint8)
            want[hidden] = GAP_INDEX
            got = grid.atlas[layer * cell: layer * cell + t, head * cell: head * cell + t]
            np.testing.assert_array_equal(got, want)
    assert (grid.atlas[t::cell, :] == GAP_INDEX).all() and (grid.atlas[:, t::cell] == GAP_INDEX).all()


def test_fit_stack_max_pools_longer_axes_and_repeats_shorter_ones():
    from gui.rendering.display import fit_stack

    rng = np.random.default_rng(0)
    for shape, size in [((5, 64, 64), 45), ((5, 64, 64), 32), ((2, 100, 3), 7), ((3, 7, 5), 4), ((1, 64, 9), 16)]:
        x = rng.random(shape).astype(np.float32)
        want = x
        for axis in (1, 2):  # by definition: bin i covers [floor(i n / size), floor((i + 1) n / size))
            n = want.shape[axis]
            if n > size:
                edges = [i * n // size for i in range(size + 1)]
                want = np.stack([want.take(range(a, b), axis=axis).max(axis=axis) for a, b in zip(edges, edges[1:])], axis=axis)
            elif n < size:
                want = want.take([i * n // size for i in range(size)], axis=axis)
        np.testing.assert_array_equal(fit_stack(x, size), want)
