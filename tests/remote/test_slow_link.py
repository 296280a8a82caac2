"""A slow link: the same session through a local proxy that delays every chunk 200 ms each way. Heartbeats and
answers still arrive in order; the numbers are the ones a direct link gives. (How long the window's event loop
may stall is a benchmark question, not a test: tools/bench_remote.py; the GUI test checks that stepping never
calls the engine from the GUI thread at all.)"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np

from engine.remote import connect

DELAY_S = 0.2


class DelayProxy:
    """127.0.0.1:<port> -> target, every chunk held DELAY_S before it is passed on (order kept)."""

    def __init__(self, target: tuple[str, int], delay: float = DELAY_S) -> None:
        self.target, self.delay = target, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:  # the server is gone (a client's reconnect attempt): refuse this one too
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        import queue

        q: queue.Queue = queue.Queue()

        def sender() -> None:
            while True:
                due, data = q.get()
                if data is None:
                    dst.close()
                    return
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=sender, daemon=True).start()
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            q.put((time.monotonic() + self.delay, data or None))
            if not data:
                return

    def close(self) -> None:
        self.closing = True
        self.listener.close()


def test_a_session_over_a_slow_link_gives_the_same_numbers(server, eng):
    host, port = server.address.rsplit(":", 1)
    proxy = DelayProxy((host, int(port)))
    slow = connect(f"127.0.0.1:{proxy.port}", token=server.token)
    try:
        models = [e.load_model("tiny-llama") for e in (slow, eng)]
        sessions = [e.Session(m, "In the beginning") for e, m in zip((slow, eng), models)]
        for s in sessions:
            s.step()
            s.step()
            s.back()
        a, b = (s.trace for s in sessions)
        assert a.token_ids == b.token_ids
        np.testing.assert_array_equal(a.attention("self", 3), b.attention("self", 3))
        np.testing.assert_array_equal(a.logits_at(len(a) - 1), b.logits_at(len(b) - 1))
        assert slow.gone is None
    finally:
        slow.close()
        proxy.close()
