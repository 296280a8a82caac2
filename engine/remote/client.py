"""The remote engine's client: the same API as the engine in-process, answered by a server.

    from engine.remote import connect
    eng = connect("127.0.0.1:5555", token="…")
    model = eng.load_model("tiny-gpt")
    session = eng.Session(model, "In the beginning")
    session.step(); session.back(); session.branch(42)
    session.trace.attention("self", 0)      # a real engine Trace, mirrored (see mirror.py)

The client keeps what it needs to put everything back on a restarted server (each model's source and
gates, each session's prompt ids, settings and history), so after EngineGone `eng.reconnect()` restores
the same sessions, and the traces already on screen stay usable meanwhile.
"""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..about import app_version
from ..errors import Cancelled, EngineError
from ..sampling import SamplingSettings, distribution
from ..session import live_events
from .connection import CONNECT_TIMEOUT_S, Connection
from .mirror import RemoteTrace, TraceMirror
from .protocol import CAPABILITIES, PROTOCOL_VERSION, EngineGone, ProtocolMismatch

log = logging.getLogger(__name__)


def connect(address: str, token: str, timeout: float = CONNECT_TIMEOUT_S, mirror_limit: int | None = None) -> RemoteEngine:
    """Connect to `attention-inspector serve` at "HOST:PORT" (its `connect:` line) and shake hands.
    `mirror_limit`: bytes of a trace's record mirrored here (None: the server's --mirror-limit; 0: patterns
    always stay on the server, asked for as drawn)."""
    return RemoteEngine(address, token, timeout, mirror_limit=mirror_limit)


def _handshake(conn: Connection, timeout: float) -> dict:
    try:
        return conn.open({"protocol": PROTOCOL_VERSION, "app_version": app_version(),
                          "capabilities": list(CAPABILITIES), "client": conn.client_id}, timeout=timeout)
    except EngineGone as exc:
        conn.close()
        raise EngineGone(f"no engine answers at {conn.address} (is `attention-inspector serve` running there, and the "
                         "port forwarded?)") from exc
    except EngineError as exc:
        conn.close()
        if "version mismatch" in str(exc):
            raise ProtocolMismatch(str(exc)) from None
        raise


