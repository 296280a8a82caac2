"""Head view (issue 21): the lines are the trace's weights for the selected layer, heads and query."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from gui.panels.head_view import MAX_LINES_PER_HEAD
from gui.rendering.head_colors import HeadAxis, head_color
from tests.gui.conftest import open_model, wait_idle


def _front(qtbot, win):
    dock = win.docks["head_view"]
    dock.show()
    dock.raise_()
    view = win.head_view
    qtbot.waitUntil(view.isVisible, timeout=5_000)
    view.redraw()
    return view


def _hover(view, column, row: int) -> None:
    """A mouse move over `row` of a token column, as the viewport would get it."""
    canvas = view.canvas
    scene = column.pos() + QPointF(column.width / 2, (row + 0.5) * column.row_h)
    canvas.ensureVisible(column.row_rect(row).translated(column.pos()), 0, 0)
    local = canvas.mapFromScene(scene)
    event = QMouseEvent(QEvent.Type.MouseMove, QPointF(local), QPointF(canvas.viewport().mapToGlobal(local)),
                        Qt.MouseButton.NoButton, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(canvas.viewport(), event)


def _check_lines(view, row: np.ndarray, q: int, threshold: float) -> None:
    canvas = view.canvas
    y0 = float(canvas.queries.row_y(q))
    for h, item in canvas.lines.items():
        if h in view.hidden_heads:
            assert not item.isVisible() and item.keys.size == 0
            continue
        want = np.flatnonzero(row[h] >= threshold) if threshold > 0 else np.flatnonzero(row[h] > 0)
        np.testing.assert_array_equal(item.keys, want)
        np.testing.assert_array_equal(item.weights, row[h, want])  # exactly the trace's weights
        np.testing.assert_array_equal(item.alphas, np.rint(row[h, want].astype(np.float64) * 255).astype(int))
        # to the right keys' rows (heads end a little apart within a row)
        assert np.all(np.abs(item.ys - canvas.keys.row_y(want)) < canvas.keys.row_h / 4)
        assert item.y0 == pytest.approx(y0)  # from the query's row
        assert item.color == head_color(h)


def test_lines_are_the_rows_weights_at_layer_1(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"], steps=4)
    view = _front(qtbot, win)
    trace = win.state.trace
    q = len(trace) - 3
    win.state.select(layer=1, query=q)
    assert view.layer_spin.value() == 1
    assert view.canvas.queries.tokens == trace.tokens and view.canvas.keys.tokens == trace.tokens
    assert view.canvas.queries.selected == q
    view.set_threshold(0.0)
    row = trace.attention_row("self", 1, q)
    assert not np.allclose(row, trace.attention_row("self", 0, q))  # another layer: other lines
    _check_lines(view, row, q, 0.0)
    # causal: no line to a key after the query; head 2 draws every key up to it
    assert view.canvas.lines[2].keys.max() <= q and view.canvas.lines[2].keys.size == q + 1
    view.set_threshold(0.1)
    _check_lines(view, row, q, 0.1)
    assert view.line_count() == int((row >= 0.1).sum())
    # ↓ (the registry's next-layer action) switches the head view too
    win.state.select(layer=0)
    _check_lines(view, trace.attention_row("self", 0, q), q, 0.1)


def test_toggle_solo_and_legend_colours(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"], steps=2)
    view = _front(qtbot, win)
    view.set_threshold(0.0)
    row = win.state.trace.attention_row(win.state.kind, win.state.layer, win.state.row_query)
    full = view.line_count()
    view.chips[2].click()  # hide head 2
    assert 2 in view.hidden_heads and not view.canvas.lines[2].isVisible()
    assert view.line_count() == full - int((row[2] > 0).sum())
    _check_lines(view, row, win.state.row_query, 0.0)
    view.chips[2].click()
    assert view.hidden_heads == set() and view.line_count() == full
    qtbot.mouseDClick(view.chips[1], Qt.MouseButton.LeftButton)  # alone
    assert view.visible_heads == [1]
    assert [h for h, item in view.canvas.lines.items() if item.isVisible()] == [1]
    qtbot.mouseDClick(view.chips[1], Qt.MouseButton.LeftButton)  # again: every head
    assert view.visible_heads == [0, 1, 2, 3]
    view.chips[3].click()  # a person's double-click: the first click toggles, then the double-click
    view.solo(3)
    assert view.visible_heads == [3]
    view.chips[3].click()
    view.solo(3)
    assert view.visible_heads == [0, 1, 2, 3]
    # the grid's head numbers are written in the same colours
    assert isinstance(win.head_grid.plot.getAxis("top"), HeadAxis)
    assert all(view.canvas.lines[h].color == head_color(h) for h in range(4))


def test_hover_selects_the_query(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"], steps=3)
    view = _front(qtbot, win)
    target = 2
    assert win.state.query != target
    _hover(view, view.canvas.queries, target)
    qtbot.waitUntil(lambda: win.state.query == target, timeout=2_000)
    assert view.query_row == target and view.canvas.queries.selected == target
    _check_lines(view, win.state.trace.attention_row("self", win.state.layer, target), target, view.threshold)
    # hovering a key only explains it
    _hover(view, view.canvas.keys, 1)
    qtbot.wait(50)
    assert win.state.query == target
    assert "head 3:" in view.describe_key(1)


def test_cross_attention_runs_from_decoder_tokens_to_the_source(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder-decoder"], steps=3)
    view = _front(qtbot, win)
    s, trace = win.state, win.state.trace
    assert s.kind == "cross"
    assert view.canvas.queries.tokens == trace.tokens and view.canvas.keys.tokens == trace.source_tokens
    q = 1
    s.select(layer=s.n_layers - 1, query=q)
    view.set_threshold(0.0)
    row = trace.attention_row("cross", s.n_layers - 1, q)
    assert row.shape[1] == len(trace.source_tokens)
    _check_lines(view, row, q, 0.0)
    assert "decoder → source" in view.title.text()
    # the encoder's own attention: source on both sides, and hovering selects the source query
    assert view.kind_box.isVisibleTo(view) and view.kind_box.currentData() == "cross"
    view.kind_box.activated.emit(view.kind_box.findData("encoder"))  # as a person picking it
    assert s.kind == "encoder" and view.kind_box.currentData() == "encoder"
    assert view.canvas.queries.tokens == trace.source_tokens
    _hover(view, view.canvas.queries, 0)
    qtbot.waitUntil(lambda: s.source_query == 0, timeout=2_000)
    _check_lines(view, trace.attention_row("encoder", s.layer, 0), 0, 0.0)


def test_thousand_tokens_bounded_and_responsive(qtbot, window, checkpoints):
    from engine import load_model

    win = window
    open_model(qtbot, win, checkpoints["long-decoder"])
    model = load_model(str(checkpoints["long-decoder"]), device="cpu")
    ids = (model.tokenizer.encode(" ".join(["In the beginning God created the heaven and the earth."] * 120)) * 2)[:1000]
    trace = model.run(ids)
    assert len(trace) == 1000
    view = _front(qtbot, win)
    win.state.set_trace(trace)
    wait_idle(qtbot, win)
    view.redraw()
    n_heads = trace.n_heads
    assert len(view.canvas.scene().items()) == 2 + n_heads  # two token columns, one lines item per head
    view.set_threshold(0.02)
    times = []
    for q in (999, 500, 998, 10, 750, 997):
        t0 = time.perf_counter()
        win.state.select(query=q)
        view.canvas.viewport().repaint()  # the paint too
        times.append(time.perf_counter() - t0)
        row = trace.attention_row("self", win.state.layer, q)
        _check_lines(view, row, q, 0.02)
        assert view.line_count() <= n_heads * 50  # weights sum to 1: at most 1/threshold lines a head
    view.set_threshold(0.0)
    assert all(item.keys.size <= MAX_LINES_PER_HEAD for item in view.canvas.lines.values())
    assert np.median(times) < 0.5, times  # every view redraws on a query change; the head view's part is small
    assert view.redraw_ms < 100
    # the canvas scrolls to the selected query
    win.state.select(query=900)
    bar = view.canvas.verticalScrollBar()
    assert bar.maximum() > 0 and bar.value() > 0


def test_export_png_and_svg(qtbot, window, checkpoints, tmp_path):
    win = window
    open_model(qtbot, win, checkpoints["decoder"], steps=2)
    view = _front(qtbot, win)
    ex = win.analysis.exports
    png = ex.export_widget(view.picture, str(tmp_path / "hv.png"))
    svg = ex.export_widget(view.picture, str(tmp_path / "hv.svg"))
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in svg.read_bytes()[:2000]
    assert "file.export_head_view" not in win.registry.unbound()


def test_encoder_only_and_grouped_query_heads(qtbot, window, checkpoints, tmp_path):
    from tests import modern_factories

    win = window
    open_model(qtbot, win, checkpoints["encoder"])
    view = _front(qtbot, win)
    s, trace = win.state, win.state.trace
    assert s.kind == "encoder" and view.canvas.queries.tokens == trace.tokens
    s.select(layer=1, query=2)
    view.set_threshold(0.0)
    _check_lines(view, trace.attention_row("encoder", 1, 2), 2, 0.0)
    assert trace.kv_group == 1 and "kv" not in " ".join(c.toolTip() for c in view.chips.values())

    # Llama-style grouped-query attention: 4 query heads, 2 key/value heads -> two legend groups
    open_model(qtbot, win, modern_factories.llama(tmp_path / "llama"), steps=2)
    trace = win.state.trace
    assert trace.kv_group == 2
    view.redraw()
    frames = {chip.parentWidget() for chip in view.chips.values()}
    assert len(frames) == 2
    for h, chip in view.chips.items():
        assert f"key/value head {trace.kv_head(h)}" in chip.toolTip()
    assert "sharing 2 key/value heads" in view.title.text()
    win.state.select(layer=2)
    view.set_threshold(0.0)
    q = win.state.row_query
    _check_lines(view, trace.attention_row("self", 2, q), q, 0.0)


def test_tabbed_away_it_skips_redraws_and_catches_up_when_its_tab_returns(qtbot, window, checkpoints):
    """Qt keeps a tabbed-away dock isVisible(); the head view must still not redraw unseen (issue 20)."""
    win = window
    open_model(qtbot, win, checkpoints["decoder"], steps=2)
    view = _front(qtbot, win)
    qtbot.waitUntil(lambda: view.canvas.queries.tokens == win.state.trace.tokens, timeout=5_000)
    win.docks["heads"].raise_()  # the grid's tab in front again
    qtbot.waitUntil(lambda: view.visibleRegion().isEmpty(), timeout=5_000)
    assert view.isVisible()  # what Qt reports for a tab behind another
    win.token_strip.step()
    wait_idle(qtbot, win)
    n = len(win.state.trace)
    assert len(view.canvas.queries.tokens) == n - 1  # not redrawn while away
    win.docks["head_view"].raise_()
    qtbot.waitUntil(lambda: len(view.canvas.queries.tokens) == n, timeout=5_000)
    assert view.canvas.queries.tokens == win.state.trace.tokens
    _check_lines(view, win.state.trace.attention_row("self", win.state.layer, n - 1), n - 1, view.threshold)
