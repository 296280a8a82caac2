"""The engine server: models and sessions on this machine's devices, answered over a signed ZeroMQ socket.

One thread owns the socket (receives, verifies, answers the handshake, pings, cancels and lazy logit rows
at once); one engine thread runs everything that touches a model, in order (models and sessions are not
thread-safe). Its answers come back to the socket thread over an in-process pipe, so the socket is only
ever used by one thread, as ZeroMQ requires.

Replay protection: a client first asks for a challenge (a random nonce the server issues once, with no
other effect); its hello names that nonce, which becomes the connection's session id, bound to the
connection it came on. From then on every message either side sends is stamped with the session id and a
sequence number one higher than its last (signed with the rest); the server refuses and logs a message of
an unknown session, from another connection, or not newer than the last it took, so a captured request
sent again runs nothing. Replies are stamped here, in the socket thread, at the moment they are sent, so
their numbers go out in order whichever thread made them.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import os
import platform
import queue
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from ..errors import Cancelled, CaptureError, CheckpointError, EngineError, LoadCancelled, SessionError
from ..local import LocalEngine
from ..session import expert_gates, live_events, stop_token_ids
from .delta import MIRROR_LIMIT, TraceSender
from .pattern_answers import PatternThread, stale
from .protocol import PROTOCOL_VERSION, REFUSED, BadMessage, Prepared, error_body, replay_refusal, unpack

log = logging.getLogger(__name__)

TRACES_KEPT = 64  # traces an analysis may still name (they share their blocks: cheap)
SESSION_METHODS = frozenset({"step", "back", "branch", "mask", "set_sampling", "recompute", "replay", "trace", "distribution",
                             "reply"})
TOKENIZER_METHODS = frozenset({"encode", "decode", "token_strings", "render_chat", "apply_chat_template", "display"})
ANALYSES = frozenset({"logit_lens", "head_statistics", "induction_scores", "inside_head", "attribute", "nearest_tokens",
                      "positions_view", "mlp_neurons", "expert_neurons", "residual_stream"})
MODEL_METHODS = frozenset({"set_head_gate", "clear_gates", "gates", "set_neuron_gate", "clear_neuron_gates", "neuron_gates",
                           "stop_token_ids", "end_of_turn_ids", "set_expert_gate", "clear_expert_gates", "expert_gates"})
EXPERT_METHODS = frozenset({"set_expert_gate", "clear_expert_gates", "expert_gates"})
FAST_OPS = frozenset({"hello", "ping", "cancel", "logits"})
CHALLENGE_TTL_S = 60.0  # a hello must name a challenge issued this recently
CHALLENGES_KEPT = 256  # challenges asked for but not yet used (a flood of them drops the oldest)
LINKS_KEPT = 256  # connections' sessions remembered (a newer handshake drops the oldest)
PARTIAL_WHEN_CANCELLED = frozenset({"patch_sweep"})  # a cancelled one answers what it computed (nothing yet), as in-process


class Link:
    """One handshaken connection: its ZeroMQ identity, the last sequence number it sent, the last one sent to it."""

    __slots__ = ("ident", "last_in", "last_out")

    def __init__(self, ident: bytes) -> None:
        self.ident, self.last_in, self.last_out = ident, 1, 0


def base_version(version: str) -> str:
    """"0.1.0 (not installed)" -> "0.1.0": a checkout and its installed wheel speak alike."""
    return version.split(" ")[0]


class EngineServer:
    def __init__(self, token: str, bind: str = "127.0.0.1", port: int = 0, models_dirs: tuple[Path, ...] = (),
                 device: str | None = None, trust_remote_code: bool = False, ipc_path: Path | None = None,
                 mirror_limit: int | None = MIRROR_LIMIT) -> None:
        import uuid

        from ..about import app_version

        self.device = device  # where a load that names no device goes ("auto": over the GPUs, then the CPU)
        self.key = token.encode("utf-8")
        self.trust_remote_code = bool(trust_remote_code)  # run a checkpoint's own code (auto_map) when a client asks
        self.models_dirs = tuple(Path(d).expanduser().resolve() for d in models_dirs)
        self.app_version = app_version()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if ipc_path is not None:  # a unix socket (its folder private: see cli.private_socket_path), no TCP port
            self.sock.bind(f"ipc://{ipc_path}")
            os.chmod(ipc_path, 0o600)
            self.port = None
            self.endpoint = f"ipc://{ipc_path}"
        else:
            self.port = self.sock.bind_to_random_port(f"tcp://{bind}") if not port else port
            if port:
                self.sock.bind(f"tcp://{bind}:{port}")
            self.endpoint = f"{bind}:{self.port}"
        self.bind = bind
        self._inbox: queue.Queue = queue.Queue()
        self._pipe_name = f"inproc://engine-replies-{id(self)}"
        self._replies = self.ctx.socket(zmq.PULL)
        self._replies.bind(self._pipe_name)
        self._outbox: queue.Queue = queue.Queue()  # (ident, session id, Prepared) from the engine thread
        self._challenges: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._links: collections.OrderedDict[str, Link] = collections.OrderedDict()
        self._cancels: dict[int, threading.Event] = {}
        self._stopping = threading.Event()
        self.local = LocalEngine()
        ids = itertools.count(1)
        self._next = lambda: next(ids)
        self.models: dict[int, Any] = {}
        self.sessions: dict[int, tuple[Any, TraceSender]] = {}
        self.senders: dict[int, TraceSender] = {}  # sender id -> its state (lazy logit rows)
        self.traces: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self.owners: dict[int, str | None] = {}  # model / session handle -> the client id that opened it
        self._engine_thread = threading.Thread(target=self._engine_loop, name="engine", daemon=True)
        self.instance = uuid.uuid4().hex  # a restarted server numbers its traces anew: a client's old ids must not match
        self.mirror_limit = mirror_limit  # bytes of a trace's record mirrored to a client; past it, kept here
        self._patterns = PatternThread(self.ctx, self._pipe_name, self.key, self._pattern_trace, self._post)

    # -- socket thread -------------------------------------------------------------------------
    def serve_forever(self) -> None:
        self._engine_thread.start()
        self._patterns.start()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._replies, zmq.POLLIN)
        while not self._stopping.is_set():
            events = dict(poller.poll(250))
            if self._replies in events:
                while True:
                    try:
                        self._replies.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                while True:
                    try:
                        self._send(*self._outbox.get_nowait())
                    except queue.Empty:
                        break
            if self.sock in events:
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._receive(frames)
        self._inbox.put(None)
        self._engine_thread.join(5)
        self._patterns.stop()
        self.sock.close(0)
        self._replies.close(0)
        self.ctx.term()

    def stop(self) -> None:
        self._stopping.set()

    def _send(self, ident: bytes, sid: str, message: Prepared) -> None:
        """Stamp (the link's next sequence number) and send; socket thread only."""
        link = self._links.get(sid)
        if link is None or link.ident != ident:
            log.debug("an answer for a connection no longer known was dropped")
            return
        link.last_out += 1
        self.sock.send_multipart([ident, *message.stamp(sid, link.last_out)])

    def _receive(self, frames: list) -> None:
        ident = frames[0].bytes
        try:
            head, body = unpack(self.key, [f.bytes for f in frames[1:]])
        except BadMessage as exc:
            peer = _peer(frames[-1])
            # never the token, never the signature: only that it did not match
            log.warning("refused a message from %s: %s (a client with the wrong token?)", peer, exc)
            self.sock.send_multipart([ident, *REFUSED])
            return
        rid, op, sid, seq = head.get("id"), head.get("op"), head["sid"], head["seq"]
        if sid is None:  # a client before protocol 3: tell it to upgrade, in the frames it reads
            log.warning("refused a message from %s without a session stamp (a client older than protocol 3)",
                        _peer(frames[-1]))
            if op == "hello" and (body or {}).get("protocol") != PROTOCOL_VERSION:
                try:
                    self._op_hello(body or {})
                except EngineError as exc:
                    self.sock.send_multipart([ident, *Prepared(self.key, {"id": rid}, {"error": error_body(exc)}).unstamped()])
                    return
            self.sock.send_multipart([ident, *REFUSED])
            return
        if op == "challenge" and sid == "":
            self._answer_challenge(ident, rid, body or {})
            return
        if not self._admit(ident, rid, op, sid, seq, frames[-1]):
            return
        if op in FAST_OPS:
            try:
                result = getattr(self, f"_op_{op}")(body or {})
                self._send(ident, sid, Prepared(self.key, {"id": rid}, {"ok": result}))
            except Exception as exc:  # noqa: BLE001 - a bad request is an answer, never a dead server
                self._send(ident, sid, Prepared(self.key, {"id": rid}, {"error": error_body(exc)}))
            return
        if op == "patterns":  # what a client draws of a trace kept here: beside the engine thread
            self._patterns.put(ident, sid, rid, body or {})
            return
        self._cancels[rid] = threading.Event()
        body = dict(body or {})
        body["_client"] = head.get("client")  # who asked: what it opens is its own (see _do_forget)
        self._inbox.put((ident, sid, rid, op, body))

    def _answer_challenge(self, ident: bytes, rid: Any, body: dict) -> None:
        """A fresh nonce for the hello to name (issued once; it has no other effect, so a replayed challenge
        request does nothing), with the client's own nonce echoed so it knows the answer is not a replay."""
        now = time.monotonic()
        while self._challenges and (len(self._challenges) >= CHALLENGES_KEPT
                                    or now - next(iter(self._challenges.values())) > CHALLENGE_TTL_S):
            self._challenges.popitem(last=False)
        challenge = secrets.token_hex(16)
        self._challenges[challenge] = now
        answer = Prepared(self.key, {"id": rid}, {"ok": {"challenge": challenge, "nonce": str(body.get("nonce", ""))}})
        self.sock.send_multipart([ident, *answer.stamp("", 0)])

    def _admit(self, ident: bytes, rid: Any, op: Any, sid: str, seq: int, last_frame: Any) -> bool:
        """Whether a signed message is new: a hello naming an unused challenge (starting the session), or a
        message of a known session, from its connection, numbered above the last. Else refused and logged."""
        if op == "hello":
            issued = self._challenges.pop(sid, None)
            if issued is not None and time.monotonic() - issued <= CHALLENGE_TTL_S and seq == 1:
                while len(self._links) >= LINKS_KEPT:
                    self._links.popitem(last=False)
                self._links[sid] = Link(ident)
                return True
            why = "a hello naming no challenge issued and unused (a replayed hello?)"
        else:
            link = self._links.get(sid)
            if link is None:
                why = "a message of no session this server knows (replayed from an earlier connection?)"
            elif link.ident != ident:
                why = "a message of another connection's session (replayed?)"
            elif seq <= link.last_in:
                why = f"message {seq} after {link.last_in} (replayed or out of order)"
            else:
                link.last_in = seq
                return True
        log.warning("refused %s from %s: %s; nothing ran", op if isinstance(op, str) else "a message", _peer(last_frame),
                    why)
        self.sock.send_multipart([ident, *replay_refusal(rid)])
        return False

    def _op_hello(self, body: dict) -> dict:
        theirs, their_app = body.get("protocol"), str(body.get("app_version", "?"))
        if theirs != PROTOCOL_VERSION or base_version(their_app) != base_version(self.app_version):
            newer = "server" if (theirs or 0, base_version(their_app)) < (PROTOCOL_VERSION, base_version(self.app_version)) \
                else "client"
            older = "client" if newer == "server" else "server"
            raise EngineError(
                f"version mismatch: the server runs attention-inspector {self.app_version} (protocol {PROTOCOL_VERSION}), "
                f"the client {their_app} (protocol {theirs}); upgrade the {older} to match the {newer} "
                f"(pip install -U attention-inspector where the {older} runs)")
        if body.get("client"):  # a client that shakes hands again restores what it holds: drop the old copies
            self._inbox.put((None, None, None, "forget", {"_client": body["client"]}))
        return {"protocol": PROTOCOL_VERSION, "app_version": self.app_version, **self._info()}

    def _info(self) -> dict:
        from ..about import engine_versions
        from .protocol import CAPABILITIES

        info = {"host": platform.node(), "capabilities": list(CAPABILITIES), **engine_versions(),
                "models_dirs": [str(d) for d in self.models_dirs], "load_device": self.device or "default",
                "trust_remote_code": self.trust_remote_code, "instance": self.instance, "mirror_limit": self.mirror_limit}
        try:
            import torch

            info["torch_threads"] = torch.get_num_threads()  # CPU results depend on it (reduction order)
            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                info["gpu_memory"] = f"{free / 1e9:.1f} of {total / 1e9:.1f} GB free"
                if torch.cuda.device_count() > 1:
                    info["gpu_memory"] += f" on cuda:0, {torch.cuda.device_count()} GPUs"
        except Exception as exc:  # noqa: BLE001 - the memory figure is a nicety
            log.debug("no GPU memory figure: %s", exc)
        return info

    def _op_ping(self, body: dict) -> str:
        return "pong"

    def _op_cancel(self, body: dict) -> bool:
        event = self._cancels.get(body.get("request"))
        if event is not None:
            event.set()
        return event is not None

    def _op_logits(self, body: dict) -> Any:
        sender = self.senders.get(body["sender"])
        if sender is None:
            raise SessionError("that trace is no longer held by the server; step again")
        return sender.logit_rows_of(int(body["serial"]), int(body["start"]), int(body["stop"]))

    # -- engine thread -------------------------------------------------------------------------
    def _engine_loop(self) -> None:
        out = self.ctx.socket(zmq.PUSH)
        out.connect(self._pipe_name)
        try:
            while True:
                item = self._inbox.get()
                if item is None:
                    return
                ident, sid, rid, op, body = item
                if ident is None:  # housekeeping, nobody waits for it
                    self._do_forget(body, None, None)
                    continue
                cancel = self._cancels.get(rid)
                try:
                    if cancel is not None and cancel.is_set() and op not in PARTIAL_WHEN_CANCELLED:
                        raise (LoadCancelled if op == "load" else Cancelled)("cancelled before it started")
                    handler = getattr(self, f"_do_{op}", None)
                    if handler is None:
                        raise EngineError(f"the server has no operation {op!r} (a newer client?)")
                    reply = {"ok": handler(body, lambda p, i=ident, s=sid, r=rid: self._post(
                        out, i, s, Prepared(self.key, {"id": r, "progress": True}, p)), cancel)}
                except Exception as exc:  # noqa: BLE001 - every failure is an answer; the server lives on
                    if not isinstance(exc, EngineError):
                        log.exception("%s failed", op)
                    reply = {"error": error_body(exc)}
                finally:
                    self._cancels.pop(rid, None)
                try:
                    self._post(out, ident, sid, Prepared(self.key, {"id": rid}, reply))
                except TypeError as exc:  # something in the answer cannot cross: say so instead
                    log.exception("cannot send the answer to %s", op)
                    self._post(out, ident, sid, Prepared(self.key, {"id": rid}, {"error": error_body(exc)}))
        finally:
            out.close(0)

    def _post(self, wake: Any, ident: bytes, sid: str, message: Prepared) -> None:
        """Hand an answer (encoded and mostly signed here, in the engine thread) to the socket thread to send."""
        self._outbox.put((ident, sid, message))
        wake.send(b"")

    def _remember(self, trace: Any) -> int:
        tid = self._next()
        self.traces[tid] = trace
        while len(self.traces) > TRACES_KEPT:
            self.traces.popitem(last=False)
        return tid

    def _sender(self, body: dict) -> TraceSender:
        """A trace sender with the client's mirror limit if it asked for one, else the server's."""
        return TraceSender(body["mirror_limit"] if "mirror_limit" in body else self.mirror_limit)

    def _pattern_trace(self, body: dict) -> Any:
        if body.get("instance") != self.instance:
            raise stale(body.get("instance"))
        return self._trace(int(body["tid"]))

    def _trace_answer(self, trace: Any, sender: TraceSender, sid: int) -> dict:
        return {"tid": self._remember(trace), "sender": sid, "delta": sender.delta(trace)}

    def _model(self, handle: int) -> Any:
        model = self.models.get(handle)
        if model is None:
            raise EngineError("that model is no longer open on the server; open it again")
        return model

    def _session(self, handle: int) -> tuple[Any, TraceSender]:
        found = self.sessions.get(handle)
        if found is None:
            raise SessionError("that session is no longer on the server; start it again")
        return found

    def _do_info(self, body: dict, progress, cancel) -> dict:  # noqa: ANN001
        return {**self._info(), "open_models": len(self.models), "open_sessions": len(self.sessions)}

    def _do_listing(self, body: dict, progress, cancel) -> Any:  # noqa: ANN001
        what = body["what"]
        if what == "folders":
            return [str(p) for d in self.models_dirs if d.is_dir() for p in sorted(d.iterdir()) if (p / "config.json").is_file()]
        if what not in ("bundled_models", "cached_models", "cached_model_infos", "available_devices"):
            raise EngineError(f"no listing called {what!r}")
        return getattr(self.local, what)()

    def _do_browse(self, body: dict, progress, cancel) -> list:  # noqa: ANN001
        from .folders import list_folders

        return list_folders(self.models_dirs, body.get("path"))

    def allowed_source(self, source: str) -> str:
        """Only the server's bundled models, its HF cache and folders under --models-dir are opened."""
        from ..checkpoints.resolve import bundled_models, hf_cache_snapshot

        if source in bundled_models():
            return source
        path = Path(source).expanduser()
        if path.is_absolute() or source.startswith((".", "~")) or path.exists():
            real = path.resolve()
            if any(real == d or d in real.parents for d in self.models_dirs):
                return str(real)
            where = ", ".join(str(d) for d in self.models_dirs) or "none: start the server with --models-dir FOLDER"
            raise CheckpointError(f"the server opens folders only under its --models-dir folders ({where}); "
                                  f"{source} is not under one")
        if hf_cache_snapshot(source) is None:
            raise CheckpointError(f"no model called {source!r} on the server: not bundled, not in its Hugging Face cache, "
                                  "and nothing is downloaded")
        return source

    def _do_describe_source(self, body: dict, progress, cancel) -> tuple:  # noqa: ANN001
        return self.local.describe_source(self.allowed_source(body["source"]))

    def refuse_checkpoint_code(self, source: str, asked: bool) -> None:
        """A client's trust_remote_code for a checkpoint whose config.json names its own code (auto_map) is refused
        unless this server was started with --trust-remote-code: the code would run here, on the server's account.
        (Without the client's consent the loader never runs it: it refuses, or opens the weights natively.)"""
        if self.trust_remote_code or not asked:
            return
        from ..checkpoints.resolve import resolve

        folder, _ = resolve(source)
        try:
            hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # the loader says what is wrong with it
        if isinstance(hf, dict) and hf.get("auto_map"):
            from ..hf_backend.support import remote_code_files

            files = remote_code_files(hf, folder) or []
            raise CheckpointError("the server does not run checkpoint code; start it with --trust-remote-code "
                                  f"(opening {folder.name} would run {', '.join(files) or 'its auto_map code'})")

    def _do_load(self, body: dict, progress, cancel) -> dict:  # noqa: ANN001
        source = self.allowed_source(body["source"])
        self.refuse_checkpoint_code(source, bool(body.get("trust_remote_code")))
        model = self.local.load_model(source, device=body.get("device") or self.device, dtype=body.get("dtype"),
                                      allow_pickle=bool(body.get("allow_pickle")), backend=str(body.get("backend") or "auto"),
                                      trust_remote_code=bool(body.get("trust_remote_code")) and self.trust_remote_code,
                                      progress=lambda f, m: progress({"fraction": float(f), "message": str(m)}),
                                      cancel=cancel)
        if body.get("capture_mode"):
            model.capture_mode = body["capture_mode"]
            _ = model.rebuilds_patterns  # checks the value now
        handle = self._next()
        self.models[handle] = model
        self.owners[handle] = body.get("_client")
        return {"handle": handle, "desc": describe_model(model)}

    def _do_free_model(self, body: dict, progress, cancel) -> None:  # noqa: ANN001
        self.models.pop(body["model"], None)
        self.owners.pop(body["model"], None)
        for h in [h for h, (s, _) in self.sessions.items() if s.model not in self.models.values()]:
            self._drop_session(h)

    def _drop_session(self, handle: int) -> None:
        session = self.sessions.pop(handle, None)
        self.owners.pop(handle, None)
        if session is not None:
            self.senders.pop(handle, None)

    def _do_forget(self, body: dict, progress, cancel) -> None:  # noqa: ANN001
        """A client connected again (after a dropped link): what it opened before goes; it restores its own."""
        client = body.get("_client")
        gone = [h for h, owner in self.owners.items() if owner == client]
        for h in gone:
            if h in self.sessions:
                self._drop_session(h)
            else:
                self.models.pop(h, None)
                self.owners.pop(h, None)
        if gone:
            log.info("a client reconnected: %d of its old models and sessions released", len(gone))

    def _do_free_session(self, body: dict, progress, cancel) -> None:  # noqa: ANN001
        self._drop_session(body["session"])

    def _do_model(self, body: dict, progress, cancel) -> Any:  # noqa: ANN001
        model, method = self._model(body["model"]), body["method"]
        if method not in MODEL_METHODS:
            raise EngineError(f"no model method {method!r} over the wire")
        if method == "stop_token_ids":
            return tuple(self.local.stop_token_ids(model))
        if method in EXPERT_METHODS and not hasattr(model, method):  # the native engine: no experts to gate
            if method == "set_expert_gate":
                raise CaptureError(f"{model.name} has no experts to ablate (expert ablation needs a mixture-of-experts "
                                   "model on the transformers backend)")
        else:
            getattr(model, method)(*body.get("args", ()))
        return gate_answer(model)

    def _do_tokenizer(self, body: dict, progress, cancel) -> Any:  # noqa: ANN001
        method = body["method"]
        if method not in TOKENIZER_METHODS:
            raise EngineError(f"no tokenizer method {method!r} over the wire")
        return getattr(self._model(body["model"]).tokenizer, method)(*body.get("args", ()), **body.get("kwargs", {}))

    def _do_run(self, body: dict, progress, cancel) -> dict:  # noqa: ANN001
        model = self._model(body["model"])
        trace = model.run(body.get("prompt"), source=body.get("source"))
        sid = self._one_off_sender(body)
        return self._trace_answer(trace, self.senders[sid], sid)

    def _one_off_sender(self, body: dict) -> int:
        """A one-off trace's sender (a run's, a patched run's), kept as long as analyses may name it."""
        sid = -self._next()
        self.senders[sid] = self._sender(body)
        runs = [k for k in self.senders if k < 0]
        for k in runs[:-TRACES_KEPT]:
            del self.senders[k]
        return sid

    def _do_session_new(self, body: dict, progress, cancel) -> dict:  # noqa: ANN001
        model = self._model(body["model"])
        kw = dict(body.get("kwargs", {}))
        history = body.get("history")
        session = self.local.Session(model, **kw, cancel=cancel)  # a cancel message stops its prefill between layers
        if "restore" in body:  # a session the client held across a server restart: the same ids, history replayed
            messages, chat_options = body["restore"]
            session.messages = tuple(messages) if messages is not None else None
            session.chat_options = dict(chat_options or {})
            session.replay(live_events([tuple(e) for e in history or ()]))
            session.history = [tuple(e) for e in history or ()]
        handle = self._next()
        sender = self._sender(body)
        self.sessions[handle] = (session, sender)
        self.owners[handle] = body.get("_client")
        self.senders[handle] = sender
        return {"handle": handle, "state": session_state(session, opening=True),
                **self._trace_answer(session.trace, sender, handle), **frontier_row(session, body)}

    def _do_session(self, body: dict, progress, cancel) -> dict:  # noqa: ANN001
        handle = body["session"]
        session, sender = self._session(handle)
        method = body["method"]
        if method not in SESSION_METHODS:
            raise EngineError(f"no session method {method!r} over the wire")
        known = int(body.get("history_known", 0))  # history events the client already holds
        if method == "trace":
            result = None
        elif method == "reply":
            result = session.reply
        elif method in ("step", "branch"):  # a cancel message stops its forward; the session stays as it was
            result = getattr(session, method)(*body.get("args", ()), **body.get("kwargs", {}), cancel=cancel)
        else:
            result = getattr(session, method)(*body.get("args", ()), **body.get("kwargs", {}))
        if method in ("step", "branch"):
            result = {"position": result.position, "token_id": result.token_id, "token": result.token, "how": result.how}
        answer = {"result": result, "state": session_state(session), "history": [list(e) for e in session.history[known:]]}
        if method in ("distribution", "reply", "set_sampling"):
            return answer
        answer.update(self._trace_answer(session.trace, sender, handle))
        if body.get("follow") and sender.on_server:  # what the client's views will ask of the new trace: now
            from .pattern_answers import newest_answers

            answer["followed"] = newest_answers(session.trace, body["follow"])
        return {**answer, **frontier_row(session, body)}

    def _trace(self, tid: int) -> Any:
        trace = self.traces.get(tid)
        if trace is None:
            raise SessionError(f"that trace is no longer held by the server (it keeps the latest {TRACES_KEPT}); "
                               "step or run again")
        return trace

    def _prompt_arg(self, value: Any) -> Any:
        """A patching prompt as the client sent it: {"trace": id} names a trace held here, else text or ids."""
        if isinstance(value, dict):
            return self._trace(value["trace"])
        return value

    def _do_analysis(self, body: dict, progress, cancel) -> Any:  # noqa: ANN001
        fn = body["fn"]
        if fn not in ANALYSES:
            raise EngineError(f"no analysis {fn!r} over the wire")
        model = self._model(body["model"])
        args = list(body.get("args", ()))
        if "trace" in body:
            args.insert(0, self._trace(body["trace"]))
        return getattr(self.local, fn)(model, *args, **body.get("kwargs", {}))

    def _do_patch(self, body: dict, progress, cancel) -> dict:  # noqa: ANN001
        """One patched run; with capture, its Trace comes as a one-off trace's delta (as a run's) and the
        PatchResult without it (a Trace is no record type: it crosses as blocks)."""
        model = self._model(body["model"])
        kw = dict(body.get("kwargs", {}))
        result = self.local.patch(model, self._prompt_arg(body["clean"]), self._prompt_arg(body["corrupt"]),
                                  body["component"], **kw)
        answer: dict[str, Any] = {"result": dataclasses.replace(result, trace=None)}
        if result.trace is not None:
            sid = self._one_off_sender(body)
            answer.update(self._trace_answer(result.trace, self.senders[sid], sid))
        return answer

    def _do_patch_sweep(self, body: dict, progress, cancel) -> Any:  # noqa: ANN001
        """The layer x head sweep; progress reports (done, total) after each forward; a cancel stops it
        between forwards (the partial result comes back, cancelled=True), as in-process."""
        model = self._model(body["model"])
        if body.get("cancelled") and cancel is not None:
            cancel.set()
        return self.local.patch_sweep(model, self._prompt_arg(body["clean"]), self._prompt_arg(body["corrupt"]),
                                      *body.get("args", ()), progress=lambda done, total: progress([done, total]),
                                      cancel=cancel, **body.get("kwargs", {}))


def frontier_row(session: Any, body: dict) -> dict:
    """{"row": (position, logits)} where the next choice is made, when the client asked for it with its
    request (a window re-colours candidates from the whole row; sending it now saves a round trip)."""
    if not body.get("with_row") or session.trace.logit_rows is None:
        return {}
    trace = session.trace
    if session.family == "encoder":
        mask = session.model.config.mask_token_id
        position = next((i for i, t in enumerate(trace.token_ids) if t == mask), 0)
    else:
        position = len(trace) - 1
    return {"row": (position, trace.logits_at(position))}


def session_state(session: Any, opening: bool = False) -> dict:
    """What a client mirrors of a session besides its trace: small, with every answer; what never changes
    (the prompt and source ids, the chat, the stop ids) only when the session opens, so a step's answer does
    not grow with a long prompt."""
    s = session.settings
    state = {"finished": bool(session.finished),
             "settings": {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "greedy": s.greedy,
                          "seed": s.seed}}
    if opening:
        state.update({
            "n_prompt": getattr(session, "n_prompt", len(session.ids)), "prompt_ids": list(session.prompt_ids),
            "source_ids": list(session.source_ids) if session.source_ids else None,
            "messages": [dict(m) for m in session.messages] if session.messages is not None else None,
            "chat_options": dict(session.chat_options), "stop_ids": tuple(session.stop_ids)})
    return state


def gate_answer(model: Any) -> dict:
    """Every gate of the model now: the answer to each gate change."""
    return {"gates": model.gates(), "neuron_gates": model.neuron_gates(), "expert_gates": expert_gates(model)}


def describe_model(model: Any) -> dict:
    """Everything a client model answers without asking the server again (the vocabulary's display
    strings once: a panel labels candidates with them)."""
    cfg, tok = model.config, model.tokenizer
    return {
        "name": model.name, "folder": str(model.folder) if model.folder else None, "family": model.family,
        "kinds": tuple(model.kinds), "layers_by_kind": dict(model.layers_by_kind), "n_heads": model.n_heads,
        "n_layers": model.n_layers, "n_params": int(model.n_params), "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""), "load_seconds": float(model.load_seconds or 0.0),
        "max_positions": model.max_positions, "has_logits": bool(model.has_logits), "no_logits_reason": model.no_logits_reason,
        "dtype_reason": str(getattr(model, "dtype_reason", "") or ""), "rebuilds_patterns": bool(model.rebuilds_patterns),
        "backend": str(getattr(model, "backend", "native")), "placement": str(model.placement),
        "devices": [str(d) for d in getattr(model, "devices", (model.device,))],
        "config": {"vocab_size": cfg.vocab_size, "mask_token_id": cfg.mask_token_id, "model_type": cfg.model_type,
                   "eos_token_ids": tuple(cfg.eos_token_ids), "n_kv_heads": cfg.n_kv_heads, "family": cfg.family},
        "tokenizer": {"vocab": [tok.display(i) for i in range(cfg.vocab_size)],
                      "special_ids": sorted(int(i) for i in tok.special_ids),
                      "has_chat_template": bool(tok.has_chat_template), "end_of_turn_ids": tuple(tok.end_of_turn_ids())},
        "gates": model.gates(),
        "neuron_gates": model.neuron_gates(),
        "expert_gates": expert_gates(model),
        "moe_layers": list(getattr(model, "moe_layers", ())), "n_experts": getattr(model, "n_experts", None),
        "quantization": str(getattr(model, "quantization", "") or ""),
        "stop_ids": tuple(stop_token_ids(model)) if model.family != "encoder" else (),
    }


def _peer(frame: Any) -> str:
    try:
        return frame.get("Peer-Address") or "an unknown peer"
    except (zmq.ZMQError, AttributeError, TypeError):
        return "an unknown peer"
