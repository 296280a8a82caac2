"""The window against a remote engine (a loopback server subprocess), offscreen: connect, open tiny-gpt, step,
run, stop, ablate, save a session file on this side, lose the server, reconnect. Nothing in the window asks
which engine it talks to; these check that it works all the same and says where the engine runs."""

from __future__ import annotations

import os
import signal

from engine.remote import RemoteTrace
from gui.core.engine_jobs import use_this_computer
from gui.core.jobs import save_session, set_gates

from .conftest import Server, record_gui_thread_calls

TIMEOUT_MS = 60_000




def idle(qtbot, win) -> None:
    qtbot.waitUntil(lambda: not win.client.busy and not win._chain, timeout=TIMEOUT_MS)


def test_connect_open_step_run_stop_ablate_save_and_reconnect(qtbot, window, tmp_path):
    win = window
    srv = Server(tmp_path)
    try:
        assert "this computer" in win.remote_engine.label.text()
        win.remote_engine.connect_to({"address": srv.address, "token": srv.token})
        qtbot.waitUntil(lambda: win.client.engine.remote, timeout=TIMEOUT_MS)
        idle(qtbot, win)
        assert f"via {srv.address}" in win.remote_engine.label.text()
        n_errors = len(win.errors)
        win.open_model("tiny-gpt", prompt="In the beginning")
        idle(qtbot, win)
        assert win.errors[n_errors:] == []
        trace = win.state.trace
        assert isinstance(trace, RemoteTrace) and trace.model_name == "tiny-gpt"
        n = len(trace)
        # from here on, nothing the window does while stepping may wait on the network in the GUI thread
        conn = win.client.engine.conn
        in_gui_thread = record_gui_thread_calls(conn)
        win.client.step()
        qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=TIMEOUT_MS)
        win.client.run(500)
        qtbot.waitUntil(lambda: len(win.state.trace) > n + 3, timeout=TIMEOUT_MS)
        win.client.stop()
        idle(qtbot, win)
        stopped_at = len(win.state.trace)
        assert stopped_at < n + 1 + 500 and not win.client.running
        assert win.errors[n_errors:] == []
        assert in_gui_thread == []

        # an ablation runs on the server and comes back as a recomputed trace
        win.client.call("gates", set_gates([("self", 0, 1, 0.0)]))
        qtbot.waitUntil(lambda: win.state.trace.gates.get("decoder.0.attn", (1.0,))[1:2] == (0.0,), timeout=TIMEOUT_MS)
        idle(qtbot, win)

        # a session file is written here, by the window's process
        path = tmp_path / "remote.aisession"
        win.client.call("save_session", save_session(str(path), {}))
        idle(qtbot, win)
        assert path.is_file() and '"tiny-gpt"' in path.read_text()

        # the server goes away: the window keeps its trace and says so
        shown = win.state.trace
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(10)
        win.client.step()
        qtbot.waitUntil(lambda: len(win.errors) > n_errors, timeout=TIMEOUT_MS)
        idle(qtbot, win)
        assert "went away" in win.errors[-1]
        assert win.state.trace is shown and shown.attention("self", 0).shape[1] == len(shown)
        assert any(w in win.remote_engine.label.text() for w in ("gone", "reconnecting"))

        # back on the same port (a token file keeps the token): the window's own retries (with backoff) find it
        # and restore prompt, steps and ablation
        srv.stop()
        token_file = tmp_path / "token"
        token_file.write_text(srv.token)
        srv = Server(tmp_path, port=srv.port, token_file=token_file)
        qtbot.waitUntil(lambda: win.state.trace is not shown, timeout=2 * TIMEOUT_MS)
        idle(qtbot, win)
        assert win.errors[-1].count("went away") == 1  # the retries that failed said nothing in the window
        assert not win.client.engine.gone
        restored = win.state.trace
        assert restored.token_ids == shown.token_ids and restored.gates == shown.gates
        assert "gone" not in win.remote_engine.label.text()
        win.client.step()
        qtbot.waitUntil(lambda: len(win.state.trace) == len(shown) + 1, timeout=TIMEOUT_MS)
        # File → Reconnect to engine on a live link: the same session again
        stepped = win.state.trace
        win.remote_engine.reconnect()
        qtbot.waitUntil(lambda: win.state.trace is not stepped, timeout=TIMEOUT_MS)
        idle(qtbot, win)
        assert win.state.trace.token_ids == stepped.token_ids
    finally:
        win.client.call("engine", use_this_computer())
        idle(qtbot, win)
        srv.stop()
