"""Chat-mode jobs for the engine thread: render a chat through the checkpoint's template, start a chat
session, and read where a chat stands (its messages and reply, for the next turn).

As in gui/core/jobs.py, each function returns `fn(worker)` for EngineClient.call(op, fn); it runs in the
worker thread. A session job runs under op "session", so its Trace replaces the one on screen and follows
the same staleness as a plain prompt's session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .jobs import open_model
from .worker import EngineWorker, SessionRequest


def chat_messages(system: str, turns: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """[system?] + the turns (role, content) as the engine takes them; an empty system prompt is left out."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return messages + [{"role": role, "content": content} for role, content in turns]


def _start(w: EngineWorker, messages: list[dict[str, str]], req: SessionRequest) -> Any:
    model = open_model(w)
    session = w.engine.Session(model, messages=messages, temperature=req.temperature, top_k=req.top_k,
                               top_p=req.top_p, seed=req.seed, greedy=req.greedy)
    w.adopt(model, session)
    return session.trace


def render_chat(messages: list[dict[str, str]]) -> Callable:
    """-> {"text": the template's rendering with the generation prompt} (for the preview)."""

    def fn(w: EngineWorker) -> dict:
        return {"text": open_model(w).tokenizer.render_chat(messages, add_generation_prompt=True),
                "messages": messages}

    return fn


def chat_session(messages: list[dict[str, str]], req: SessionRequest) -> Callable:
    """A new session whose prompt is `messages` rendered through the chat template."""
    return lambda w: _start(w, messages, req)


def chat_state() -> Callable:
    """-> where the open chat stands: its messages, the reply so far, finished and why (plain data)."""

    def fn(w: EngineWorker) -> dict:
        s = w.session
        if s is None:
            return {"messages": None, "reply": "", "finished": False, "why": ""}
        why = ""
        if s.finished and s.family != "encoder":
            ids = s.ids
            if len(ids) > s.n_prompt and ids[-1] in s.stop_ids:
                why = f"end of turn: the model chose {s.model.tokenizer.display(ids[-1])}"
            else:
                why = f"the context is full ({s.model.max_positions} tokens)"
        return {"messages": [dict(m) for m in s.messages] if s.messages is not None else None,
                "reply": s.reply, "finished": bool(s.finished), "why": why}

    return fn
