"""Jobs that change which engine the worker talks to: connect to a remote one, come back to this computer,
reconnect after the remote engine went away.

As the other jobs, each returns `fn(worker)` for EngineClient.call(op, fn) and runs in the worker thread,
which owns the engine. Connecting replaces the engine (its model and session go with the old one);
reconnecting keeps the same engine object, which puts its models and sessions back on the restarted
server, so the worker's model and session stay the ones it had.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine import EngineError

from .worker import EngineWorker


def connect_engine(target: dict[str, Any]) -> Callable:
    """target: {"address", "token"} for a port already forwarded, or {"ssh_host", "jump", "remote_port",
    "start_server"} for a tunnel the job opens (engine.remote.launch.open_remote). -> {"where": ...}."""

    def fn(w: EngineWorker) -> dict:
        from engine.remote.launch import open_remote

        engine = open_remote(**target)
        w.switch_engine(engine)
        return {"where": engine.where(), "devices": engine.available_devices()}

    return fn


def use_this_computer() -> Callable:
    def fn(w: EngineWorker) -> dict:
        from engine.local import LocalEngine

        engine = LocalEngine()
        w.switch_engine(engine)
        return {"where": engine.where(), "devices": engine.available_devices()}

    return fn


def reconnect(quiet: bool = False, timeout: float | None = None) -> Callable:
    """Reconnect the engine and restore what it held; -> the session's restored Trace (run as a trace op,
    it replaces the one on screen), or {"where": ...} when no session was open. `quiet` (the window's own
    retries): a failure answers {"reconnected": False, "why": ...} instead of an error message."""

    def fn(w: EngineWorker) -> Any:
        try:
            w.engine.reconnect(timeout=timeout)
        except EngineError as exc:
            if not quiet:
                raise
            return {"reconnected": False, "why": str(exc)}
        return w.session.trace if w.session is not None else {"reconnected": True, "where": w.engine.where()}

    return fn
