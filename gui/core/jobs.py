"""Jobs for the engine thread behind the features and analysis docks: head gates, logit lens, head
statistics, session files, a second prompt.

Each function here returns a callable `fn(worker)` for EngineClient.call(op, fn); it runs in the worker
thread (the only thread that touches Model and Session) and returns plain data or a Trace. Nothing
here runs in the GUI thread. A job uses the worker's public face only: `model`, `session`, `cache`,
`adopt()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from engine import EngineError

from .worker import EngineWorker, model_info

Gate = tuple[str, int, int, float]  # kind, layer, head, value (0 = ablated, 1 = untouched)
LENS_TOP = 8


def open_model(w: EngineWorker) -> Any:
    """The worker's model, or an EngineError that says how to open one."""
    if w.model is None:
        raise EngineError("no model is open; use File → Open model folder")
    return w.model


def same_model(model: Any, trace: Any) -> bool:
    """The trace came from this model (a request queued before another model was opened did not)."""
    return (trace.model_name == model.name and trace.family == model.family
            and dict(trace.n_layers) == dict(model.layers_by_kind))


def set_gates(changes: Sequence[Gate], clear: bool = False) -> Callable:
    """Change head gates on the model; the session recomputes with them. -> the new Trace, or
    {"gates": ...} when there is no session yet (the gates then apply to the next one)."""

    def fn(w: EngineWorker) -> Any:
        model = open_model(w)
        if clear:
            model.clear_gates()
        for kind, layer, head, value in changes:
            model.set_head_gate(kind, int(layer), int(head), float(value))
        if w.session is not None:
            return w.session.trace  # notices the changed gates and recomputes
        return {"gates": model.gates()}

    return fn


def set_expert_gates(changes: Sequence[tuple[int, int, float]], clear: bool = False) -> Callable:
    """Change expert gates (op "gates": the session recomputes and its Trace replaces the one on screen), or
    {"gates": ..., "expert_gates": ...} when there is no session yet."""

    def fn(w: EngineWorker) -> Any:
        model = open_model(w)
        if not hasattr(model, "set_expert_gate"):
            raise EngineError(f"{model.name} has no experts to ablate here (expert ablation needs a mixture-of-experts "
                              "model on the transformers backend)")
        if clear:
            model.clear_expert_gates()
        for layer, expert, value in changes:
            model.set_expert_gate(int(layer), int(expert), float(value))
        if w.session is not None:
            return w.session.trace  # notices the changed gates and recomputes
        return {"gates": model.gates(), "expert_gates": model.expert_gates()}

    return fn


def logit_lens(trace: Any, position: int, top: int = LENS_TOP) -> Callable:
    """Top tokens read off the residual stream after each layer at `position` (main stack)."""

    def fn(w: EngineWorker) -> dict:
        model = open_model(w)
        if not same_model(model, trace):
            return {"trace": trace, "stale": True}  # the panel drops it: its trace is gone
        out = w.engine.logit_lens(model, trace, position, top=top)
        return {"trace": trace, "position": position, "top_ids": out["top_ids"], "top_probs": out["top_probs"]}

    return fn


def head_statistics(trace: Any) -> Callable:
    """Every head's statistics on `trace`; induction scores are cached per model and gates."""

    def fn(w: EngineWorker) -> dict:
        model = open_model(w)
        if not same_model(model, trace):
            return {"trace": trace, "stale": True}
        neurons = tuple(sorted((name, tuple(sorted(g.items()))) for name, g in model.neuron_gates().items()))
        key = (id(model), tuple(sorted(model.gates().items())), neurons)
        cached = w.cache.get("induction")
        if cached is None or cached[0] != key:  # one entry: the cache never keeps other gates' numbers
            cached = w.cache["induction"] = (key, w.engine.induction_scores(model))
        return {"trace": trace, "stats": w.engine.head_statistics(model, trace, induction=cached[1])}

    return fn


def save_session(path: str, view: dict) -> Callable:
    def fn(w: EngineWorker) -> dict:
        from engine.session_file import save_session as save

        if w.session is None:
            raise EngineError("no session to save: open a model and type a prompt first")
        return {"path": str(save(w.session, path, view=view))}

    return fn


def export_trace(trace: Any, path: str, layers: list[str] | None = None) -> Callable:
    """Write the trace on screen as .npz in the worker thread: every pattern is read there (a long context's are
    large, and an engine that keeps patterns elsewhere fetches them), so the window never waits for it."""
    def fn(_w: EngineWorker) -> dict:
        from engine.export import save_npz

        try:
            return {"path": str(save_npz(trace, path, layers=layers))}
        except OSError as exc:
            raise EngineError(f"could not write {path}: {exc}") from exc

    return fn