class RemoteEngine:
    """The engine on another machine, behind the same interface as engine.local.LocalEngine."""

    remote = True
    # the whole logits row where the next choice is made comes with each session answer, so a window that
    # re-colours candidates never asks the network for it in its own thread; False: only the top candidates
    prefetch_logits = True

    def __init__(self, address: str, token: str, timeout: float = CONNECT_TIMEOUT_S, mirror_limit: int | None = None) -> None:
        self.address, self._token, self._timeout = address, token, timeout
        self.mirror_limit = mirror_limit  # None: the server's
        self.client_id = uuid.uuid4().hex
        self.conn = Connection(address, token, self.client_id)
        self.info = _handshake(self.conn, timeout)
        self._models: weakref.WeakSet = weakref.WeakSet()
        self.tunnel: Any = None  # an ssh tunnel (launch.Tunnel) this engine is reached through; closed with it
        self._sessions: weakref.WeakSet = weakref.WeakSet()
        log.info("connected to the engine on %s (%s)", self.info.get("host"), address)

    # -- plumbing --------------------------------------------------------------------------------
    def call(self, op: str, body: Any = None, **kw: Any) -> Any:
        return self.conn.call(op, body, **kw)

    @property
    def gone(self) -> str | None:
        """Why the engine went away, or None while it answers."""
        return self.conn.gone

    def _limit(self) -> dict:
        """The client's mirror limit for a request that makes a trace (nothing: the server's own)."""
        return {} if self.mirror_limit is None else {"mirror_limit": int(self.mirror_limit)}

    def fetch_logits(self, sender: int, serial: int, start: int, stop: int) -> np.ndarray:
        return self.call("logits", {"sender": sender, "serial": serial, "start": start, "stop": stop})

    def close(self) -> None:
        self.conn.close()
        if self.tunnel is not None:
            self.tunnel.stop()

    def reconnect(self, address: str | None = None, token: str | None = None, attempts: int = 1,
                  timeout: float | None = None, backoff: float = 1.0) -> None:
        """Connect again (the same address unless given) and put back every model and session this client
        still holds: models reloaded from their source with their head gates, sessions replayed from their
        prompt ids, settings and history. Traces made before stay as they are. With `attempts` > 1, waits
        `backoff` seconds after the first failure, doubling up to 30 s, before each next try (a laptop
        waking up, a server restarting); the last failure is raised (EngineGone)."""
        self.address = address or self.address
        self._token = token or self._token
        for attempt in range(max(1, attempts)):
            conn = Connection(self.address, self._token, self.client_id)
            try:
                self.info = _handshake(conn, timeout or self._timeout)
                break
            except EngineGone:
                if attempt == max(1, attempts) - 1:
                    raise
                time.sleep(min(30.0, backoff * 2**attempt))
        old = self.conn
        self.conn = conn
        try:
            old.close()
        except Exception:  # noqa: BLE001 - the old link may be half gone already
            log.debug("closing the old link failed", exc_info=True)
        for model in list(self._models):
            model._reopen()
        for session in list(self._sessions):
            if session.model in self._models:
                session._restore()
        log.info("reconnected to %s: %d model(s), %d session(s) restored", self.address, len(self._models),
                 len(self._sessions))

    # -- the engine interface (as engine.local.LocalEngine) ------------------------------------
    def where(self) -> str:
        i = self.info
        gpu = f"; {i['gpu_memory']}" if i.get("gpu_memory") else ""
        spread = "; models spread over its GPUs, then the CPU" if i.get("load_device") == "auto" else ""
        return f"{i.get('host', '?')} via {self.address} ({i.get('device', '?')}{gpu}{spread})"

    def describe(self) -> dict:
        return {"address": self.address, **self.info}

    def load_model(self, source: str, device: str | None = None, dtype: str | None = None, allow_pickle: bool = False,
                   progress: Callable[[float, str], None] | None = None, cancel: Any = None,
                   capture_mode: str | None = None, backend: str = "auto", trust_remote_code: bool = False) -> RemoteModel:
        args = {"source": str(source), "device": device, "dtype": dtype, "allow_pickle": allow_pickle,
                "capture_mode": capture_mode, "backend": str(backend), "trust_remote_code": bool(trust_remote_code)}
        model = RemoteModel(self, args)
        model._open(progress, cancel)
        self._models.add(model)
        return model

    def Session(self, model: RemoteModel, *args: Any, **kwargs: Any) -> RemoteSession:  # noqa: N802 - as engine.Session
        session = RemoteSession(model, *args, **kwargs)
        self._sessions.add(session)
        return session

    def describe_source(self, source: str) -> tuple[str, int]:
        return tuple(self.call("describe_source", {"source": str(source)}))

    def _listing(self, what: str) -> list:
        return list(self.call("listing", {"what": what}))

    def bundled_models(self) -> list[str]:
        return self._listing("bundled_models")

    def cached_models(self) -> list[str]:
        return self._listing("cached_models")

    def cached_model_infos(self) -> list:
        return self._listing("cached_model_infos")

    def available_devices(self) -> list[str]:
        self._devices = self._listing("available_devices")
        return list(self._devices)

    def devices_known_now(self) -> list[str]:
        """The server's devices as last listed, without a network call (a window's thread may ask)."""
        return list(getattr(self, "_devices", ()))

    def model_folders(self) -> list[str]:
        """Checkpoint folders under the server's --models-dir folders (what Open folder may name)."""
        return self._listing("folders")

    def list_folders(self, path: str | None = None) -> list[dict]:
        """What Open model folder browses: the server's --models-dir folders (path None) or the sub-folders of one
        path under them, each {"path", "name", "checkpoint"}; CheckpointError for a path outside them."""
        return list(self.call("browse", {"path": path}))

    def stop_token_ids(self, model: RemoteModel) -> tuple[int, ...]:
        return tuple(model.stop_ids)

    def _analysis(self, fn: str, model: RemoteModel, trace: Any, *args: Any, **kwargs: Any) -> Any:
        body: dict[str, Any] = {"fn": fn, "model": model.handle, "args": list(args), "kwargs": kwargs}
        if trace is not None:
            remote = getattr(trace, "remote", None)
            if not isinstance(trace, RemoteTrace) or remote is None or remote[0] is not self:
                raise EngineError("that trace was not made by this remote engine; step or run again")
            body["trace"] = remote[1]
        return self.call("analysis", body)

    def logit_lens(self, model: RemoteModel, trace: Any, position: int, top: int = 10) -> dict:
        return self._analysis("logit_lens", model, trace, position, top=top)

    def head_statistics(self, model: RemoteModel, trace: Any, induction: Any = None) -> list:
        return self._analysis("head_statistics", model, trace, induction=induction)

    def induction_scores(self, model: RemoteModel) -> np.ndarray:
        return self._analysis("induction_scores", model, None)

    def inside_head(self, model: RemoteModel, trace: Any, kind: str, layer: int, head: int, query: int) -> Any:
        return self._analysis("inside_head", model, trace, kind, layer, head, query)

    def attribute(self, model: RemoteModel, trace: Any, position: int, token_id: int | None = None) -> Any:
        return self._analysis("attribute", model, trace, position, token_id)

    def nearest_tokens(self, model: RemoteModel, token_id: int, k: int = 10, metric: str = "cosine") -> list:
        return self._analysis("nearest_tokens", model, None, token_id, k, metric)

    def positions_view(self, model: RemoteModel) -> dict:
        return self._analysis("positions_view", model, None)

    def mlp_neurons(self, model: RemoteModel, trace: Any, layer: int, position: int, token_id: int | None = None,
                    k: int = 20, rank_by: str = "write", stack: str | None = None, include: Sequence[int] = ()) -> Any:
        return self._analysis("mlp_neurons", model, trace, int(layer), int(position),
                              None if token_id is None else int(token_id), int(k), rank_by, stack,
                              include=[int(j) for j in include])

    def expert_neurons(self, model: RemoteModel, trace: Any, layer: int, position: int, k: int = 20,
                       token_id: int | None = None) -> Any:
        return self._analysis("expert_neurons", model, trace, int(layer), int(position), int(k),
                              None if token_id is None else int(token_id))

    def residual_stream(self, model: RemoteModel, trace: Any, position: int, token_id: int | None = None) -> Any:
        return self._analysis("residual_stream", model, trace, int(position), None if token_id is None else int(token_id))

    def _prompt_ref(self, x: Any, what: str) -> Any:
        """A patching prompt for the wire: a trace by its id on the server; text or ids as they are."""
        if isinstance(x, RemoteTrace):
            remote = getattr(x, "remote", None)
            if remote is None or remote[0] is not self:
                raise EngineError(f"the {what} trace was not made by this remote engine; step or run again")
            return {"trace": remote[1]}
        if hasattr(x, "token_ids"):  # a Trace of this process: its ids mean the same on the server
            raise EngineError(f"the {what} trace was made in this process, not by the remote engine; run it there")
        return _plain(x)

    def patch(self, model: RemoteModel, clean: Any, corrupt: Any, component: Any, positions: Sequence[int] | None = None,
              align: str = "end", position: int | None = None, capture: bool = True, split: int | None = None) -> Any:
        """As engine.patching.patch, run on the server; the patched run's Trace (capture) comes mirrored."""
        import dataclasses

        body = {"model": model.handle, "clean": self._prompt_ref(clean, "clean"), "corrupt": self._prompt_ref(corrupt, "corrupt"),
                "component": list(component) if isinstance(component, (list, tuple)) else component,
                "kwargs": {"positions": None if positions is None else [int(p) for p in positions], "align": align,
                           "position": None if position is None else int(position), "capture": bool(capture),
                           "split": None if split is None else int(split)}, **self._limit()}
        answer = self.call("patch", body)
        result = answer["result"]
        if "delta" in answer:
            result = dataclasses.replace(result, trace=TraceMirror(self.fetch_logits, self).apply(answer))
        return result

    def patch_sweep(self, model: RemoteModel, clean: Any, corrupt: Any, token_a: int, token_b: int | None = None,
                    kind: str = "self", align: str = "end", position: int | None = None,
                    positions: Sequence[int] | None = None, progress: Callable[[int, int], None] | None = None,
                    cancel: Any = None, batch: int | None = None) -> Any:
        """As engine.patching.patch_sweep, run on the server: `progress(done, total)` is called (from the link's
        thread) as the server's reports arrive; `cancel` (an Event or a callable) stops it between forwards there,
        and the partial result comes back with cancelled=True."""
        # cancelled before it is sent: the server returns at once what a cancelled sweep returns (nothing computed)
        early = cancel is not None and bool(cancel.is_set() if hasattr(cancel, "is_set") else cancel())
        body = {"model": model.handle, "clean": self._prompt_ref(clean, "clean"), "corrupt": self._prompt_ref(corrupt, "corrupt"),
                "args": [int(token_a), None if token_b is None else int(token_b)],
                "kwargs": {"kind": kind, "align": align, "position": None if position is None else int(position),
                           "positions": None if positions is None else [int(p) for p in positions],
                           "batch": None if batch is None else int(batch)}, "cancelled": early}
        report = (lambda p: progress(int(p[0]), int(p[1]))) if progress is not None else None
        return self.call("patch_sweep", body, progress=report, cancel=cancel)

    def restore_session(self, state: dict, model: RemoteModel) -> RemoteSession:
        """A saved session (engine.session_file's state) put back on the server: gates, neuron gates, prompt
        ids, history."""
        from ..session_file import SessionFileError, _parse_expert_gates, _parse_gates, _parse_neuron_gates

        try:
            gates = _parse_gates(state)
            neuron_gates = _parse_neuron_gates(state)
            expert_gates = _parse_expert_gates(state)
            history = [tuple(e) for e in state["history"]]
            s = state["settings"]
            kwargs = {"temperature": s["temperature"], "top_k": s["top_k"], "top_p": s["top_p"], "greedy": s["greedy"],
                      "seed": s["seed"]}
        except (TypeError, ValueError, KeyError) as exc:
            raise SessionFileError(f"the session file is inconsistent or damaged: {exc!r}") from exc
        previous, previous_neurons, previous_experts = model.gates(), model.neuron_gates(), model.expert_gates()
        try:
            _set_gates(model, gates, neuron_gates, expert_gates)
            session = RemoteSession(model, state["prompt_ids"], source=state.get("source_ids"), **kwargs,
                                    _restore=(state.get("messages"), state.get("chat_options"), history))
        except EngineGone:
            raise  # nothing to put back on a server that is gone: a reconnect restores what the client holds
        except Exception:
            # as in-process: the model's gates as they were (the old session on screen goes on with them)
            from ..trace import parse_capture_name

            _set_gates(model, [(*parse_capture_name(n), h, v) for n, vs in previous.items() for h, v in enumerate(vs)],
                       [(n.split(".")[0], int(n.split(".")[1]), j, v) for n, g in previous_neurons.items() for j, v in g.items()],
                       [(layer, e, v) for layer, g in previous_experts.items() for e, v in g.items()])
            raise
        self._sessions.add(session)
        return session


