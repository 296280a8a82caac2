"""Attention rollout next to "mean of heads" in the attention view."""

from __future__ import annotations

import numpy as np

from tests.gui.conftest import open_model


def test_rollout_view(qtbot, window, checkpoints):
    from engine.analysis import rollout

    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    view, ctl = win.attention_view, win.analysis.rollout
    trace = win.state.trace
    win.state.select(layer=1)
    ctl.set_active(True)
    np.testing.assert_allclose(view.pattern, rollout(trace, "self", 1), rtol=1e-6)
    np.testing.assert_allclose(view.pattern.sum(-1), 1.0, rtol=1e-4)  # rows are distributions
    assert "rollout of layers 0–1" in view.plot.titleLabel.text
    assert not view.head_spin.isEnabled()
    win.state.select(layer=0)
    np.testing.assert_allclose(view.pattern, rollout(trace, "self", 0), rtol=1e-6)
    # mean of heads and rollout exclude each other
    win.state.select(mean_heads=True)
    assert not ctl.box.isChecked()
    np.testing.assert_allclose(view.pattern, trace.attention("self", 0).mean(0), rtol=1e-6)
    ctl.set_active(True)
    assert not win.state.mean_heads and ctl.active
    ctl.set_active(False)
    np.testing.assert_allclose(view.pattern, trace.attention_head("self", 0, win.state.head))
    assert view.head_spin.isEnabled()


def test_rollout_not_for_cross_attention(qtbot, window, checkpoints):
    from engine.analysis import rollout

    win = window
    open_model(qtbot, win, checkpoints["encoder-decoder"])
    view, ctl = win.attention_view, win.analysis.rollout
    trace = win.state.trace
    win.state.select(kind="cross")
    ctl.set_active(True)
    assert not ctl.box.isEnabled() and not ctl.active
    assert view.pattern.shape == (len(trace), len(trace.source_tokens))  # the plain head
    win.state.select(kind="encoder")
    assert ctl.active
    np.testing.assert_allclose(view.pattern, rollout(trace, "encoder", win.state.layer), rtol=1e-6)
