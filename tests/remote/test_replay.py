"""Replay protection: a signed message captured on the wire and sent again runs nothing (from another connection
or injected into the same one), a replayed hello starts no session, a replayed answer is dropped by the client,
and a client from before protocol 3 is told to upgrade."""

from __future__ import annotations

import zmq

from engine.remote import PROTOCOL_VERSION
from engine.remote.protocol import Prepared, replay_refused_id, unpack


def _capture(conn, op_wanted):  # noqa: ANN001, ANN202
    """Record the frames of every request `conn` sends whose op is `op_wanted` (as they crossed: stamped, signed)."""
    seen: list[list[bytes]] = []
    real = conn._send

    def send(message):  # noqa: ANN001, ANN202
        real(message)
        frames = [bytes(f) for f in conn._outbox[-1]]
        head, body = unpack(conn.key, frames)
        if head["op"] == op_wanted:
            seen.append((frames, body))

    conn._send = send
    return seen


def _raw_send(address, frames, timeout_ms=10_000):  # noqa: ANN001, ANN202
    """Send frames from a connection of our own (what someone who captured them could do); -> the answer."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    try:
        sock.connect(f"tcp://{address}")
        sock.send_multipart(frames)
        return sock.recv_multipart()
    finally:
        sock.close(0)
        ctx.term()


def _server_length(session) -> int:  # noqa: ANN001
    session._do("trace")  # the server answers its trace as it is now
    return len(session.ids)


def test_a_captured_step_sent_again_is_refused_and_nothing_runs(eng, server):
    model = eng.load_model("tiny-gpt")
    session = eng.Session(model, "In the beginning")
    captured = _capture(eng.conn, "session")
    session.step()
    steps = [f for f, body in captured if body["method"] == "step"]
    assert len(steps) == 1
    n = _server_length(session)

    # from another connection (someone on the wire): refused, naming the request, and nothing ran
    answer = _raw_send(server.address, steps[0])
    refused_id = replay_refused_id(answer)
    assert refused_id is not False and refused_id == unpack(eng.conn.key, steps[0])[0]["id"]
    assert _server_length(session) == n

    # injected into the client's own connection (the same ZeroMQ identity): its number is not new; refused
    with eng.conn._lock:
        eng.conn._outbox.append(steps[0])
        eng.conn._wake_out.send(b"")
    assert _server_length(session) == n
    assert len(session.history) == 1
    log = server.log()
    assert "refused session from" in log and "replayed or out of order" in log and "nothing ran" in log
    assert "another connection's session" in log
    # the connection goes on working
    session.step()
    assert _server_length(session) == n + 1


def test_a_replayed_hello_starts_nothing(server, monkeypatch):
    from engine.remote import connect
    from engine.remote.connection import Connection

    hellos: list[list[bytes]] = []
    real = Connection._send

    def send(self, message):  # noqa: ANN001, ANN202
        real(self, message)
        frames = [bytes(f) for f in self._outbox[-1]]
        if unpack(self.key, frames)[0]["op"] == "hello":
            hellos.append(frames)

    monkeypatch.setattr(Connection, "_send", send)
    connect(server.address, token=server.token).close()
    assert len(hellos) == 1
    answer = _raw_send(server.address, hellos[0])
    assert replay_refused_id(answer) is not False
    assert "a hello naming no challenge issued and unused" in server.log()


def test_the_client_drops_an_answer_replayed_to_it(eng):
    conn = eng.conn
    answers: list[list[bytes]] = []
    real = conn._receive

    def receive(frames):  # noqa: ANN001, ANN202
        answers.append([bytes(f) for f in frames])
        real(frames)

    conn._receive = receive
    assert conn.call("ping") == "pong"
    conn._receive = real
    old = answers[-1]
    rid = unpack(conn.key, old)[0]["id"]
    from engine.remote.connection import _Pending

    pending = _Pending(None)
    with conn._lock:
        conn._pending[rid] = pending  # as if that id were waiting again
    conn._receive(old)  # the same answer again: its number is not new
    assert not pending.done.is_set()
    with conn._lock:
        conn._pending.pop(rid, None)
    assert conn.call("ping") == "pong"


def test_a_client_before_protocol_3_is_told_to_upgrade(server):
    key = server.token.encode()
    hello = Prepared(key, {"id": 1, "op": "hello"}, {"protocol": 2, "app_version": "0.1.0"}).unstamped()
    answer = _raw_send(server.address, hello)
    head, body = unpack(key, answer)  # signed, without a stamp: what such a client reads
    assert head["sid"] is None
    assert "version mismatch" in body["error"]["message"] and f"protocol {PROTOCOL_VERSION}" in body["error"]["message"]
    assert "upgrade the client" in body["error"]["message"]