def _set_gates(model: RemoteModel, gates: Sequence[tuple], neuron_gates: Sequence[tuple],
               expert_gates: Sequence[tuple] = ()) -> None:
    """All gates back to 1, then these: [(kind, layer, head, value)], [(stack, layer, neuron, value)],
    [(layer, expert, value)]."""
    model.clear_gates()
    model.clear_expert_gates()
    for kind, layer, head, value in gates:
        if value != 1.0:
            model.set_head_gate(kind, layer, head, value)
    for stack, layer, neuron, value in neuron_gates:
        model.set_neuron_gate(layer, neuron, value, stack)
    for layer, expert, value in expert_gates:
        model.set_expert_gate(layer, expert, value)


@dataclass(frozen=True)
class RemoteConfig:
    vocab_size: int
    mask_token_id: int | None
    model_type: str
    eos_token_ids: tuple[int, ...]
    n_kv_heads: int | None
    family: str


class RemoteTokenizer:
    """Display strings and special ids answered here (sent once with the model); the rest asked."""

    def __init__(self, model: RemoteModel, desc: dict) -> None:
        self._model = model
        self._vocab = desc["vocab"]
        self.special_ids = frozenset(desc["special_ids"])
        self.has_chat_template = bool(desc["has_chat_template"])
        self._eot = tuple(desc["end_of_turn_ids"])

    def _ask(self, method: str, *args: Any, **kwargs: Any) -> Any:
        m = self._model
        return m.engine.call("tokenizer", {"model": m.handle, "method": method, "args": list(args), "kwargs": kwargs})

    def display(self, i: int) -> str:
        return self._vocab[int(i)] if 0 <= int(i) < len(self._vocab) else self._ask("display", int(i))

    def is_special(self, i: int) -> bool:
        return int(i) in self.special_ids

    def end_of_turn_ids(self) -> tuple[int, ...]:
        return self._eot

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def encode(self, text: str, special_tokens: bool = True) -> list[int]:
        return self._ask("encode", text, special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._ask("decode", [int(i) for i in ids], skip_special_tokens)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return self._ask("token_strings", [int(i) for i in ids])

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kw: Any) -> str:
        return self._ask("render_chat", [dict(m) for m in messages], add_generation_prompt, **kw)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kw: Any) -> list:
        return self._ask("apply_chat_template", [dict(m) for m in messages], add_generation_prompt, **kw)


