"""Jobs behind the "Inside the MLP" dock and the Patch tab of the compare dialog (engine.explain.mlp_neurons,
engine.patching): one MLP's neurons at one position, neuron gates, one patch, and the layer x head patching sweep.
Everything goes through the worker's engine (`w.engine.*`, in this process or remote) and the model it opened.

Each function returns `fn(worker)` for EngineClient.call(op, fn) and runs in the worker thread; answers carry
the trace they were asked about, so a panel drops answers for a trace no longer on screen. An explanation the
model cannot give comes back as {"error": message}, shown in place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from engine.errors import EngineError, PromptError

from .jobs import open_model, same_model
from .worker import EngineWorker

NeuronGate = tuple[int, int, float]  # layer, neuron, value (0 = ablated, 1 = untouched), in the main stack


def mlp_neurons(trace: Any, layer: int, position: int, token_id: int | None, rank_by: str, k: int,
                include: Sequence[int] = ()) -> Callable:
    """The neurons of `layer`'s MLP at `position`, ranked by their write toward `token_id` or by |activation|
    (and the neurons in `include`, e.g. the ablated ones, whatever their rank)."""

    def fn(w: EngineWorker) -> dict:
        model = open_model(w)
        if not same_model(model, trace):
            return {"trace": trace, "stale": True}
        key = (layer, position, token_id, rank_by, k)
        try:
            result = w.engine.mlp_neurons(model, trace, layer, position, token_id, k, rank_by, include=tuple(include))
            return {"trace": trace, "key": key, "neurons": result}
        except EngineError as exc:  # a capture the trace lacks, or an explanation this model cannot give
            return {"trace": trace, "key": key, "error": str(exc)}

    return fn


def expert_neurons(trace: Any, layer: int, position: int, k: int, token_id: int | None = None) -> Callable:
    """A mixture-of-experts layer at `position`: the experts the router chose, their weights and each one's top `k`
    neurons with their direct effects on `token_id` (engine.routing.ExpertsInside);
    -> {"trace", "key", "experts"} or {"trace", "key", "error"}."""

    def fn(w: EngineWorker) -> dict:
        model = open_model(w)
        if not same_model(model, trace):
            return {"trace": trace, "stale": True}
        key = (layer, position, k, token_id)
        try:
            answer = w.engine.expert_neurons(model, trace, layer, position, k, token_id)
            return {"trace": trace, "key": key, "experts": answer}
        except EngineError as exc:  # a layout the backend does not read, or a check that failed
            return {"trace": trace, "key": key, "error": str(exc)}

    return fn


def set_neuron_gates(changes: Sequence[NeuronGate], clear: bool = False) -> Callable:
    """Change neuron gates (op "gates": the session recomputes and its Trace replaces the one on screen), or
    {"gates", "neuron_gates"} without a session."""

    def fn(w: EngineWorker) -> Any:
        model = open_model(w)
        if clear:
            model.clear_neuron_gates()
        for layer, neuron, value in changes:
            model.set_neuron_gate(int(layer), int(neuron), float(value))
        if w.session is not None:
            return w.session.trace  # notices the changed gates and recomputes
        return {"gates": model.gates(), "neuron_gates": model.neuron_gates()}

    return fn


def _clean(w: EngineWorker, trace: Any) -> Any:
    """The clean side: the trace on screen (it must come from the open model)."""
    model = open_model(w)
    if not same_model(model, trace):
        raise PromptError("the trace on screen is from another model; step or run it again first")
    return model


def _corrupt(model: Any, prompt: str, source: str | None) -> Any:
    """The second prompt as the engine takes it: text (encoder-decoder: the source; its decoder starts afresh)."""
    if model.family == "encoder-decoder":
        if not (source or "").strip():
            raise PromptError("type a source text for the encoder")
        return model.run(prompt if prompt.strip() else None, source=source)
    if not prompt.strip():
        raise PromptError("type a second prompt to patch from")
    return model.run(prompt)


def patch(trace: Any, prompt: str, source: str | None, component: str, align: str) -> Callable:
    """Run the trace on screen with `component` taken from the second prompt; -> {"trace", "patch", "other"}."""

    def fn(w: EngineWorker) -> dict:
        model = _clean(w, trace)
        other = _corrupt(model, prompt, source)
        try:
            result = w.engine.patch(model, trace, other, component, align=align, capture=False)
        except EngineError as exc:  # a capture the trace lacks, or a model without the native network (patching)
            return {"trace": trace, "error": str(exc), "other": other}
        return {"trace": trace, "patch": result, "other": other}

    return fn


def patch_sweep(trace: Any, prompt: str, source: str | None, kind: str, token_a: int, token_b: int | None, align: str,
                progress: Callable[[int, int], None], cancel: threading.Event) -> Callable:
    """Every head of every layer of `kind`, patched in turn, on logit(a) - logit(b). `progress(done, total)` is
    called from the worker thread (a queued signal's emit); `cancel` is set by the GUI thread."""

    def fn(w: EngineWorker) -> dict:
        model = _clean(w, trace)
        other = _corrupt(model, prompt, source)
        try:
            result = w.engine.patch_sweep(model, trace, other, token_a, token_b, kind=kind, align=align, progress=progress,
                                          cancel=cancel)
        except EngineError as exc:  # a capture the trace lacks, or a model without the native network (patching)
            return {"trace": trace, "error": str(exc), "other": other}
        return {"trace": trace, "sweep": result, "other": other}

    return fn
