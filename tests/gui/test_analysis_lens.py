"""The logit lens dock: one request per trace/position while on screen, stale answers dropped, all families."""

from __future__ import annotations

import numpy as np

from tests.gui.conftest import open_model, wait_idle


def _show_lens(qtbot, win):
    win.analysis.show_dock("lens")
    panel = win.analysis.logit_lens
    qtbot.waitUntil(lambda: panel.result is not None and panel.result["trace"] is win.state.trace
                    and panel.result["position"] == panel.position(), timeout=30_000)
    wait_idle(qtbot, win)
    return panel


def test_logit_lens_table_follows_the_query(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    panel = _show_lens(qtbot, win)
    trace = win.state.trace
    n_layers = trace.n_layers["self"]
    assert panel.table.rowCount() == n_layers and panel.table.columnCount() == panel.top
    # the last layer is the model's own prediction: its top token is the candidates panel's top token
    vocab = win.state.model.vocab
    top = int(np.argmax(trace.logits_at(panel.position())))
    assert panel.cell_text(n_layers - 1, 0).split("\n")[0] == vocab[top]
    assert int(panel.result["top_ids"][-1, 0]) == top
    assert "after each layer" in panel.heading.text()
    # moving the query asks again; a burst of moves gives one request for the last position
    requests = panel.requests
    win.state.select(query=1)
    win.state.select(query=2)
    qtbot.waitUntil(lambda: panel.result["position"] == 2, timeout=30_000)
    assert panel.requests == requests + 1
    # a stale answer (an older request id) is dropped
    shown = panel.result
    panel._on_result(panel._latest - 1, "lens", {**shown, "position": 0})
    assert panel.result is shown


def test_logit_lens_encoder_decoder_and_no_head(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder-decoder"])
    panel = _show_lens(qtbot, win)
    assert panel.table.rowCount() == win.state.trace.n_layers["self"]
    assert "decoder, position" in panel.heading.text()
    open_model(qtbot, win, checkpoints["encoder-no-head"])
    qtbot.waitUntil(lambda: "No logit lens" in panel.heading.text(), timeout=10_000)
    assert panel.table.isHidden() and panel.result is None
    assert win.errors == []


def test_a_long_run_does_not_pile_up_lens_requests(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["long-decoder"])
    panel = _show_lens(qtbot, win)
    requests = panel.requests
    win.client.run(60)
    qtbot.waitUntil(lambda: not win.client.running, timeout=120_000)
    panel = _show_lens(qtbot, win)  # then it catches up with the last trace
    assert panel.result["trace"] is win.state.trace
    assert panel.requests - requests <= 3  # not one per progress report


def test_encoder_only_ablation_lens_and_statistics(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder"])
    old = win.state.trace
    win.analysis.ablation.ablate(0, 0)
    qtbot.waitUntil(lambda: win.state.trace is not old, timeout=30_000)
    wait_idle(qtbot, win)
    assert win.state.trace.gates == {"encoder.0.attn": (0.0, 1.0, 1.0, 1.0)}
    panel = _show_lens(qtbot, win)
    assert "Masked-LM predictions" in panel.heading.text()
    win.analysis.show_dock("stats")
    stats = win.analysis.head_stats
    qtbot.waitUntil(lambda: stats.stats_trace is win.state.trace, timeout=60_000)
    assert {s.kind for s in stats.stats} == {"encoder"}
    assert "1 head ablated" in stats.message.text()
    assert win.errors == []


def test_a_request_for_another_models_trace_is_answered_as_stale(qtbot, window, checkpoints):
    from gui.core import jobs as analysis_ops

    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    old = win.state.trace
    open_model(qtbot, win, checkpoints["encoder-decoder"])
    worker = win.client.worker  # idle: calling it from here is safe
    assert analysis_ops.logit_lens(old, 1)(worker)["stale"]
    assert analysis_ops.head_statistics(old)(worker)["stale"]


def test_a_tabbed_away_lens_computes_nothing(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    panel = win.analysis.logit_lens
    win.client.step()
    qtbot.waitUntil(lambda: bool(win.state.trace.steps), timeout=30_000)
    wait_idle(qtbot, win)
    qtbot.wait(100)
    assert panel.requests == 0 and win.analysis.head_stats.requests == 0  # behind the candidates tab
    _show_lens(qtbot, win)  # brought to the front, it catches up
    assert panel.requests == 1


def test_logit_lens_of_t5gemma_on_the_transformers_backend(qtbot, window, tmp_path):
    """An encoder-decoder only the transformers backend opens: the lens reads its decoder, the last row is the
    model's own prediction."""
    import pytest

    pytest.importorskip("transformers")
    from tests.hf_factories import ARCHITECTURES

    win = window
    open_model(qtbot, win, ARCHITECTURES["t5gemma"](tmp_path / "t5gemma"))
    trace = win.state.trace
    assert trace.family == "encoder-decoder" and type(win.client.worker.model).__name__ == "HFModel"
    panel = _show_lens(qtbot, win)
    n_layers = trace.n_layers["self"]
    assert panel.table.rowCount() == n_layers and "decoder, position" in panel.heading.text()
    top = int(np.argmax(trace.logits_at(panel.position())))
    assert int(panel.result["top_ids"][-1, 0]) == top
    assert win.errors == []