class RemoteModel:
    """A model open on the server: its description answered here, its forwards there."""

    def __init__(self, engine: RemoteEngine, load_args: dict) -> None:
        self.engine = engine
        self._load_args = load_args
        self.handle = 0
        self._gates: dict[str, tuple[float, ...]] = {}
        self._neuron_gates: dict[str, dict[int, float]] = {}  # "decoder.3.mlp" -> {neuron: gate != 1}
        self._expert_gates: dict[int, dict[int, float]] = {}  # MoE layer -> {expert: gate != 1} (transformers backend)
        self.gate_version = 0  # bumped when gates change: sessions fetch their recomputed trace then

    def _open(self, progress: Callable[[float, str], None] | None, cancel: Any) -> None:
        report = (lambda p: progress(p["fraction"], p["message"])) if progress is not None else None
        answer = self.engine.call("load", self._load_args, progress=report, cancel=cancel)
        self.handle = answer["handle"]
        self._describe(answer["desc"])

    def _reopen(self) -> None:
        from ..trace import parse_capture_name

        gates, neuron_gates, experts = dict(self._gates), self.neuron_gates(), self.expert_gates()
        self._open(None, None)
        for name, values in gates.items():
            kind, layer = parse_capture_name(name)
            for head, value in enumerate(values):
                if value != 1.0:
                    self._gate("set_head_gate", kind, layer, head, value)
        for name, values in neuron_gates.items():
            stack, layer, _ = name.split(".")
            for neuron, value in values.items():
                self._gate("set_neuron_gate", int(layer), int(neuron), float(value), stack)
        for layer, values in experts.items():
            for expert, value in values.items():
                self._gate("set_expert_gate", int(layer), int(expert), float(value))

    def _describe(self, d: dict) -> None:
        self.name, self.folder, self.family = d["name"], d["folder"], d["family"]
        self.kinds, self.layers_by_kind = tuple(d["kinds"]), dict(d["layers_by_kind"])
        self.n_heads, self.n_layers, self.n_params = d["n_heads"], d["n_layers"], d["n_params"]
        self.device, self.dtype, self.load_seconds = d["device"], d["dtype"], d["load_seconds"]
        self.max_positions, self.has_logits = d["max_positions"], d["has_logits"]
        self.no_logits_reason, self.dtype_reason = d["no_logits_reason"], d["dtype_reason"]
        self.rebuilds_patterns = d["rebuilds_patterns"]
        self.backend = d.get("backend", "native")  # "transformers" when the server runs it through transformers
        self.placement = d.get("placement", str(self.device))  # which layers on which of the server's devices
        self.devices = tuple(d.get("devices") or (self.device,))  # several: spread over them (serve --device auto)
        self.config = RemoteConfig(**d["config"])
        self.tokenizer = RemoteTokenizer(self, d["tokenizer"])
        self.stop_ids = tuple(d["stop_ids"])
        self._gates = dict(d["gates"])
        self._neuron_gates = {k: dict(v) for k, v in d["neuron_gates"].items()}
        self._expert_gates = {int(k): dict(v) for k, v in (d.get("expert_gates") or {}).items()}
        self.moe_layers = list(d.get("moe_layers") or [])  # the transformers backend's mixture-of-experts layers
        self.n_experts = d.get("n_experts")
        self.quantization = str(d.get("quantization") or "")  # e.g. "mxfp4, dequantised to bfloat16"

    def __repr__(self) -> str:
        return f"RemoteModel({self.name!r}, {self.family}, on {self.device} at {self.engine.address})"

    # -- head and neuron gates -----------------------------------------------------------------
    def _gate(self, method: str, *args: Any) -> None:
        """Change gates on the server; its answer is every gate now (kept here: gates() asks nothing)."""
        answer = self.engine.call("model", {"model": self.handle, "method": method, "args": list(args)})
        self._gates = dict(answer["gates"])
        self._neuron_gates = {k: dict(v) for k, v in answer["neuron_gates"].items()}
        self._expert_gates = {int(k): dict(v) for k, v in (answer.get("expert_gates") or {}).items()}
        self.gate_version += 1

    def set_head_gate(self, kind: str, layer: int, head: int, value: float) -> None:
        self._gate("set_head_gate", kind, int(layer), int(head), float(value))

    def clear_gates(self) -> None:
        """Every head gate and every neuron gate back to 1 (as engine.Model.clear_gates)."""
        self._gate("clear_gates")

    def gates(self) -> dict[str, tuple[float, ...]]:
        return dict(self._gates)

    @property
    def main_stack(self) -> str:
        """"decoder", or "encoder" for an encoder-only model (as engine.Model.main_stack)."""
        return "encoder" if self.family == "encoder" else "decoder"

    def set_neuron_gate(self, layer: int, neuron: int, value: float, stack: str | None = None) -> None:
        self._gate("set_neuron_gate", int(layer), int(neuron), float(value), stack or self.main_stack)

    def neuron_gates(self) -> dict[str, dict[int, float]]:
        return {name: dict(v) for name, v in self._neuron_gates.items()}

    def clear_neuron_gates(self) -> None:
        self._gate("clear_neuron_gates")

    # -- expert gates (a mixture-of-experts model on the server's transformers backend, as HFModel's) -----
    def set_expert_gate(self, layer: int, expert: int, value: float) -> None:
        """The router's weight for `expert` in MoE layer `layer` multiplied by `value` wherever it is chosen."""
        self._gate("set_expert_gate", int(layer), int(expert), float(value))

    def expert_gates(self) -> dict[int, dict[int, float]]:
        return {layer: dict(g) for layer, g in self._expert_gates.items()}

    def clear_expert_gates(self) -> None:
        if self._expert_gates:  # nothing to ask the server otherwise (a native model has none to clear)
            self._gate("clear_expert_gates")

    # -- one full forward ------------------------------------------------------------------------
    def run(self, text_or_ids: str | Sequence[int] | None, source: str | Sequence[int] | None = None) -> RemoteTrace:
        answer = self.engine.call("run", {"model": self.handle, "prompt": _plain(text_or_ids), "source": _plain(source),
                                          **self.engine._limit()})
        return TraceMirror(self.engine.fetch_logits, self.engine).apply(answer)


