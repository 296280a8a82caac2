"""The head grid with many heads (issue 28): 4 × 4 to 64 × 64 grids zoom to readable thumbnails, a click picks
the head under the pointer at any zoom, the selected head is scrolled into view, the layer/head numbers thin out
to round steps, and "colour by" paints each head with the engine's own statistic."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from gui.rendering.grid_view import ATLAS_PIXELS, READABLE_PX, Viewport, auto_px, label_step, thumb_size
from tests import factories
from tests.gui.conftest import OPEN_TIMEOUT_MS, open_model

SHAPES = [(4, 4), (28, 16), (64, 64)]
PROMPT = "In the beginning God created the heaven"


def _gpt2(folder, n_layer: int, n_head: int):
    """factories.gpt2 with another number of layers and heads (head size 2, 1 at 64 heads: tiny, but every
    layer × head is a real GPT-2 head with its own pattern)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = factories.byte_level_tokenizer(300, ["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=max(32, n_head), n_layer=n_layer, n_head=n_head,
                     n_positions=64, bos_token_id=eos, eos_token_id=eos, attn_implementation="eager")
    return factories._save(factories._init(GPT2LMHeadModel(cfg), 1), tok, folder)


@pytest.fixture(scope="module")
def grid_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid-models")
    return {shape: _gpt2(root / f"gpt2-{shape[0]}x{shape[1]}", *shape) for shape in SHAPES}


def _cell_point(grid, layer: int, head: int) -> QPoint:
    """Where on the grid's viewport the middle of cell (layer, head)'s thumbnail is."""
    f = grid.cell_fraction / 2
    scene = grid.plot.getViewBox().mapViewToScene(QPointF(head + f, layer + f))
    return grid.graphics.mapFromScene(scene)


def _click(qtbot, grid, layer: int, head: int) -> None:
    qtbot.mouseClick(grid.graphics.viewport(), Qt.MouseButton.LeftButton, pos=_cell_point(grid, layer, head))


def _wheel(grid, notches: int, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    viewport = grid.graphics.viewport()
    pos = QPointF(viewport.rect().center())
    event = QWheelEvent(pos, QPointF(viewport.mapToGlobal(pos.toPoint())), QPoint(0, 0), QPoint(0, 120 * notches),
                        Qt.MouseButton.NoButton, modifiers, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(viewport, event)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_grid_zooms_to_readable_thumbnails_and_clicks_pick_the_head(qtbot, window, grid_models, shape):
    win = window
    open_model(qtbot, win, grid_models[shape], prompt=PROMPT)
    grid, state = win.head_grid, win.state
    n_layers, n_heads = shape
    assert grid.shape == shape and grid.cell_count == n_layers * n_heads
    grid.navigator.zoom_to(40)
    qtbot.waitUntil(lambda: grid.thumb >= 30, timeout=10_000)  # finer thumbnails once the zoom settles
    assert grid.cell_pixels >= 40 - 1e-6
    assert grid.gap == 1 and grid.atlas.shape == (n_layers * (grid.thumb + 1) - 1, n_heads * (grid.thumb + 1) - 1)
    assert grid.atlas.size <= ATLAS_PIXELS
    if shape != (4, 4):  # zoomed in: only part of the grid is on screen, the rest scrolls
        view = grid.navigator.view
        assert view.width < n_heads or view.height < n_layers
    # a click picks the cell under the pointer, wherever the grid is scrolled to
    state.select(layer=n_layers - 1, head=n_heads - 1, mean_heads=False)
    for layer, head in [(0, 0), (n_layers // 2, n_heads // 3), (n_layers - 1, 1), (1, n_heads - 1)]:
        grid.navigator.ensure_visible(layer, head)
        assert grid.navigator.view.contains(layer, head)
        _click(qtbot, grid, layer, head)
        assert (state.layer, state.head, state.mean_heads) == (layer, head, False)
    # the thumbnail of a clicked head is that head's own (the outline sits on it)
    rect = grid.outline.rect()
    assert (int(rect.y()), int(rect.x())) == (state.layer, state.head)


@pytest.mark.parametrize("shape", [(28, 16), (64, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_selected_head_is_scrolled_into_view(qtbot, window, grid_models, shape):
    win = window
    open_model(qtbot, win, grid_models[shape], prompt=PROMPT)
    state, nav = win.state, win.head_grid.navigator
    nav.zoom_to(48)
    n_layers, n_heads = shape
    assert not nav.view.contains(n_layers - 1, n_heads - 1)
    state.select(layer=n_layers - 1, head=n_heads - 1, mean_heads=False)  # e.g. from the head statistics table
    assert nav.view.contains(n_layers - 1, n_heads - 1)
    win.registry.action("view.prev_layer").trigger()  # keyboard: up a layer
    assert nav.view.contains(n_layers - 2, n_heads - 1)
    state.select(layer=0, head=0)
    assert nav.view.contains(0, 0) and nav.view.y0 == 0


def test_wheel_scrolls_ctrl_wheel_and_keys_zoom(qtbot, window, grid_models):
    win = window
    open_model(qtbot, win, grid_models[(64, 64)], prompt=PROMPT)
    grid, nav = win.head_grid, win.head_grid.navigator
    start = grid.cell_pixels
    _wheel(grid, 2, Qt.KeyboardModifier.ControlModifier)  # Ctrl+wheel up: zoom in about the pointer
    assert grid.cell_pixels > start * 1.3
    y0 = nav.view.y0
    _wheel(grid, -1)  # the wheel down: the layers below
    assert nav.view.y0 > y0
    assert grid.vbar.isVisible() and grid.vbar.value() > 0  # the scroll bar says where we are
    grid.vbar.setValue(0)
    assert nav.view.y0 == pytest.approx(0.0)
    grid.graphics.setFocus()
    px = grid.cell_pixels
    qtbot.keyClick(grid.graphics, Qt.Key.Key_Plus)
    assert grid.cell_pixels > px
    qtbot.keyClick(grid.graphics, Qt.Key.Key_0)  # every head at once again
    assert nav.view.width >= 64 - 1e-6 and nav.view.height >= 64 - 1e-6
    assert not grid.vbar.isVisible()
    grid.zoom_buttons["in"].click()
    assert grid.cell_pixels > nav.px / 1.5 - 1e-6 and nav.zoomed


def test_labels_thin_out_to_round_steps(qtbot, window, grid_models):
    win = window
    open_model(qtbot, win, grid_models[(64, 64)], prompt=PROMPT)
    grid = win.head_grid
    grid.navigator.fit_all()
    px = grid.cell_pixels
    assert px < 18  # 64 rows in a dock: numbers on every cell would overlap
    step = grid.label_step
    assert step in (2, 5, 10, 20) and step * px >= 18 and (step == 2 or step // 2 * px < 18 or step == 10)
    ticks = grid.plot.getAxis("left")._tickLevels[0]
    assert [int(label) for _pos, label in ticks] == list(range(0, 64, step))
    grid.navigator.zoom_to(30)
    assert grid.label_step == 1
    assert len(grid.plot.getAxis("top")._tickLevels[0]) == 64


@pytest.mark.parametrize("shape", [(4, 4), (28, 16)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_colour_by_statistic_matches_the_engine(qtbot, window, grid_models, shape):
    from engine import load_model
    from engine.analysis import induction_scores, pattern_statistics
    from gui.panels.heads import GAP_INDEX

    win = window
    open_model(qtbot, win, grid_models[shape], prompt=PROMPT)
    grid, trace = win.head_grid, win.state.trace
    n_layers, n_heads = shape
    stats = [pattern_statistics(trace.attention("self", layer)) for layer in range(n_layers)]
    want = {key: np.array([s[key] for s in stats]) for key in ("entropy", "sink", "prev_token")}
    want["induction"] = induction_scores(load_model(grid_models[shape], device="cpu"))
    for key in ("sink", "entropy", "prev_token", "induction"):
        grid.set_color_by(key)
        qtbot.waitUntil(lambda: grid.statistic_values() is not None and grid._stats[0] is win.state.trace,
                        timeout=OPEN_TIMEOUT_MS)
        values = grid.statistic_values()
        np.testing.assert_allclose(values, want[key], rtol=1e-5, atol=1e-6)
        # each cell is one colour: its value's place on the statistic's natural scale (weights 0..1, entropy
        # 0..uniform over every key), so alike heads look alike
        lo, hi = (0.0, np.log2(len(trace.tokens))) if key == "entropy" else (0.0, 1.0)
        assert grid.statistic_scale == pytest.approx((lo, hi))
        want_idx = np.round(np.clip((values - lo) / (hi - lo), 0, 1) * (GAP_INDEX - 1)).astype(np.uint8)
        cell = grid.thumb + grid.gap
        for layer in range(n_layers):
            for head in range(n_heads):
                block = grid.atlas[layer * cell: layer * cell + grid.thumb, head * cell: head * cell + grid.thumb]
                assert (block == want_idx[layer, head]).all()
        if grid.gap:
            assert (grid.atlas[grid.thumb::cell, :] == GAP_INDEX).all()  # the gaps stay background
        caption = grid.caption.text()
        assert f"{values.min():.3f}" in caption and f"{values.max():.3f}" in caption and f"{hi:.3f}" in caption
        text = grid.describe_cell(n_layers - 1, n_heads - 1)
        assert f"{values[n_layers - 1, n_heads - 1]:.3f}" in text
    # clicking still selects, in statistic mode too
    _click(qtbot, grid, n_layers - 1, 1)
    assert (win.state.layer, win.state.head) == (n_layers - 1, 1)
    grid.set_color_by(None)  # back to the patterns
    assert grid.statistic_values() is None and grid.atlas.shape[0] == n_layers * (grid.thumb + grid.gap) - grid.gap


# -- the rules, without a window --------------------------------------------------------------------------

def test_label_steps_are_round_and_far_enough_apart():
    for px in (1.0, 3.8, 6.2, 9.0, 12.0, 17.9, 18.0, 40.0):
        step = label_step(px, 18)
        assert step in (1, 2, 5, 10, 20) and step * px >= 18
        smaller = [s for s in (1, 2, 5, 10, 20) if s < step]
        assert not smaller or smaller[-1] * px < 18  # the smallest round step that is far enough apart


def test_thumbnails_fit_the_cell_and_the_atlas_budget():
    assert thumb_size(20.0, 12, 12, 4, 64) == (19, 1)  # one atlas pixel per screen pixel, less the gap
    assert thumb_size(500.0, 4, 4, 4, 64) == (64, 1)  # at most the pooled resolution
    assert thumb_size(7.0, 64, 64, 4, 64) == (6, 1)
    assert thumb_size(4.5, 64, 64, 4, 64) == (4, 0)  # tiny cells: no gap (it would alias into stripes)
    assert thumb_size(2.1, 64, 64, 4, 64) == (2, 0)  # and as many atlas pixels as screen pixels
    t, gap = thumb_size(200.0, 64, 64, 4, 64)
    assert ((t + gap) * 64) ** 2 <= ATLAS_PIXELS and t >= 30


def test_first_view_fits_all_or_the_width():
    assert auto_px(400, 400, 12, 12) == pytest.approx(400 / 12)  # everything, readable
    assert auto_px(344, 215, 12, 12) == pytest.approx(215 / 12)  # a small dock: 12 × 12 stay whole (18 px)
    assert auto_px(400, 250, 28, 16) == pytest.approx(25.0)  # the heads across; the layers scroll
    assert 25.0 >= READABLE_PX
    assert auto_px(240, 120, 28, 16) == pytest.approx(15.0)  # narrower: still the width, cells over 14 px
    assert auto_px(400, 400, 64, 64) == pytest.approx(400 / 64)  # nothing fits readably: everything, zoom in


def test_viewport_clamps_and_scrolls_minimally():
    v = Viewport.make(-5.0, 30.0, 25.0, 400, 250, 28, 16)
    assert (v.x0, v.y0, v.width, v.height) == (0.0, 18.0, 16.0, 10.0)  # never past the ends
    assert v.contains(27, 15) and not v.contains(17, 0)
    assert v.scrolled_to(10, 3) == (0.0, 10.0)
    small = Viewport.make(0.0, 0.0, 25.0, 400, 400, 4, 4)  # smaller than the view: centred
    assert small.x0 == small.y0 == pytest.approx(-(16 - 4) / 2)
