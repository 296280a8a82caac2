"""The wire format of the remote engine: signed multipart ZeroMQ messages, as Jupyter's kernels use.

A message is the frames [signature, header, buffer 0, buffer 1, ..., stamp]. The header is UTF-8 JSON; every
numpy array in the body is replaced by {"$nd": i} and sent as raw bytes in buffer i (dtype and shape in
the header), so a 10 MB pattern costs one copy, not a text encoding. The signature is the hex HMAC-SHA256
of every frame after it, keyed with the connection token; a message whose signature does not match is
refused before anything in it is parsed. The last frame is the stamp, {"sid": session id, "seq": n}: the
session id comes from the handshake (a challenge the server issues once, see server.py), and n grows by one
with every message each side sends, so a message captured on the wire and sent again is refused. Nothing
is ever unpickled: the body decodes only into plain values, numpy arrays and the few engine dataclasses
registered in DATACLASSES.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

import numpy as np

from ..errors import EngineError

log = logging.getLogger(__name__)

# bump whenever a message's meaning changes; the handshake refuses any other. 2: neuron gates, MLP neurons and
# patching; a gate change answers with every gate; the transformers backend's trace (expert routing records,
# experts per layer, layers without attention).
# 3: replay protection (a challenge before the hello; every message stamped with the connection's session id and
# a sequence number, both signed). 4: the mirror limit, patterns kept on the server ("patterns" requests, stub
# blocks, the server's instance); expert gates over the wire
PROTOCOL_VERSION = 4
CAPABILITIES = ("sessions", "mirror-traces", "lazy-logits", "explain", "analysis", "cancel-load", "gates",
                "neuron-gates", "mlp", "patching", "transformers-backend", "server-patterns")
ALLOWED_DTYPES = frozenset("bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64".split())


class RemoteEngineError(EngineError):
    """Something about the connection to a remote engine (not the model) went wrong."""


class EngineGone(RemoteEngineError):
    """The remote engine stopped answering (the server was stopped, crashed or the network dropped).
    What the client holds (models, sessions, the last traces) stays; `reconnect()` restores it."""


class AuthenticationError(RemoteEngineError):
    """The server refused the token."""


class ProtocolMismatch(RemoteEngineError):
    """Client and server speak different protocol versions."""


class BadMessage(RemoteEngineError):
    """A message that is not signed with the token, or does not decode."""


def _dataclasses() -> dict[str, type]:
    from ..analysis import HeadStat
    from ..checkpoints.resolve import CachedModel
    from ..explain import Attribution, InsideHead, LayerWrites, MlpNeurons, Neuron
    from ..patching import Component, PatchResult, SweepResult
    from ..rebuild import QueryBlock, ScoreRule
    from ..routing import ExpertNeurons, ExpertsInside, RoutingBlock
    from ..sampling import SamplingSettings
    from ..trace import PatternBlock, StepInfo

    return {c.__name__: c for c in (StepInfo, PatternBlock, QueryBlock, ScoreRule, RoutingBlock, HeadStat, InsideHead,
                                    Attribution, CachedModel, SamplingSettings, Neuron, LayerWrites, MlpNeurons,
                                    Component, PatchResult, SweepResult, ExpertNeurons, ExpertsInside)}


_REGISTRY: dict[str, type] | None = None


def registry() -> dict[str, type]:
    """The dataclasses a body may carry, by name (made on first use: engine.explain imports torch)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _dataclasses()
    return _REGISTRY


def encode(value: Any, buffers: list[np.ndarray]) -> Any:
    """A JSON-able form of `value`; arrays are appended to `buffers` and referenced by index."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.name not in ALLOWED_DTYPES:
            raise TypeError(f"arrays of dtype {value.dtype} do not cross the wire")
        buffers.append(value)
        return {"$nd": len(buffers) - 1}
    if isinstance(value, tuple):
        return {"$t": [encode(v, buffers) for v in value]}
    if isinstance(value, list):
        return [encode(v, buffers) for v in value]
    if isinstance(value, dict):
        return {"$d": [[encode(k, buffers), encode(v, buffers)] for k, v in value.items()]}
    if isinstance(value, PurePath):
        return {"$p": str(value)}
    if dataclasses.is_dataclass(value) and type(value).__name__ in registry():
        fields = {f.name: encode(getattr(value, f.name), buffers) for f in dataclasses.fields(value)
                  if f.init and not f.name.startswith("_")}
        return {"$dc": type(value).__name__, "f": fields}
    raise TypeError(f"{type(value).__name__} does not cross the wire (only plain values, arrays and engine records)")


def decode(value: Any, buffers: Sequence[np.ndarray]) -> Any:
    if isinstance(value, list):
        return [decode(v, buffers) for v in value]
    if not isinstance(value, dict):
        return value
    if "$nd" in value:
        return buffers[value["$nd"]]
    if "$t" in value:
        return tuple(decode(v, buffers) for v in value["$t"])
    if "$d" in value:
        return {_hashable(decode(k, buffers)): decode(v, buffers) for k, v in value["$d"]}
    if "$p" in value:
        from pathlib import Path

        return Path(value["$p"])
    if "$dc" in value:
        cls = registry().get(value["$dc"])
        if cls is None:
            raise BadMessage(f"unknown record type {value['$dc']!r}")
        return cls(**{k: decode(v, buffers) for k, v in value["f"].items()})
    raise BadMessage(f"undecodable object with keys {sorted(value)}")


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def sign(key: bytes, frames: Sequence[bytes | memoryview]) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for frame in frames:
        mac.update(frame)
    return mac.hexdigest().encode("ascii")


class Prepared:
    """A message encoded and signed up to its stamp: the expensive part (arrays hashed into the MAC) done in
    the thread that made it; stamp() adds the session id and sequence number and finishes the signature
    cheaply, in the one thread that sends (so sequence numbers go out in order)."""

    __slots__ = ("frames", "mac")

    def __init__(self, key: bytes, header: dict, body: Any = None) -> None:
        arrays: list[np.ndarray] = []
        payload = encode(body, arrays)
        arrays = [np.ascontiguousarray(a) for a in arrays]
        head = dict(header, body=payload, buffers=[[a.dtype.name, list(a.shape)] for a in arrays])
        self.frames = [json.dumps(head, separators=(",", ":")).encode("utf-8"),
                       *(memoryview(a).cast("B") if a.size else b"" for a in arrays)]
        self.mac = hmac.new(key, digestmod=hashlib.sha256)
        for frame in self.frames:
            self.mac.update(frame)

    def stamp(self, session: str, seq: int) -> list:
        """-> frames to send: [signature, header, buffers..., stamp]; the stamp {"sid", "seq"} is signed with the rest."""
        stamp = json.dumps({"sid": session, "seq": int(seq)}, separators=(",", ":")).encode("ascii")
        mac = self.mac.copy()
        mac.update(stamp)
        return [mac.hexdigest().encode("ascii"), *self.frames, stamp]

    def unstamped(self) -> list:
        """-> frames as protocol 2 and older sent them (only to tell such a client to upgrade)."""
        return [self.mac.hexdigest().encode("ascii"), *self.frames]


def pack(key: bytes, header: dict, body: Any = None, session: str = "", seq: int = 0) -> list:
    """header (plain JSON: id, op, ...) + body (anything encode() takes), stamped with the connection's session
    id and this message's sequence number -> frames to send."""
    return Prepared(key, header, body).stamp(session, seq)


