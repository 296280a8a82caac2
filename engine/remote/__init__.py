"""The engine on another machine: `attention-inspector serve` there, `connect()` here, the same API.

    from engine.remote import connect
    eng = connect("127.0.0.1:5555", token="…")     # the server's `connect:` line
    model = eng.load_model("tiny-gpt")
    session = eng.Session(model, "In the beginning")
    session.step(); session.trace.attention("self", 0)

Modules: protocol (signed frames, the handshake's versions), server and cli (`serve`), connection (the
client's socket thread), client (RemoteEngine / RemoteModel / RemoteSession), delta and mirror (the
trace, sent as what changed and rebuilt on the client), remote_patterns and pattern_answers (past the mirror
limit: the patterns stay on the server and the client's trace asks for what it draws).
"""

from .client import RemoteEngine, RemoteModel, RemoteSession, RemoteStep, connect
from .mirror import RemoteTrace
from .protocol import PROTOCOL_VERSION, AuthenticationError, BadMessage, EngineGone, ProtocolMismatch, RemoteEngineError

__all__ = ["PROTOCOL_VERSION", "AuthenticationError", "BadMessage", "EngineGone", "ProtocolMismatch", "RemoteEngine",
           "RemoteEngineError", "RemoteModel", "RemoteSession", "RemoteStep", "RemoteTrace", "connect"]
