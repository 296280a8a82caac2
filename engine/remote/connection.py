"""The client's end of the wire: one socket, one I/O thread, any number of calling threads.

ZeroMQ sockets belong to one thread, and the GUI asks from several (the engine worker steps while the
window fetches a logits row), so a thread of its own owns the socket: callers hand it signed requests and
wait for their answer by request id. Liveness is ZeroMQ's own: ZMTP heartbeats, answered by the server's
libzmq I/O thread (no Python, no GIL: a server busy loading a model still answers), and a socket monitor
that reports the TCP connection closing. A server killed or crashed closes it at once; a link that died
silently misses its heartbeats. Either way every waiting call fails with EngineGone at once, and so does
every later call, until reconnect().

Replay protection (see server.py): open() asks for a challenge, and the hello names it; from then on each
request is stamped with that session id and the next sequence number, assigned under the lock that queues it
(so numbers leave in order, whichever thread asked), and an answer is taken only when it carries this
session's id and a number above the last one taken.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .protocol import (
    AuthenticationError,
    BadMessage,
    EngineGone,
    Prepared,
    RemoteEngineError,
    is_refusal,
    raise_error,
    replay_refused_id,
    unpack,
)

log = logging.getLogger(__name__)

HEARTBEAT_MS = 1000  # ZMTP PING this often
HEARTBEAT_TIMEOUT_MS = 10_000  # no traffic at all for this long: libzmq drops the connection
CONNECT_TIMEOUT_S = 15.0  # a server busy loading may take a while to shake hands


def endpoint(address: str) -> str:
    """"HOST:PORT" -> tcp://HOST:PORT; "ipc:///path/to/socket" (a server's --ipc) as it is."""
    return address if address.startswith("ipc://") else f"tcp://{address}"


class _Pending:
    def __init__(self, progress: Callable[[Any], None] | None) -> None:
        self.done = threading.Event()
        self.body: Any = None
        self.error: BaseException | None = None
        self.progress = progress


class Connection:
    def __init__(self, address: str, token: str, client_id: str = "") -> None:
        self.address = address
        self.client_id = client_id  # one per RemoteEngine, the same across reconnects
        self.key = token.encode("utf-8")
        self.gone: str | None = None  # why, once the engine went away
        self.bytes_sent = 0
        self.bytes_received = 0
        self._ids = itertools.count(1)
        self.session = ""  # the server's challenge, once the hello named it (see open())
        self._seq_out = 0  # the last sequence number stamped on a request (under _lock)
        self._seq_in = 0  # the last one taken from an answer (I/O thread)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._connected = False
        self._sock.connect(endpoint(address))
        self._wake_name = f"inproc://wake-{id(self)}"
        self._wake_in = self._ctx.socket(zmq.PAIR)
        self._wake_in.bind(self._wake_name)
        self._wake_out = self._ctx.socket(zmq.PAIR)
        self._wake_out.connect(self._wake_name)
        self._outbox: list[list] = []
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=f"engine-link-{address}", daemon=True)
        self._thread.start()

    # -- calling threads -------------------------------------------------------------------------
    def open(self, hello: dict, timeout: float) -> Any:
        """The handshake: ask for a challenge (our nonce echoed proves the answer is fresh), then send `hello`
        as the session's first message. Returns the hello's answer."""
        nonce = secrets.token_hex(16)
        answer = self.call("challenge", {"nonce": nonce}, timeout=timeout)
        if not isinstance(answer, dict) or answer.get("nonce") != nonce or not answer.get("challenge"):
            raise BadMessage("the server's challenge did not answer this connection's (a replayed answer?)")
        with self._lock:
            self.session, self._seq_out = str(answer["challenge"]), 0
        return self.call("hello", hello, timeout=timeout)

    def call(self, op: str, body: Any = None, progress: Callable[[Any], None] | None = None, cancel: Any = None,
             timeout: float | None = None) -> Any:
        """Send `op` and wait for its answer (re-raising the server's engine errors as the same classes).
        `cancel` (a threading.Event or a callable) asks the server to stop the request; `progress(body)` gets
        the server's progress reports, in this thread's stead (from the I/O thread)."""
        if self.gone:
            raise EngineGone(self.gone)
        rid = next(self._ids)
        pending = _Pending(progress)
        message = Prepared(self.key, {"id": rid, "op": op, "client": self.client_id}, body)
        with self._lock:
            self._pending[rid] = pending
            self._send(message)
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
        message = Prepared(self.key, {"id": rid, "op": op}, body)
        with self._lock:
            self._send(message)

    def _send(self, message: Prepared) -> None:  # under the lock: numbers are taken in the order they are queued
        if self.session:
            self._seq_out += 1
            self._outbox.append(message.stamp(self.session, self._seq_out))
        else:  # only the challenge goes before there is a session
            self._outbox.append(message.stamp("", 0))
        self._wake_out.send(b"")

    def close(self) -> None:
        self._closing = True
        with self._lock:
            self._wake_out.send(b"")
        self._thread.join(2)
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        for s in (self._monitor, self._sock, self._wake_in, self._wake_out):
            s.close(0)
        self._ctx.term()

    # -- the I/O thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_in, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
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
            if self._monitor in events:
                self._on_monitor()

    def _on_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_CONNECTED:
                self._connected = True
            elif event["event"] == zmq.EVENT_DISCONNECTED and self._connected:
                self._mark_gone(f"the engine at {self.address} went away (the server stopped or crashed, or the "
                                "network dropped); what you see is kept: reconnect once the server runs again")

    def _receive(self, frames: list[bytes]) -> None:
        self.bytes_received += sum(len(f) for f in frames)
        if is_refusal(frames):
            self._fail_all(AuthenticationError(
                f"the engine at {self.address} refused the token; copy the token from the server's `connect:` line (or "
                "its --token-file); or the server runs an attention-inspector older than this client (protocol < 3)"))
            return
        refused = replay_refused_id(frames)
        if refused is not False:
            with self._lock:
                pending = self._pending.pop(refused, None) if refused is not None else None
            log.warning("the engine at %s refused request %s as replayed or out of order", self.address, refused)
            if pending is not None:
                pending.error = RemoteEngineError(f"the engine at {self.address} refused a request as replayed or out of "
                                                  "order; reconnect")
                pending.done.set()
            return
        try:
            head, body = unpack(self.key, frames)
        except BadMessage as exc:
            log.warning("dropped a message from %s: %s", self.address, exc)
            return
        fresh = (head["sid"] == self.session and head["seq"] > self._seq_in) if self.session \
            else (head["sid"] == "" and head["seq"] == 0)  # the challenge's answer (its nonce is checked in open())
        if not fresh:
            log.warning("dropped a message from %s: %s (replayed or out of order)", self.address,
                        f"session {str(head['sid'])[:8]}…, number {head['seq']} after {self._seq_in}")
            return
        if self.session:
            self._seq_in = head["seq"]
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
