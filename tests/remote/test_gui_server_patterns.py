"""The window against a server that keeps every trace's patterns (--mirror-limit 0), offscreen: the attention
view's tile and the head grid's thumbnails are asked of the server (from the display threads, never the GUI
thread), equal the trace's answers, and after kill -9 what was drawn stays, what was not says the engine went
away, and the window's reconnect restores the session and draws again."""

from __future__ import annotations

import os
import signal

import numpy as np

from .conftest import Server, record_gui_thread_calls

TIMEOUT_MS = 60_000
PROMPT = "In the beginning God created the heaven and the earth. And the earth was without form, and void."


def drawn(qtbot, win) -> None:
    qtbot.waitUntil(lambda: not win.client.busy and not win._chain, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: not win.head_grid.pending and not win.attention_view.pending, timeout=TIMEOUT_MS)


def test_window_draws_patterns_kept_on_the_server_and_survives_kill_9(qtbot, window, tmp_path):
    win = window
    token_file = tmp_path / "token"
    srv = Server(tmp_path, token_file=token_file, extra=("--mirror-limit", "0"))
    try:
        win.remote_engine.connect_to({"address": srv.address, "token": srv.token})
        qtbot.waitUntil(lambda: win.client.engine.remote, timeout=TIMEOUT_MS)
        n_errors = len(win.errors)
        win.open_model("tiny-gpt", prompt=PROMPT)
        drawn(qtbot, win)
        assert win.errors[n_errors:] == []
        assert win.state.trace.patterns_on_server and win.state.trace.keys == {}

        # the head view reads the selected (newest) query's row in the GUI thread: after each step it is already
        # here, asked with the step by the worker thread
        win.docks["head_view"].raise_()
        qtbot.waitUntil(lambda: win.head_view.row is not None, timeout=TIMEOUT_MS)
        conn = win.client.engine.conn
        in_gui_thread = record_gui_thread_calls(conn)
        n = len(win.state.trace)
        for _ in range(2):
            win.client.step()
            qtbot.waitUntil(lambda m=n: len(win.state.trace) == m + 1, timeout=TIMEOUT_MS)
            drawn(qtbot, win)
            n += 1
        assert in_gui_thread == [] and win.errors[n_errors:] == []
        assert win.head_view.query_row == n - 1
        np.testing.assert_array_equal(win.head_view.row, win.state.trace.attention_row(win.state.kind, win.state.layer, n - 1))
        win.docks["heads"].raise_()
        view, trace = win.attention_view, win.state.trace
        tile = view.tile
        assert view.tiled and tile is not None and tile.q1 == len(trace)
        s = win.state
        # the tile on screen is what the trace answers (the same request: cached, nothing crosses again)
        received = conn.bytes_received
        if tile.exact:
            expected = trace.attention_tile(s.kind, s.layer, s.head, tile.q0, tile.q1, tile.k0, tile.k1)
        else:
            expected = trace.attention_overview(s.kind, s.layer, heads=[s.head], rows=len(tile.row_edges) - 1,
                                                cols=len(tile.col_edges) - 1, q_range=(tile.q0, tile.q1),
                                                k_range=(tile.k0, tile.k1))[0]
        np.testing.assert_array_equal(tile.weights, expected)
        assert conn.bytes_received == received
        assert win.head_grid.pooled is not None and np.asarray(win.head_grid.pooled).max() > 0

        # kill -9: the window keeps the trace, the drawn tile and thumbnails, and says the engine went away
        shown = win.state.trace
        pooled = np.array(win.head_grid.pooled)
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(10)
        win.client.step()
        qtbot.waitUntil(lambda: len(win.errors) > n_errors, timeout=TIMEOUT_MS)
        assert "went away" in win.errors[-1]
        assert win.state.trace is shown and view.tile is tile
        np.testing.assert_array_equal(np.asarray(win.head_grid.pooled), pooled)
        # a region never drawn cannot come: the old tile stays and the title says why
        view.set_view(2, 9, 1, 8)
        qtbot.waitUntil(lambda: not view.pending, timeout=TIMEOUT_MS)
        assert view.tile is tile and "went away" in view.plot.titleLabel.text
        # hovering a cell that never crossed says so too, in place of a weight (once the background read failed)
        view.hover(7, 3)
        qtbot.waitUntil(lambda: not view.arrivals.waiting, timeout=TIMEOUT_MS)
        assert "went away" in view.readout.text() and view.hover_weight is None

        # the server is back on the same port (the token file keeps the token): the window reconnects by itself,
        # the session is restored there and drawn again
        srv.stop()
        srv = Server(tmp_path, port=srv.port, token_file=token_file, extra=("--mirror-limit", "0"))
        qtbot.waitUntil(lambda: win.state.trace is not shown, timeout=2 * TIMEOUT_MS)
        view.fit()
        drawn(qtbot, win)
        restored = win.state.trace
        assert restored.token_ids == shown.token_ids and restored.patterns_on_server
        assert view.tile is not tile and "went away" not in view.plot.titleLabel.text
        new = view.tile
        assert (new.q0, new.q1, new.k0, new.k1) == (tile.q0, tile.q1, tile.k0, tile.k1)
        np.testing.assert_array_equal(new.weights, tile.weights)  # the same steps replayed: the same numbers
    finally:
        from gui.core.engine_jobs import use_this_computer

        win.client.call("engine", use_this_computer())
        qtbot.waitUntil(lambda: not win.client.busy, timeout=TIMEOUT_MS)
        srv.stop()