def open_session(path: str) -> Callable:
    """Read a session file, reuse the open model when it is the one the file names (else load it),
    replay it. Damaged or foreign files raise SessionFileError; the old model and session stay."""

    def fn(w: EngineWorker) -> dict:
        from engine.session_file import load_options, model_reference, read_session_file

        state = read_session_file(path)
        ref = model_reference(state)
        options = load_options(state)
        model = w.model
        same = (model is not None and ref in (model.name, str(model.folder) if model.folder else None)
                and options.get("backend", model.backend) == model.backend)
        if not same:
            model = w.engine.load_model(ref, **options)
        session = w.engine.restore_session(state, model)
        w.adopt(model, session)
        return {"info": model_info(model, w.engine), "trace": session.trace, "view": state.get("view", {}) or {},
                "settings": dict(state["settings"]), "prompt": _text(model, session.prompt_ids),
                "source": _text(model, session.source_ids) if session.source_ids is not None else None,
                "messages": [dict(m) for m in session.messages] if session.messages is not None else None}

    return fn


def _text(model: Any, ids: Sequence[int]) -> str:
    """Prompt text for the prompt box: special tokens dropped, except the masks a fill-mask prompt needs."""
    mask = model.config.mask_token_id
    special = set(model.tokenizer.special_ids) - {mask}
    return model.tokenizer.decode([i for i in ids if i not in special], skip_special_tokens=False)


def run_other(prompt: str, source: str | None) -> Callable:
    """One full forward of another prompt on the same model (and its gates); the open session is untouched."""

    def fn(w: EngineWorker) -> dict:
        model = open_model(w)
        if model.family == "encoder-decoder":
            if not (source or "").strip():
                raise EngineError("type a source text for the encoder")
            trace = model.run(prompt if prompt.strip() else None, source=source)
        else:
            trace = model.run(prompt)
        return {"trace": trace}  # wrapped: a bare Trace would replace the one on screen

    return fn


def keep_session() -> Callable:
    """The prompt box went back to the session's own prompt: its steps are allowed again."""

    def fn(w: EngineWorker) -> dict:
        w.refused = None
        return {"session": w.session is not None}

    return fn


def generation_room(max_positions: int) -> int:
    """Tokens a trimmed prompt leaves free, so the session can still step (an eighth, 1..64)."""
    return max(1, min(64, max_positions // 8))


def _last_tokens(tokenizer: Any, text: str, keep: int) -> tuple[str, int]:
    """The end of `text` that encodes (special tokens included) to at most `keep` tokens, and its count.
    A tail decoded from the middle of the ids may re-encode a little longer: then a few fewer are taken."""
    ids = tokenizer.encode(text, special_tokens=False)
    n_special = len(tokenizer.encode(text, special_tokens=True)) - len(ids)
    take = max(1, keep - n_special)
    while take > 0:
        tail = tokenizer.decode(ids[-take:], skip_special_tokens=False).lstrip()
        n = len(tokenizer.encode(tail, special_tokens=True))
        if n <= keep:
            return tail, n
        take -= max(1, n - keep)
    return "", 0


def fit_prompt(prompt: str, source: str | None) -> Callable:
    """-> {"max": the model's positions, "prompt"/"source": {"tokens": n, "keep": k, "text": the last k
    tokens' text}} for each text that is too long (the prompt keeps generation_room free; a source does not
    grow). Plain data: the prompt panel offers "keep the last k tokens"."""

    def fn(w: EngineWorker) -> dict:
        model = open_model(w)
        tok, limit = model.tokenizer, model.max_positions
        out: dict[str, Any] = {"max": limit}
        texts = {"prompt": prompt, "source": source if model.family == "encoder-decoder" else None}
        for what, text in texts.items():
            if not text:
                continue
            n = len(tok.encode(text, special_tokens=True))
            if n <= limit:
                continue
            grows = what == "prompt" and model.family != "encoder"
            keep = limit - generation_room(limit) if grows else limit
            tail, kept = _last_tokens(tok, text, keep)
            if kept:
                out[what] = {"tokens": n, "keep": kept, "text": tail}
        return out

    return fn


def ungated_logits(trace: Any, position: int) -> Callable:
    """The logits at `position` of `trace`'s tokens with every head gate open (one forward without the head
    ablation; neuron gates stay; the head gates are put back as they were, so the session does not recompute).
    -> {"trace", "position", "logits"}, or {"stale": True} when the trace is another model's."""

    def fn(w: EngineWorker) -> dict:
        from engine import parse_capture_name

        model = open_model(w)
        if not same_model(model, trace):
            return {"trace": trace, "stale": True}
        # head gates only (clear_gates() would drop the neuron ablations too), and only those not at 1: with a
        # remote engine each change is a round trip
        closed = [(*parse_capture_name(name), head, value) for name, values in model.gates().items()
                  for head, value in enumerate(values) if value != 1.0]
        for kind, layer, head, _ in closed:
            model.set_head_gate(kind, layer, head, 1.0)
        try:
            if trace.family == "encoder-decoder":
                base = model.run(list(trace.token_ids), source=list(trace.source_ids))
            else:
                base = model.run(list(trace.token_ids))
        finally:
            for kind, layer, head, value in closed:
                model.set_head_gate(kind, layer, head, value)
        return {"trace": trace, "position": position, "logits": base.logits_at(position)}

    return fn
