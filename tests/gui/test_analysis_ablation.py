"""Head ablation from the head grid: gates reach the session, the grid marks them, the candidates compare."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, Qt

from tests.gui.conftest import open_model, wait_idle


def _wait_trace(qtbot, win, old):
    qtbot.waitUntil(lambda: win.state.trace is not old, timeout=30_000)
    wait_idle(qtbot, win)
    return win.state.trace


def test_ablate_head_recomputes_marks_and_compares(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    ab = win.analysis.ablation
    before = win.state.trace
    assert not before.gates and "No heads ablated" in ab.status.text()
    assert ab.diff.isHidden()
    pattern_before = before.attention("self", 1).copy()

    ab.ablate(0, 1)
    trace = _wait_trace(qtbot, win, before)
    assert trace.gates == {"decoder.0.attn": (1.0, 0.0, 1.0, 1.0)}
    assert trace.token_ids == before.token_ids
    assert not np.allclose(trace.attention("self", 1), pattern_before)  # later layers see the change
    assert "1 head ablated" in ab.status.text()
    assert not ab.overlay.path().isEmpty()
    # the cross sits over thumbnail (layer 0, head 1)
    centre = ab.overlay.path().boundingRect().center()
    assert (int(centre.x()), int(centre.y())) == (1, 0)
    # the candidates panel compares with the distribution before the ablation
    assert ab.diff.isVisible()
    assert ab.baseline is before
    assert len(ab.diff.rows) == 4 and "total variation" in ab.diff.heading.text()
    tid, p0, p1 = ab.diff.rows[0]
    pos = win.state.query
    from engine import distribution

    assert np.isclose(p0, distribution(before.logits_at(pos), 1.0)[tid], atol=1e-6)
    assert np.isclose(p1, distribution(trace.logits_at(pos), 1.0)[tid], atol=1e-6)

    # scale one head, ablate a whole layer: counts in the status line
    ab.ablate(1, 2, 0.5)
    trace = _wait_trace(qtbot, win, trace)
    assert trace.gates["decoder.1.attn"] == (1.0, 1.0, 0.5, 1.0)
    assert "1 head ablated · 1 scaled" in ab.status.text()
    assert not ab.scaled_overlay.path().isEmpty()
    ab.ablate_layer(1)
    trace = _wait_trace(qtbot, win, trace)
    assert trace.gates["decoder.1.attn"] == (0.0, 0.0, 0.0, 0.0)
    assert "5 heads ablated" in ab.status.text()
    assert ab.baseline is before  # still compared with the un-ablated trace

    # stepping keeps the gates (they are part of the session)
    n = len(trace)
    win.client.step()
    trace = _wait_trace(qtbot, win, trace)
    assert len(trace) == n + 1 and trace.gates

    ab.clear()
    trace = _wait_trace(qtbot, win, trace)
    assert trace.gates == {} and "No heads ablated" in ab.status.text()
    assert ab.overlay.path().isEmpty() and ab.diff.isHidden()
    assert ab.baseline is None


def test_context_menu_and_ctrl_click(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    ab, grid = win.analysis.ablation, win.head_grid
    menu = ab.menu_for(1, 3)
    texts = [a.text() for a in menu.actions() if a.text()]
    assert texts[:2] == ["Ablate head 1.3", "Scale head…"]
    assert "Ablate whole layer 1" in texts and "Clear all ablations" in texts
    old = win.state.trace
    next(a for a in menu.actions() if a.text() == "Ablate head 1.3").trigger()
    trace = _wait_trace(qtbot, win, old)
    assert trace.gates == {"decoder.1.attn": (1.0, 1.0, 1.0, 0.0)}
    assert ab.menu_for(1, 3).actions()[0].text().startswith("Restore head 1.3")

    # Ctrl+click on a thumbnail toggles it
    scene = grid.plot.getViewBox().mapViewToScene(QPointF(0.4, 0.4))
    assert grid.cell_at(scene) == (0, 0)
    pos = grid.graphics.mapFromScene(scene)
    qtbot.mouseClick(grid.graphics.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, pos)
    trace = _wait_trace(qtbot, win, trace)
    assert trace.gates["decoder.0.attn"] == (0.0, 1.0, 1.0, 1.0)
    qtbot.mouseClick(grid.graphics.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, pos)
    trace = _wait_trace(qtbot, win, trace)
    assert "decoder.0.attn" not in trace.gates


def test_gates_without_a_session_and_encoder_decoder(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder-decoder"])
    ab = win.analysis.ablation
    win.state.select(kind="cross")
    old = win.state.trace
    ab.ablate(0, 0)
    trace = _wait_trace(qtbot, win, old)
    assert trace.gates == {"decoder.0.cross_attn": (0.0, 1.0, 1.0, 1.0)}
    assert not ab.overlay.path().isEmpty()
    win.state.select(kind="self")  # the marks belong to the cross-attention grid
    assert ab.overlay.path().isEmpty()


def test_right_click_opens_the_ablation_menu(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    ab, grid = win.analysis.ablation, win.head_grid
    scene = grid.plot.getViewBox().mapViewToScene(QPointF(2.4, 1.4))
    pos = grid.graphics.mapFromScene(scene)
    qtbot.mouseClick(grid.graphics.viewport(), Qt.MouseButton.RightButton, pos=pos)
    qtbot.waitUntil(lambda: getattr(ab, "menu", None) is not None and ab.menu.isVisible(), timeout=5_000)
    assert ab.menu.actions()[0].text() == "Ablate head 1.2"
    ab.menu.close()
