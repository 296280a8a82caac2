"""Saving and reopening a session: model reference, prompt/source (and the chat messages it was rendered
from), every step and branch, settings, ablations and the caller's view state, as JSON written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .chat import normalise_messages
from .errors import EngineError
from .export import atomic_write
from .session import Session
from .trace import parse_capture_name

if TYPE_CHECKING:
    from .model import Model

FORMAT = "attention-inspector-session"
VERSION = 1


class SessionFileError(EngineError):
    """A session file that cannot be read back (damaged, another format, or a newer version)."""


def session_state(session: Session, view: dict | None = None) -> dict:
    model = session.model
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model.name, "folder": str(model.folder) if model.folder else None,
                  "model_type": model.config.model_type, "backend": model.backend},
        "prompt_ids": session.prompt_ids,
        "source_ids": session.source_ids,
        # optional (files without them still read): the chat the prompt ids were rendered from
        "messages": list(session.messages) if session.messages is not None else None,
        "chat_options": session.chat_options,
        "settings": {k: getattr(session.settings, k) for k in ("temperature", "top_k", "top_p", "greedy", "seed")},
        "gates": {name: list(g) for name, g in model.gates().items()},
        # optional (older files have none): "decoder.3.mlp" -> {"224": 0.0}
        "neuron_gates": {name: {str(j): v for j, v in g.items()} for name, g in model.neuron_gates().items()},
        # optional (older files and models without experts have none): MoE layer -> {expert: gate}
        "expert_gates": {str(layer): {str(e): v for e, v in g.items()} for layer, g in _expert_gates(model).items()},
        "history": [list(e) for e in session.history],
        "view": view or {},
    }


def save_session(session: Session, path: str | os.PathLike, view: dict | None = None) -> Path:
    data = json.dumps(session_state(session, view), indent=1).encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def read_session_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SessionFileError(f"{path} does not exist") from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SessionFileError(f"{path} is damaged or not a session file ({exc}); it cannot be opened") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SessionFileError(f"{path} is not an Attention Inspector session file")
    if state.get("version") != VERSION:
        raise SessionFileError(f"{path} was written by session format version {state.get('version')}; "
                               f"this version reads version {VERSION}")
    missing = [k for k in ("model", "prompt_ids", "settings", "history") if k not in state]
    if missing:
        raise SessionFileError(f"{path} is incomplete (missing {', '.join(missing)}); it cannot be opened")
    return state


def model_reference(state: dict) -> str:
    """Where to load the session's model from: its folder when it still exists, else its name."""
    m = state["model"]
    folder = m.get("folder")
    return folder if folder and Path(folder).is_dir() else m["name"]


def load_options(state: dict) -> dict:
    """Keywords for load_model that reopen the session's model the way it was opened (files without a backend
    were written by the native engine's era: the default routing)."""
    backend = state["model"].get("backend")
    return {"backend": backend} if backend in ("native", "transformers") else {}


def _parse_gates(state: dict) -> list[tuple[str, int, int, float]]:
    """[(kind, layer, head, value)] from the file's gates, checked before anything touches the model."""
    gates = state.get("gates", {})
    if not isinstance(gates, dict):
        raise TypeError("gates must be an object")
    out = []
    for name, values in gates.items():
        kind, layer = parse_capture_name(name)
        out += [(kind, layer, head, float(v)) for head, v in enumerate(values)]
    return out


def _parse_neuron_gates(state: dict) -> list[tuple[str, int, int, float]]:
    """[(stack, layer, neuron, value)] from the file's neuron gates."""
    gates = state.get("neuron_gates") or {}
    if not isinstance(gates, dict):
        raise TypeError("neuron_gates must be an object")
    out = []
    for name, values in gates.items():
        stack, layer, what = name.split(".")
        if what != "mlp" or not isinstance(values, dict):
            raise ValueError(f"{name!r} is not an MLP's neuron gates")
        out += [(stack, int(layer), int(j), float(v)) for j, v in values.items()]
    return out


def _expert_gates(model: Model) -> dict[int, dict[int, float]]:
    get = getattr(model, "expert_gates", None)  # the transformers backend's MoE models
    return get() if get is not None else {}


def _parse_expert_gates(state: dict) -> list[tuple[int, int, float]]:
    """[(layer, expert, value)] from the file's expert gates."""
    gates = state.get("expert_gates") or {}
    if not isinstance(gates, dict) or not all(isinstance(v, dict) for v in gates.values()):
        raise TypeError("expert_gates must map a layer to {expert: gate}")
    return [(int(layer), int(e), float(v)) for layer, values in gates.items() for e, v in values.items()]


def _set_expert_gates(model: Model, gates: list[tuple[int, int, float]] | dict) -> None:
    items = [(layer, e, v) for layer, g in gates.items() for e, v in g.items()] if isinstance(gates, dict) else gates
    if not items and not hasattr(model, "set_expert_gate"):
        return
    if not hasattr(model, "set_expert_gate"):
        raise ValueError(f"{model.name} has no experts to gate (the file ablates experts)")
    model.clear_expert_gates()
    for layer, e, v in items:
        model.set_expert_gate(layer, e, v)


def _put_back(model: Model, heads: dict, neurons: dict) -> None:
    model.clear_gates()
    for name, values in heads.items():
        kind, layer = parse_capture_name(name)
        for head, value in enumerate(values):
            model.set_head_gate(kind, layer, head, value)
    for name, values in neurons.items():
        stack, layer, _ = name.split(".")
        for j, value in values.items():
            model.set_neuron_gate(int(layer), j, value, stack)


def restore_session(state: dict, model: Model) -> Session:
    """Rebuild the saved session on `model` (gates applied, history replayed). On failure the model's
    gates are put back as they were."""
    previous, previous_neurons, previous_experts = model.gates(), model.neuron_gates(), _expert_gates(model)
    try:
        gates = _parse_gates(state)
        neuron_gates = _parse_neuron_gates(state)
        expert_gates = _parse_expert_gates(state)
        history = [tuple(e) for e in state["history"]]
        if not all(e and isinstance(e[0], str) for e in history):
            raise ValueError("history entries must start with an event name")
        model.clear_gates()
        for kind, layer, head, value in gates:
            model.set_head_gate(kind, layer, head, value)
        for stack, layer, neuron, value in neuron_gates:
            model.set_neuron_gate(layer, neuron, value, stack)
        _set_expert_gates(model, expert_gates)
        s = state["settings"]
        session = Session(model, state["prompt_ids"], source=state.get("source_ids"), temperature=s["temperature"],
                          top_k=s["top_k"], top_p=s["top_p"], greedy=s["greedy"], seed=s["seed"])
        # the saved ids are the prompt (not a new rendering: a template may write today's date)
        if state.get("messages") is not None:
            session.messages = tuple(normalise_messages(state["messages"]))
        session.chat_options = dict(state.get("chat_options") or {})
        session.replay(history)
        return session
    except BaseException as exc:
        _put_back(model, previous, previous_neurons)
        _set_expert_gates(model, previous_experts)
        if isinstance(exc, EngineError) or not isinstance(exc, Exception):
            raise
        raise SessionFileError(f"the session file is inconsistent with this model or damaged: {exc!r}") from exc


def load_session(path: str | os.PathLike, loader: Callable[[str], Model] | None = None) -> tuple[Session, dict]:
    """Read `path`, load its model (through `loader`, default engine.load_model) and replay it."""
    state = read_session_file(path)
    if loader is None:
        from . import load_model

        def loader(ref: str) -> Model:
            return load_model(ref, **load_options(state))
    model = loader(model_reference(state))
    return restore_session(state, model), state.get("view", {})
