"""The client's end of the wire: one socket, one I/O thread, any number of calling threads.

ZeroMQ sockets belong to one thread, and the GUI asks from several (the engine worker steps while the
window fetches a logits row), so a thread of its own owns the socket: callers hand it signed requests and
wait for their answer by request id. While answers are outstanding it pings the server; the server's
socket thread answers pings even while its engine thread is busy, so silence means the server is gone
(killed, crashed, or the network dropped): every waiting call then fails with EngineGone at once.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from .protocol import AuthenticationError, BadMessage, EngineGone, is_refusal, pack, raise_error, unpack

log = logging.getLogger(__name__)

PING_AFTER_S = 0.5  # silence while waiting before a ping
GONE_AFTER_S = 4.0  # silence while waiting (pings unanswered) before the engine counts as gone
CONNECT_TIMEOUT_S = 5.0


class _Pending:
    def __init__(self, progress: Callable[[Any], None] | None) -> None:
        self.done = threading.Event()
        self.body: Any = None
        self.error: BaseException | None = None
        self.progress = progress


class Connection:
    def __init__(self, address: str, token: str) -> None:
        self.address = address
        self.key = token.encode("utf-8")
        self.gone: str | None = None  # why, once the engine went away
        self.bytes_sent = 0
        self.bytes_received = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(f"tcp://{address}")
        self._wake_name = f"inproc://wake-{id(self)}"
        self._wake_in = self._ctx.socket(zmq.PAIR)
        self._wake_in.bind(self._wake_name)
        self._wake_out = self._ctx.socket(zmq.PAIR)
        self._wake_out.connect(self._wake_name)
        self._outbox: list[list] = []
        self._closing = False
        self._last_heard = time.monotonic()
        self._last_ping = 0.0
        self._thread = threading.Thread(target=self._loop, name=f"engine-link-{address}", daemon=True)
        self._thread.start()

    # -- calling threads -------------------------------------------------------------------------
    def call(self, op: str, body: Any = None, progress: Callable[[Any], None] | None = None, cancel: Any = None,
             timeout: float | None = None) -> Any:
        """Send `op` and wait for its answer (re-raising the server's engine errors as the same classes).
        `cancel` (a threading.Event or a callable) asks the server to stop the request; `progress(body)` gets
        the server's progress reports, in this thread's stead (from the I/O thread)."""
        if self.gone:
            raise EngineGone(self.gone)
        rid = next(self._ids)
        pending = _Pending(progress)
        frames = pack(self.key, {"id": rid, "op": op}, body)
        with self._lock:
            self._pending[rid] = pending
            self._send(frames)
        deadline = None if timeout is None else time.monotonic() + timeout
        cancel_sent = False
        is_cancelled = cancel if callable(cancel) and not hasattr(cancel, "is_set") else getattr(cancel, "is_set", None)
        while not pending.done.wait(0.05):
            if is_cancelled is not None and not cancel_sent and is_cancelled():
                self.notify("cancel", {"request": rid})
                cancel_sent = True
            if deadline is not None and time.monotonic() > deadline:
                with self._lock:
                    self._pending.pop(rid, None)
                self._mark_gone(f"the engine at {self.address} did not answer within {timeout:.0f} s")
                raise EngineGone(self.gone)
        if pending.error is not None:
            raise pending.error
        body = pending.body
        if "error" in body:
            raise_error(body["error"])
        return body.get("ok")

    def notify(self, op: str, body: Any = None) -> None:
        """Send without waiting for the answer (cancel)."""
        if self.gone:
            return
        rid = next(self._ids)
        with self._lock:
            self._send(pack(self.key, {"id": rid, "op": op}, body))

    def _send(self, frames: list) -> None:  # under the lock
        self._outbox.append(frames)
        self._wake_out.send(b"")

    def close(self) -> None:
        self._closing = True
        with self._lock:
            self._wake_out.send(b"")
        self._thread.join(2)
        for s in (self._sock, self._wake_in, self._wake_out):
            s.close(0)
        self._ctx.term()

    # -- the I/O thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_in, zmq.POLLIN)
        while not self._closing:
            events = dict(poller.poll(100))
            if self._wake_in in events:
                while True:
                    try:
                        self._wake_in.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                with self._lock:
                    out, self._outbox = self._outbox, []
                for frames in out:
                    self.bytes_sent += sum(len(f) for f in frames)
                    self._sock.send_multipart(frames, copy=False)
            if self._sock in events:
                while True:
                    try:
                        frames = self._sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._receive(frames)
            self._watch()

    def _receive(self, frames: list[bytes]) -> None:
        self._last_heard = time.monotonic()
        self.bytes_received += sum(len(f) for f in frames)
        if is_refusal(frames):
            self._fail_all(AuthenticationError(f"the engine at {self.address} refused the token; copy the token from the "
                                               "server's `connect:` line (or its --token-file)"))
            return
        try:
            head, body = unpack(self.key, frames)
        except BadMessage as exc:
            log.warning("dropped a message from %s: %s", self.address, exc)
            return
        with self._lock:
            pending = self._pending.get(head.get("id"))
        if pending is None:
            return  # a ping's answer, a notification's, or an abandoned call's
        if head.get("progress"):
            if pending.progress is not None:
                try:
                    pending.progress(body)
                except Exception:  # noqa: BLE001 - a progress listener's bug must not stop the link
                    log.exception("progress callback failed")
            return
        with self._lock:
            self._pending.pop(head["id"], None)
        pending.body = body
        pending.done.set()

    def _watch(self) -> None:
        with self._lock:
            waiting = bool(self._pending)
        if not waiting or self.gone:
            return
        now = time.monotonic()
        silent = now - self._last_heard
        if silent > GONE_AFTER_S:
            self._mark_gone(f"the engine at {self.address} stopped answering ({silent:.0f} s without a word); "
                            "what you see is kept: reconnect once the server runs again")
        elif silent > PING_AFTER_S and now - self._last_ping > PING_AFTER_S:
            self._last_ping = now
            frames = pack(self.key, {"id": 0, "op": "ping"}, None)
            self.bytes_sent += sum(len(f) for f in frames)
            self._sock.send_multipart(frames, copy=False)

    def _mark_gone(self, why: str) -> None:
        if self.gone is None:
            self.gone = why
            log.warning("%s", why)
        self._fail_all(EngineGone(self.gone))

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            p.error = exc
            p.done.set()