def _plain(x: Any) -> Any:
    return x if x is None or isinstance(x, str) else [int(i) for i in x]


@dataclass(frozen=True)
class RemoteStep:
    """As engine.Step; `probs` and `logits` (the whole vocabulary) are fetched when first read, `top` came along."""

    position: int
    token_id: int
    token: str
    how: str
    before: RemoteTrace  # the trace the token was chosen from
    settings: SamplingSettings

    @property
    def logits(self) -> np.ndarray:
        at = self.position if self.before.family == "encoder" else len(self.before) - 1
        return self.before.logits_at(at)

    @property
    def probs(self) -> np.ndarray:
        s = self.settings
        return distribution(self.logits, s.temperature, s.top_k, s.top_p)

    @property
    def prob(self) -> float:
        return float(self.probs[self.token_id])

    @property
    def top(self) -> tuple | None:
        """(ids, logits) of the best candidates the token was chosen from, as they came with the step
        before (no vocabulary-wide fetch); None for a prompt's last row or an encoder."""
        rows = self.before.logit_rows
        return getattr(rows[-1], "top", None) if rows else None


class RemoteSession:
    """As engine.Session, run on the server; the trace mirrored here."""

    def __init__(self, model: RemoteModel, prompt: str | Sequence[int] | None = None, source: str | Sequence[int] | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                 greedy: bool = True, capture: bool | Collection[str] = True,
                 messages: Sequence[Mapping[str, Any]] | None = None, chat_options: Mapping[str, Any] | None = None,
                 cancel: Any = None, _restore: tuple | None = None) -> None:
        self.model = model
        self.engine = model.engine
        self.settings = SamplingSettings(temperature, top_k, top_p, greedy, seed)  # checked here, as in-process
        self.capture = capture
        self.history: list[tuple] = []
        kwargs: dict[str, Any] = {"prompt": _plain(prompt), "source": _plain(source), "temperature": temperature,
                                  "top_k": top_k, "top_p": top_p, "seed": seed, "greedy": greedy,
                                  "capture": capture if isinstance(capture, bool) else sorted(capture)}
        if messages is not None:
            kwargs["messages"] = [dict(m) for m in messages]
        if chat_options:
            kwargs["chat_options"] = dict(chat_options)
        body: dict[str, Any] = {"model": model.handle, "kwargs": kwargs}
        if _restore is not None:
            messages_, options, history = _restore
            body["restore"] = (messages_, options)
            body["history"] = [list(e) for e in history]
            self.history = [tuple(e) for e in history]
        self._open(body, cancel)

    def _open(self, body: dict, cancel: Any = None) -> None:
        # `cancel` set while the server prefills: the cancel message stops it between layers there (Cancelled)
        answer = self.engine.call("session_new", {**body, "with_row": self.engine.prefetch_logits, **self.engine._limit()},
                                  cancel=cancel)
        self.handle = answer["handle"]
        self._mirror = TraceMirror(self.engine.fetch_logits, self.engine)
        self._gate_version = self.model.gate_version
        self._take(answer, history=False)

    def _restore(self) -> None:
        """Put this session back on a (restarted) server from what the client holds."""
        s = self.settings
        kwargs = {"prompt": list(self.prompt_ids), "source": self.source_ids, "temperature": s.temperature,
                  "top_k": s.top_k, "top_p": s.top_p, "seed": s.seed, "greedy": s.greedy,
                  "capture": self.capture if isinstance(self.capture, bool) else sorted(self.capture)}
        self._open({"model": self.model.handle, "kwargs": kwargs, "restore": (self.messages, self.chat_options),
                    "history": [list(e) for e in self.history]})

    def _take(self, answer: dict, history: bool = True) -> Any:
        st = answer["state"]
        self.finished = st["finished"]
        self.settings = SamplingSettings(**st["settings"])
        if "prompt_ids" in st:  # what never changes comes when the session opens
            self.n_prompt, self.prompt_ids, self.source_ids = st["n_prompt"], st["prompt_ids"], st["source_ids"]
            self.messages = tuple(st["messages"]) if st["messages"] is not None else None
            self.chat_options, self.stop_ids = st["chat_options"], tuple(st["stop_ids"])
        if history:
            self.history += [tuple(e) for e in answer["history"]]
        if "delta" in answer:
            self._mirror.apply(answer)
            if "row" in answer:
                self._mirror.seed_row(*answer["row"])
        return answer.get("result")

    def _do(self, method: str, *args: Any, cancel: Any = None, **kwargs: Any) -> Any:
        self._gate_version = self.model.gate_version  # the server recomputes first if the gates changed
        body = {"session": self.handle, "method": method, "args": list(args), "kwargs": kwargs,
                "history_known": len(self.history), "with_row": self.engine.prefetch_logits}
        follow = getattr(self.engine, "pattern_cache", None)
        if follow is not None and getattr(self._mirror.trace, "link", None) is not None:
            body["follow"] = follow[1].items()  # answered with the step (patterns kept on the server)
        answer = self.engine.call("session", body, cancel=cancel)
        return self._take(answer)

    # -- as engine.Session ---------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.model.family

    @property
    def trace(self) -> RemoteTrace:
        if self.model.gate_version != self._gate_version:
            self._do("trace")  # the server notices the changed gates and recomputes
        return self._mirror.trace

    @property
    def ids(self) -> list[int]:
        return list(self._mirror.token_ids)

    @property
    def steps(self) -> tuple:
        return tuple(self._mirror.steps)

    @property
    def reply(self) -> str:
        return self._do("reply")

    @property
    def temperature(self) -> float:
        return self.settings.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.set_sampling(temperature=value)

    def set_sampling(self, **changes: Any) -> None:
        SamplingSettings(**{**self.settings.__dict__, **changes})  # the same SamplingError here, before asking
        self._do("set_sampling", **changes)

    def distribution(self, position: int | None = None) -> np.ndarray:
        return self._do("distribution", position)

    def step(self, token_id: int | None = None, cancel: Any = None) -> RemoteStep:
        """As engine.Session.step; `cancel` (an Event or a callable) stops the forward on the server (Cancelled,
        the session as it was)."""
        before, settings = self.trace, self.settings
        r = self._do("step", token_id, cancel=cancel)
        return RemoteStep(r["position"], r["token_id"], r["token"], r["how"], before, settings)

    def back(self) -> Any:
        return self._do("back")

    def branch(self, token_id: int, cancel: Any = None) -> RemoteStep:
        """As engine.Session.branch: a cancelled one puts the undone step back."""
        undone = self.steps[-1] if self.steps else None
        self.back()
        try:
            return self.step(token_id, cancel=cancel)
        except Cancelled:
            if undone is not None:
                self.restore_steps([undone])
            raise

    def restore_steps(self, steps: Sequence[Any]) -> None:
        """As engine.Session.restore_steps: steps undone by back() fed again as they were."""
        self.replay([("step", st.token_id, st.how, st.prob) for st in steps])

    def mask(self, position: int) -> Any:
        return self._do("mask", int(position))

    def recompute(self) -> None:
        self._do("recompute")

    def replay(self, history: list) -> None:
        """Re-apply recorded events with their original "how" and probability (as engine.Session.replay)."""
        self._do("replay", [list(e) for e in history])

    def live_history(self) -> list:
        return live_events(self.history)