def unpack(key: bytes, frames: Sequence[bytes]) -> tuple[dict, Any]:
    """Frames received -> (header, body); the stamp's "sid" and "seq" are put into the header (None for a
    message from a client older than protocol 3, which has no stamp). BadMessage when the signature does
    not match (checked in constant time, before anything is parsed) or the message is malformed."""
    if len(frames) < 2:
        raise BadMessage("a message has at least a signature and a header")
    signature, rest = bytes(frames[0]), list(frames[1:])
    if not hmac.compare_digest(signature, sign(key, rest)):
        raise BadMessage("the message's signature does not match the token")
    try:
        head = json.loads(bytes(rest[0]).decode("utf-8"))
        specs = head.pop("buffers")
        stamp: dict = {"sid": None, "seq": None}
        if len(rest) == len(specs) + 2:  # the stamp after the buffers (protocol 3 on)
            stamp = json.loads(bytes(rest.pop()).decode("ascii"))
            if not isinstance(stamp.get("sid"), str) or not isinstance(stamp.get("seq"), int):
                raise ValueError("a malformed stamp")
        head.update(sid=stamp["sid"], seq=stamp["seq"])
        if len(specs) != len(rest) - 1:
            raise ValueError(f"{len(specs)} buffers announced, {len(rest) - 1} sent")
        arrays = []
        for (dtype, shape), frame in zip(specs, rest[1:]):
            if dtype not in ALLOWED_DTYPES:
                raise ValueError(f"dtype {dtype} is not allowed")
            a = np.frombuffer(frame, dtype=np.dtype(dtype))
            arrays.append(a.reshape(shape))  # read-only: it views the frame
        body = decode(head.pop("body"), arrays)
    except BadMessage:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise BadMessage(f"a malformed message ({exc})") from exc
    return head, body


# A reply to a message whose signature did not match cannot be signed (the sender lacks the token, or
# the server does); it is this fixed, unsigned frame pair, and says nothing but that.
REFUSED = [b"", b'{"refused":"bad-signature"}']


def replay_refusal(request_id: Any) -> list:
    """The answer to a signed message the server has seen before, or one out of order, or of a session it does
    not know (nothing ran): unsigned, as it may go to whoever replayed it, naming only the request id."""
    rid = request_id if isinstance(request_id, int) else None
    return [b"", json.dumps({"refused": "replayed", "id": rid}).encode("ascii")]


def is_refusal(frames: Sequence[bytes]) -> bool:
    return len(frames) == 2 and bytes(frames[0]) == b"" and bytes(frames[1]) == REFUSED[1]


def replay_refused_id(frames: Sequence[bytes]) -> int | None | bool:
    """The request id a replay refusal names (None when it names none); False for any other message."""
    if len(frames) != 2 or bytes(frames[0]) != b"":
        return False
    try:
        answer = json.loads(bytes(frames[1]).decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(answer, dict) or answer.get("refused") != "replayed":
        return False
    rid = answer.get("id")
    return rid if isinstance(rid, int) else None


def error_body(exc: BaseException) -> dict:
    """An exception as a reply body: the class name (engine errors are re-raised as that class) and text."""
    return {"type": type(exc).__name__, "message": str(exc)}


def raise_error(body: dict) -> None:
    """Re-raise a server-side error on the client: engine error classes by name, else a RemoteEngineError."""
    from .. import errors

    name, message = body.get("type", ""), body.get("message", "")
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, EngineError)):
        cls = {"SessionFileError": _session_file_error()}.get(name)
    if cls is None:
        raise RemoteEngineError(f"the remote engine failed: {name}: {message}")
    raise cls(message)


def _session_file_error() -> type:
    from ..session_file import SessionFileError

    return SessionFileError
