"""Compare two prompts: the second runs on the same model without touching the session."""

from __future__ import annotations

import numpy as np

from tests.gui.conftest import open_model, wait_idle


def test_compare_two_prompts(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    trace = win.state.trace
    dlg = win.analysis.open_compare()
    assert dlg.isVisible()
    dlg.prompt_edit.setText(win.prompt_panel.prompt_edit.toPlainText()[:-2] + "zz and more")
    forwards = win.client.forward_requests
    dlg.run()
    qtbot.waitUntil(lambda: dlg.other is not None, timeout=30_000)
    wait_idle(qtbot, win)
    assert win.state.trace is trace and win.client.forward_requests == forwards  # the session is untouched
    other = dlg.other
    n = 0
    while n < min(len(trace), len(other)) and trace.token_ids[n] == other.token_ids[n]:
        n += 1
    m = min(len(trace), len(other))
    assert 1 <= n < m and dlg.diff.shape == (m, m)
    s = win.state
    expected = trace.attention_head("self", s.layer, s.head)[:m, :m] - other.attention_head("self", s.layer, s.head)[:m, :m]
    np.testing.assert_allclose(dlg.diff, expected)
    np.testing.assert_allclose(dlg.diff[:n, :n], 0, atol=1e-5)  # causal: the shared prefix sees the same tokens
    assert dlg.maps[2].h_line.isVisible() and dlg.maps[2].h_line.value() == n - 0.5
    assert "shared prefix" in dlg.caption.text()
    assert dlg.table.rowCount() >= 8
    # another head follows the selection
    win.state.select(layer=1, head=2)
    expected = trace.attention_head("self", 1, 2)[:m, :m] - other.attention_head("self", 1, 2)[:m, :m]
    np.testing.assert_allclose(dlg.diff, expected)
    assert win.errors == []


def test_compare_encoder_decoder_cross(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder-decoder"])
    win.state.select(kind="cross")
    dlg = win.analysis.open_compare()
    dlg.source_edit.setText(win.prompt_panel.source_edit.toPlainText() + " extra")
    dlg.prompt_edit.setText("")
    dlg.run()
    qtbot.waitUntil(lambda: dlg.other is not None, timeout=30_000)
    trace, other = win.state.trace, dlg.other
    assert dlg.diff is not None and dlg.diff.shape[1] == min(len(trace.source_ids), len(other.source_ids))
    assert win.errors == []
