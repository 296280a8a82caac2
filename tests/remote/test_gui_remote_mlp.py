"""The Inside the MLP dock and Compare → Patch against a remote engine (a loopback server subprocess), offscreen:
the dock shows the server's neurons, a click ablates one on the server (the recomputed trace carries the neuron
gates), Restore clears it; the Patch tab patches and sweeps on the server with progress, and a cancelled sweep
says so. Compared with the same engine in this process (tolerance 1e-4: this process's torch threads differ)."""

from __future__ import annotations

import threading

import numpy as np

from engine import load_model
from engine.local import LocalEngine
from engine.remote import RemoteTrace
from gui.core.engine_jobs import use_this_computer

from .conftest import Server, record_gui_thread_calls
from .test_gui_remote import TIMEOUT_MS, idle

PROMPT = "In the beginning God created"
OTHER = "And the earth was without form"


def test_inside_mlp_and_patching_run_on_the_server(qtbot, window, tmp_path):  # noqa: F811
    win = window
    srv = Server(tmp_path)
    try:
        win.remote_engine.connect_to({"address": srv.address, "token": srv.token})
        qtbot.waitUntil(lambda: win.client.engine.remote, timeout=TIMEOUT_MS)
        idle(qtbot, win)
        n_errors = len(win.errors)
        win.open_model("tiny-llama", prompt=PROMPT)
        idle(qtbot, win)
        assert win.errors[n_errors:] == []
        trace = win.state.trace
        assert isinstance(trace, RemoteTrace)
        lm, local = load_model("tiny-llama", device="cpu"), LocalEngine()
        lt = lm.run(list(trace.token_ids))
        pos = len(trace) - 1

        # nothing below may wait on the network in the GUI thread
        conn = win.client.engine.conn
        in_gui_thread = record_gui_thread_calls(conn)

        # the dock: the server's neurons
        win.state.select(layer=1, query=pos)
        win.registry.actions["analysis.inside_mlp"].trigger()
        panel = win.analysis.inside_mlp
        qtbot.waitUntil(lambda: panel.result is not None and panel._wanted == panel.key(), timeout=TIMEOUT_MS)
        idle(qtbot, win)
        r = panel.result
        want = local.mlp_neurons(lm, lt, 1, pos, panel.token_combo.currentData(), k=20)
        assert [n.index for n in r.neurons] == [n.index for n in want.neurons]
        np.testing.assert_allclose(r.writes, want.writes, atol=1e-4)
        assert panel.table.item(0, 0).text() == f"N{want.neurons[0].index}"

        # a click ablates the neuron on the server; the recomputed trace carries its gate
        first = r.neurons[0].index
        panel._on_cell_clicked(0, 1)
        qtbot.waitUntil(lambda: bool(win.state.trace.neuron_gates), timeout=TIMEOUT_MS)
        idle(qtbot, win)
        assert win.state.trace.neuron_gates == {"decoder.1.mlp": {first: 0.0}}
        assert win.client.engine.remote and win.errors[n_errors:] == []
        lm.set_neuron_gate(1, first, 0.0)
        np.testing.assert_allclose(win.state.trace.logits_at(pos), lm.run(list(trace.token_ids)).logits_at(pos), atol=1e-4)
        lm.clear_neuron_gates()
        assert panel.movers.isVisibleTo(panel) and f"L1.N{first}" in panel.movers_caption.text()
        panel.clear_button.click()
        qtbot.waitUntil(lambda: not win.state.trace.neuron_gates, timeout=TIMEOUT_MS)
        idle(qtbot, win)

        # Compare → Patch: one patch and the sweep, on the server
        dlg = win.analysis.open_compare()
        dlg.prompt_edit.setText(OTHER)
        p = dlg.patch
        p.select_head(1, 2)
        p.run_patch()
        qtbot.waitUntil(lambda: p.result is not None, timeout=TIMEOUT_MS)
        idle(qtbot, win)
        want_patch = local.patch(lm, lm.run(list(win.state.trace.token_ids)), OTHER, "L1.H2", capture=False)
        np.testing.assert_allclose(p.result.after, want_patch.after, atol=1e-4)
        assert p.result.pairs == want_patch.pairs and "↔" in p.patch_caption.text()

        steps: list[tuple[int, int]] = []
        p.progress.progressed.connect(lambda d, n: steps.append((d, n)))
        p.run_sweep()
        qtbot.waitUntil(lambda: p.sweep is not None, timeout=TIMEOUT_MS)
        idle(qtbot, win)
        assert p.sweep.patched.shape == (4, 8) and np.isfinite(p.sweep.patched).all() and not p.sweep.cancelled
        assert steps and steps[-1][0] == steps[-1][1]

        # cancelled before it starts: nothing computed on the server, said so
        release = threading.Event()
        win.client.call("test.block", lambda _w: release.wait(30) and None)
        p.run_sweep()
        p.cancel()
        release.set()
        qtbot.waitUntil(lambda: p.sweep is not None and p.sweep.cancelled, timeout=TIMEOUT_MS)
        idle(qtbot, win)
        assert np.isnan(p.sweep.patched).all() and "Cancelled" in p.sweep_caption.text()
        assert win.errors[n_errors:] == []
        assert in_gui_thread == []
        dlg.close()
    finally:
        win.client.call("engine", use_this_computer())
        idle(qtbot, win)
        srv.stop()


