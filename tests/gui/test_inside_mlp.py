"""The "Inside the MLP" dock and Compare → Patch (issue 29): the dock shows engine.explain.mlp_neurons for the
selected layer and token (writes sum with the rest to the logit), the activation strip is the neuron's own, a
click ablates a neuron and the movers say how the candidates moved, Restore brings it back; encoder-only models
rank by |activation|; the Patch tab shows engine.patching's result and says which positions map; the sweep
reports progress, fills the heatmap, and stops when cancelled."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine import load_model
from engine.explain import mlp_neurons
from engine.patching import patch
from tests.gui.conftest import open_model, wait_idle

TIMEOUT = 60_000


def _shown(qtbot, win):
    win.registry.actions["analysis.inside_mlp"].trigger()
    panel = win.analysis.inside_mlp
    qtbot.waitUntil(lambda: panel.result is not None and panel._wanted == panel.key(), timeout=TIMEOUT)
    wait_idle(qtbot, win)
    return panel


def test_the_dock_shows_the_engines_neurons_and_ablates_one(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    trace = win.state.trace
    pos = len(trace) - 1
    win.state.select(layer=1, query=pos)
    panel = _shown(qtbot, win)
    r = panel.result
    token = panel.token_combo.currentData()
    want = mlp_neurons(load_model(checkpoints["decoder"], device="cpu"), trace, 1, pos, token, k=20)
    assert (r.layer, r.position, r.token_id) == (1, pos, token) == (want.layer, want.position, want.token_id)
    assert [n.index for n in r.neurons] == [n.index for n in want.neurons]
    assert panel.table.rowCount() == 20
    assert panel.table.item(0, 0).text() == f"N{want.neurons[0].index}"
    assert float(panel.table.item(0, 5).text()) == pytest.approx(want.neurons[0].write, abs=1e-3)
    res = r.residual
    total = res.embeddings_effect + res.attn_effects.sum() + res.mlp_effects.sum() + res.other_effect
    assert total == pytest.approx(res.logit, abs=1e-3)
    np.testing.assert_allclose(panel.effect_bars[1].opts["height"], res.mlp_effects)
    np.testing.assert_allclose(panel.strip.image[0], r.neurons[0].strip)  # the strip: its answer at every token
    assert "series of questions" in panel.caption.text()

    # ablate the first neuron: the session recomputes, the movers compare with the trace from before
    first = r.neurons[0].index
    panel._on_cell_clicked(0, 1)
    qtbot.waitUntil(lambda: bool(win.state.trace.neuron_gates), timeout=TIMEOUT)
    wait_idle(qtbot, win)
    assert win.state.trace.neuron_gates == {"decoder.1.mlp": {first: 0.0}}
    assert panel.movers.isVisibleTo(panel) and panel.movers.rowCount() > 0
    assert f"L1.N{first}" in panel.movers_caption.text()
    before, after = trace.logits_at(pos), win.state.trace.logits_at(pos)
    assert np.abs(after - before).max() > 1e-5
    qtbot.waitUntil(lambda: panel.result is not None and panel._wanted == panel.key(), timeout=TIMEOUT)
    wait_idle(qtbot, win)
    rows = [panel.table.item(i, 0).text() for i in range(panel.table.rowCount())]
    assert f"N{first}" in rows  # listed although its write is now 0
    assert panel.result.neurons[rows.index(f"N{first}")].per_unit
    assert panel.table.item(rows.index(f"N{first}"), 1).text() == "✕ off"
    panel.clear_button.click()
    qtbot.waitUntil(lambda: not win.state.trace.neuron_gates, timeout=TIMEOUT)
    wait_idle(qtbot, win)
    np.testing.assert_allclose(win.state.trace.logits_at(pos), before, atol=1e-5)
    assert not panel.movers.isVisibleTo(panel)


def test_encoder_only_models_rank_by_activation(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder"])
    win.state.select(layer=1, query=2)
    panel = _shown(qtbot, win)
    assert panel.result.rank_by == "activation" and not panel.token_combo.isEnabled()
    assert panel.table.isColumnHidden(5) and "non-linear" in panel.caption.text()
    assert not panel.effect_plot.isVisibleTo(panel)


def test_patch_tab_shows_the_engines_patch_and_sweeps_every_head(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"], prompt="In the beginning God created")
    trace = win.state.trace
    dlg = win.analysis.open_compare()
    dlg.prompt_edit.setText("And the earth was without form")
    p = dlg.patch
    p.select_head(1, 2)
    assert p.components_edit.text() == "L1.H2"
    p.run_patch()
    qtbot.waitUntil(lambda: p.result is not None, timeout=TIMEOUT)
    wait_idle(qtbot, win)
    want = patch(load_model(checkpoints["decoder"], device="cpu"), trace, "And the earth was without form", "L1.H2")
    np.testing.assert_allclose(p.result.after, want.after, atol=1e-6)
    assert p.result.pairs == want.pairs
    assert "aligned at the end" in p.patch_caption.text() and "↔" in p.patch_caption.text()
    assert p.movers.rowCount() == len(want.movers)
    assert p.movers.item(0, 0).text() == win.state.model.vocab[want.movers[0][0]]

    steps = []
    p.progress.progressed.connect(lambda d, n: steps.append((d, n)))
    p.run_sweep()
    qtbot.waitUntil(lambda: p.sweep is not None, timeout=TIMEOUT)
    wait_idle(qtbot, win)
    assert p.sweep.patched.shape == (2, 4) and np.isfinite(p.sweep.patched).all() and not p.sweep.cancelled
    assert steps[-1] == (2, 2) and p.image.image.shape == (2, 4)
    assert p.sweep_button.isEnabled() and not p.bar.isVisible()

    # cancelled before it starts (the worker busy with another job): nothing computed, said so
    release = threading.Event()
    win.client.call("test.block", lambda _w: release.wait(30) and None)
    p.run_sweep()
    p.cancel()
    release.set()
    qtbot.waitUntil(lambda: p.sweep is not None and p.sweep.cancelled, timeout=TIMEOUT)
    wait_idle(qtbot, win)
    assert np.isnan(p.sweep.patched).all() and "Cancelled" in p.sweep_caption.text()


def test_a_bad_component_is_said_in_place(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    dlg = win.analysis.open_compare()
    dlg.prompt_edit.setText("another prompt")
    p = dlg.patch
    p.components_edit.setText("L7.H0")
    p.run_patch()
    qtbot.waitUntil(lambda: "layer 7" in p.patch_caption.text(), timeout=TIMEOUT)
    wait_idle(qtbot, win)


def test_component_labels_match_the_engines_and_pairs_are_described():
    from engine.patching import Component
    from gui.features.patching import component_label, describe_pairs

    for text in ("L3.H7", "L0.attn", "L2.MLP", "L1.N120", "L4.resid", "L1.X2", "L1.cross", "E0.H1", "E2.MLP"):
        c = Component.parse(text, "encoder-decoder")
        assert component_label(c.what, c.layer, c.index or 0, c.kind) == text
    text = describe_pairs(((2, 0), (3, 1), (4, 2)), 5, "end")
    assert "2..4 ↔ the second prompt's 0..2" in text and "2 other positions keep their own" in text
