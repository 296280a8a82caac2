"""The candidates panel: sampling changes re-draw without a forward pass; branching by choice or double-click."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt

from tests.gui.conftest import open_model, wait_idle

ROOT = Path(__file__).resolve().parents[2]


def test_temperature_redraws_without_forward_pass(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    trace = win.state.trace
    forwards = win.client.forward_requests
    before = win.logits_panel.bar_values.copy()
    win.prompt_panel.temperature_spin.setValue(0.3)
    after = win.logits_panel.bar_values.copy()
    assert after[0] > before[0]  # colder: the top candidate gains mass
    win.prompt_panel.top_k_spin.setValue(5)
    assert np.count_nonzero(win.logits_panel.bar_values) == 5
    assert win.state.trace is trace
    assert win.client.forward_requests == forwards
    wait_idle(qtbot, win)
    assert win.state.trace is trace  # set_sampling sent no new trace either


def test_branch_from_logits_panel(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    n = len(win.state.trace)
    panel = win.logits_panel
    # at the frontier a candidate is a forced step
    chosen = int(panel.candidate_ids[3])
    panel.choose(3)
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=30_000)
    wait_idle(qtbot, win)
    trace = win.state.trace
    assert trace.token_ids[-1] == chosen and trace.steps[-1].how == "forced"
    # viewing the last step (the query before it): a candidate there branches, same length
    win.state.select(query=n - 1)
    assert panel.target_position == n
    other = int(panel.candidate_ids[1])
    assert other != chosen or int(panel.candidate_ids[0]) != chosen
    panel.choose(1)
    qtbot.waitUntil(lambda: win.state.trace is not trace, timeout=30_000)
    wait_idle(qtbot, win)
    assert len(win.state.trace) == n + 1 and win.state.trace.token_ids[-1] == other
    # a prompt position cannot be branched: a message, nothing breaks
    win.state.select(query=0)
    panel.choose(0)
    qtbot.waitUntil(lambda: bool(win.errors), timeout=30_000)
    assert "prompt" in win.last_error
    assert len(win.state.trace) == n + 1


def test_double_click_on_a_bar_chooses_it(qtbot, window, checkpoints):
    from PySide6.QtCore import QPointF

    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    panel = win.logits_panel
    n = len(win.state.trace)
    j = 2
    wanted = int(panel.candidate_ids[j])
    scene = panel.plot.getViewBox().mapViewToScene(QPointF(float(panel.bar_values[j]) / 2, j))
    assert panel.bar_at(scene) == j
    assert "probability" in panel.describe(j) and "logit" in panel.describe(j)
    pos = panel.plot.mapFromScene(scene)
    qtbot.mouseDClick(panel.plot.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    qtbot.mouseRelease(panel.plot.viewport(), Qt.MouseButton.LeftButton, pos=pos)  # QTest's double click ends pressed
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=30_000)
    assert win.state.trace.token_ids[-1] == wanted
