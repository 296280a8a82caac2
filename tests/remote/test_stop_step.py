"""Stop during one long step over the remote engine: the client's cancel reaches the server while the step's
forward is held inside layer 0 there (an in-thread server, so the hold is a pre-hook on its model, never
timing); the forward stops at the next layer, Cancelled comes back, and the session on both ends is as it was."""

from __future__ import annotations

import secrets
import threading

import numpy as np
import pytest

from engine import Cancelled
from engine.remote import connect
from engine.remote.server import EngineServer
from engine.session import live_events

TIMEOUT_MS = 60_000


@pytest.fixture
def thread_server():
    token = secrets.token_hex(24)
    server = EngineServer(token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"127.0.0.1:{server.port}", token
    server.stop()
    thread.join(10)


class Hold:
    """Holds the server's next forward inside layer 0 of its (only) model until the cancel has arrived there."""

    def __init__(self, server: EngineServer) -> None:
        (model,) = server.models.values()
        self.server = server
        self.started, self.release = threading.Event(), threading.Event()
        self.handle = model.net.decoder.layers[0].register_forward_pre_hook(self._hold)

    def _hold(self, _m, _a) -> None:  # noqa: ANN001
        self.started.set()
        self.release.wait(30)

    def cancel_arrived(self) -> bool:
        return any(event.is_set() for event in list(self.server._cancels.values()))

    def let_go(self) -> None:
        self.release.set()
        self.handle.remove()


def _wait(condition, what: str) -> None:  # noqa: ANN001
    done = threading.Event()
    for _ in range(600):
        if condition():
            return
        done.wait(0.05)
    raise AssertionError(f"{what} did not happen")


@pytest.mark.parametrize("how", ["step", "branch"])
def test_a_cancelled_remote_step_stops_on_the_server_and_keeps_the_session(thread_server, how):
    server, address, token = thread_server
    eng = connect(address, token)
    try:
        model = eng.load_model("tiny-gpt")
        session = eng.Session(model, "In the beginning")
        session.step()
        ids, live, attention = list(session.ids), live_events(session.history), session.trace.attention("self", 1).copy()
        (server_session, _), = server.sessions.values()
        hold = Hold(server)
        cancel, outcome = threading.Event(), {}

        def ask() -> None:
            try:
                outcome["result"] = session.step(cancel=cancel) if how == "step" else session.branch(7, cancel=cancel)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = exc

        asker = threading.Thread(target=ask)
        asker.start()
        try:
            assert hold.started.wait(30)
            cancel.set()
            _wait(hold.cancel_arrived, "the cancel reaching the server")
        finally:
            hold.let_go()
            asker.join(60)
        assert isinstance(outcome.get("error"), Cancelled), outcome
        assert session.ids == ids and server_session.ids == ids
        assert live_events(session.history) == live and live_events(server_session.history) == live
        np.testing.assert_array_equal(session.trace.attention("self", 1), attention)
        session.step()
        assert len(session.ids) == len(ids) + 1
    finally:
        eng.close()


def test_stop_in_the_window_during_one_long_remote_step(qtbot, window, thread_server):
    server, address, token = thread_server
    win = window
    win.remote_engine.connect_to({"address": address, "token": token})
    qtbot.waitUntil(lambda: win.client.engine.remote, timeout=TIMEOUT_MS)
    win.open_model("tiny-gpt", prompt="In the beginning")
    qtbot.waitUntil(lambda: not win.client.busy and not win._chain and win.state.trace is not None, timeout=TIMEOUT_MS)
    before = win.state.trace
    ids = list(win.client.worker.session.ids)
    hold = Hold(server)
    try:
        win.token_strip.step()
        assert hold.started.wait(30)
        win.registry.action("generate.stop").trigger()  # Esc
        _wait(hold.cancel_arrived, "the cancel reaching the server")
    finally:
        hold.let_go()
    qtbot.waitUntil(lambda: not win.client.busy, timeout=TIMEOUT_MS)
    assert not win.errors
    assert "Stopped" in win.statusBar().currentMessage()
    assert win.state.trace is before and win.client.worker.session.ids == ids
    win.token_strip.step()
    qtbot.waitUntil(lambda: len(win.state.trace) == len(ids) + 1, timeout=TIMEOUT_MS)
    assert not win.errors