def test_nothing_in_the_mlp_jobs_reaches_past_the_engine():
    """The jobs name no engine module that computes on a model: a remote model would not do."""
    import inspect

    from gui.core import mlp_jobs

    source = inspect.getsource(mlp_jobs)
    for name in ("engine.explain", "engine.patching", "from engine import"):
        assert name not in source.split('"""', 2)[2], name


def test_inside_the_experts_runs_on_the_server(qtbot, window, tmp_path):
    """A Qwen3-MoE layer in the dock against a remote engine: the server's experts, weights and neurons' direct
    effects, as this process computes them (1e-4: torch threads differ), without the GUI thread touching the wire."""
    import pytest

    pytest.importorskip("transformers")
    from tests.hf_factories import ARCHITECTURES

    folder = ARCHITECTURES["qwen3_moe"](tmp_path / "models" / "qwen3_moe")
    win = window
    (tmp_path / "srv").mkdir()
    srv = Server(tmp_path / "srv", models_dirs=(tmp_path / "models",))
    try:
        win.remote_engine.connect_to({"address": srv.address, "token": srv.token})
        qtbot.waitUntil(lambda: win.client.engine.remote, timeout=TIMEOUT_MS)
        idle(qtbot, win)
        n_errors = len(win.errors)
        win.open_model(str(folder), prompt=PROMPT)
        idle(qtbot, win)
        assert win.errors[n_errors:] == []
        trace = win.state.trace
        assert isinstance(trace, RemoteTrace)
        in_gui_thread = record_gui_thread_calls(win.client.engine.conn)
        pos = len(trace) - 1
        win.state.select(layer=1, query=pos)
        win.registry.actions["analysis.inside_mlp"].trigger()
        panel = win.analysis.inside_mlp
        qtbot.waitUntil(lambda: panel.experts is not None and panel._wanted == panel.key(), timeout=TIMEOUT_MS)
        idle(qtbot, win)
        lm = load_model(str(folder), device="cpu")
        want = LocalEngine().expert_neurons(lm, lm.run(list(trace.token_ids)), 1, pos, 20,
                                            panel.token_combo.currentData())
        got = panel.experts
        assert [e.expert for e in got.experts] == [e.expert for e in want.experts]
        for a, b in zip(got.experts, want.experts):
            np.testing.assert_allclose(a.weight, b.weight, rtol=1e-5)
            np.testing.assert_allclose(a.activations, b.activations, atol=1e-4)
            np.testing.assert_allclose(a.effects, b.effects, atol=1e-4)
        assert panel.experts_table.rowCount() > 0 and in_gui_thread == []
        assert win.errors[n_errors:] == []
    finally:
        win.client.call("engine", use_this_computer())
        idle(qtbot, win)
        srv.stop()
