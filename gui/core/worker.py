"""The engine's one worker thread, and the GUI-side client that talks to it.

The worker talks to one engine object: engine.local.LocalEngine (the model in this process) or
engine.remote.RemoteEngine (the model on a server); both have the same methods, so nothing here or in
the jobs asks which. Only the worker touches Model and Session (they are not thread-safe). The GUI sends requests
through queued signals; each carries an id, and the client drops results that a newer request
has made stale. What comes back is immutable: a ModelInfo or an engine.Trace (plain numpy).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from engine import Cancelled, EngineError, SessionError, Trace, share_cpu_with_ui
from engine.local import LocalEngine

from .load_jobs import LoadProgress, load_with_progress

log = logging.getLogger(__name__)

# ops whose result replaces the trace on screen; a newer one makes older ones stale
TRACE_OPS = ("session", "step", "back", "branch", "mask", "run", "load", "gates", "open_session", "reconnect")
PROGRESS_INTERVAL_S = 0.05  # a long run reports at most this often, so the GUI queue never floods


@dataclass(frozen=True)
class ModelInfo:
    """What the GUI may know about a loaded model (no torch objects)."""

    name: str
    folder: str | None
    family: str
    kinds: tuple[str, ...]
    layers_by_kind: dict[str, int]
    n_heads: int
    n_params: int
    device: str
    dtype: str
    load_seconds: float
    vocab: tuple[str, ...]  # display string of every token id, to label logit candidates
    mask_token: str | None
    max_positions: int
    has_logits: bool
    dtype_reason: str = ""  # why this dtype ("float32 on the CPU (4.9 GB of weights, 21.4 GB free)")
    has_chat_template: bool = False  # the prompt panel offers chat mode
    stop_ids: tuple[int, ...] = ()  # ids whose choice ends a generation (eos, the template's end of turn)
    backend: str = "native"  # which engine runs it: "native" or "transformers" (engine.hf_backend)
    placement: str = ""  # which layers on which device ("cuda:0 layers 0–31"), where the engine runs
    devices: tuple[str, ...] = ()  # the devices the weights are on, in forward order (several: a model spread over them)
    quantization: str = ""  # what became of quantised weights ("mxfp4, dequantised to bfloat16"), else ""

    @property
    def n_layers(self) -> int:
        return max(self.layers_by_kind.values())


@dataclass(frozen=True)
class SessionRequest:
    prompt: str
    source: str | None
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    greedy: bool = True


def settle_garbage_collector() -> None:
    """Collect now and freeze what survives (the model, Qt and library objects) out of the cyclic
    collector's reach. Otherwise a full collection now and then walks all of them while holding the
    GIL: a 100-150 ms freeze of the window in the middle of a run. Done while loading, when the
    window already shows that it is busy; unfreezing first lets the previous model's cycles go."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def model_info(model: Any, engine: Any) -> ModelInfo:
    tok = model.tokenizer
    cfg = model.config
    vocab = tuple(tok.display(i) for i in range(cfg.vocab_size))
    mask = tok.display(cfg.mask_token_id) if cfg.mask_token_id is not None else None
    return ModelInfo(
        name=model.name, folder=str(model.folder) if model.folder else None, family=model.family,
        kinds=tuple(model.kinds), layers_by_kind=dict(model.layers_by_kind), n_heads=model.n_heads,
        n_params=model.n_params, device=str(model.device), dtype=str(model.dtype).replace("torch.", ""),
        load_seconds=float(model.load_seconds or 0.0), vocab=vocab, mask_token=mask,
        max_positions=model.max_positions, has_logits=bool(model.has_logits),
        dtype_reason=str(getattr(model, "dtype_reason", "") or ""),
        has_chat_template=bool(getattr(tok, "has_chat_template", False)) and model.family == "decoder",
        stop_ids=tuple(engine.stop_token_ids(model)) if model.family != "encoder" else (),
        backend=str(getattr(model, "backend", "native")), placement=str(getattr(model, "placement", "") or ""),
        devices=tuple(str(d) for d in getattr(model, "devices", ()) or ()),
        quantization=str(getattr(model, "quantization", "") or ""))


class EngineWorker(QObject):
    """Lives in the worker thread. Each slot runs one request and answers with done/failed."""

    done = Signal(int, str, object)  # request id, op, ModelInfo | Trace | None
    progress = Signal(int, object)  # request id, Trace (during a run)
    failed = Signal(int, str, str)  # request id, op, message
    stopped = Signal(int, str, str)  # request id, op, message: Stop/Esc cancelled its forward; the session is as it was
    load_progress = Signal(int, object)  # request id, LoadProgress (gui/core/load_jobs.py)

    def __init__(self, engine: Any = None) -> None:
        super().__init__()
        self.engine = engine if engine is not None else LocalEngine()  # in-process or remote: the same methods
        # runs with a request id up to this one stop; an int, not an Event, so a Stop that arrives
        # before its run has started is not undone when the run begins (ints are set atomically)
        self._cancel_upto = 0
        self.model = None
        self.session: Any = None  # the engine's Session
        self._request: SessionRequest | None = None
        # what jobs (gui/core/jobs.py) keep between calls for the open model; emptied when it changes,
        # so it never keeps an old model alive
        self.cache: dict[str, Any] = {}
        # why the last new session was refused (a prompt too long …): the old session stays for the panels, but
        # stepping it would continue a prompt the box no longer shows, so steps are refused until a session
        # starts or the GUI goes back to this session's prompt (keep_session)
        self.refused: str | None = None

    def adopt(self, model: Any, session: Any) -> None:
        """Jobs that open a model or a session themselves (a session file) hand them over here."""
        if model is not self.model:
            self.cache.clear()
        self.model, self.session, self._request = model, session, None
        self.refused = None

    def switch_engine(self, engine: Any) -> None:
        """Talk to another engine from now on (a connect job); the open model and session belong to the old
        one and go with it."""
        old, self.engine = self.engine, engine
        self.adopt(None, None)
        self.cache.clear()
        if old is not engine:
            old.close()

    def cancel(self, upto: int) -> None:
        """Called from the GUI thread: runs with request id <= `upto` stop after the step in progress, a new
        session's prefill at its next layer."""
        self._cancel_upto = max(self._cancel_upto, upto)

    def _stop_check(self, rid: int) -> Any:
        """The cancel flag of request `rid` for a forward (Stop/Esc cancels ids up to the newest)."""
        return lambda: rid <= self._cancel_upto

    # one wrapper so every error, expected or not, becomes a message and the worker lives on
    def _do(self, rid: int, op: str, fn) -> None:  # noqa: ANN001
        try:
            result = fn()
        except Cancelled as exc:
            if op == "session":  # a stopped prefill: the prompt box holds text that did not start a session
                self._refuse(op, str(exc))
                self.failed.emit(rid, op, str(exc))
            else:
                log.info("%s stopped: %s", op, exc)
                self.stopped.emit(rid, op, str(exc))
            return
        except EngineError as exc:
            log.info("%s failed: %s", op, exc)
            self._refuse(op, str(exc))
            self.failed.emit(rid, op, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - an engine bug must not kill the thread
            log.error("unexpected error in %s:\n%s", op, traceback.format_exc())
            message = f"Unexpected {type(exc).__name__}: {exc} (details in the log)"
            self._refuse(op, message)
            self.failed.emit(rid, op, message)
            return
        if op == "session":
            self.refused = None
        self.done.emit(rid, op, result)

    def _refuse(self, op: str, message: str) -> None:
        if op == "session" and self.session is not None:
            self.refused = message

    def _session(self) -> Any:
        if self.session is None:
            raise EngineError("no session: open a model and type a prompt first")
        if self.refused is not None:
            raise SessionError(f"Step is off: the prompt box holds text that did not start a session ({self.refused}). "
                               "Fix the prompt, keep its last tokens, or go back to the session's prompt "
                               "(buttons under the prompt).")
        return self.session

    @Slot(int, str, object, object, object, object)
    def load(self, rid: int, source: str, device: str | None, dtype: str | None, cancel: Any = None,
             options: dict | None = None) -> None:
        def work() -> ModelInfo:
            # progress comes from this thread; `cancel` (a threading.Event) is set by the GUI thread
            model = load_with_progress(self.engine, source, device, dtype, lambda p: self.load_progress.emit(rid, p),
                                       cancel, options)
            # swap only after a successful load, so a broken folder leaves the old model usable
            self.adopt(model, None)
            info = model_info(model, self.engine)
            settle_garbage_collector()
            return info

        self._do(rid, "load", work)

    @Slot(int, object)
    def new_session(self, rid: int, req: SessionRequest) -> None:
        def work() -> Trace:
            if self.model is None:
                raise EngineError("no model is open; use File → Open model folder")
            family = self.model.family
            source = req.source if family == "encoder-decoder" else None
            prompt: str | None = req.prompt
            if family == "encoder-decoder" and not (source or "").strip():
                raise EngineError("type a source text for the encoder")
            if family == "encoder-decoder" and not prompt.strip():
                prompt = None  # the decoder starts from its start token
            # Stop/Esc (cancel ids up to this one) stops the prefill between layers, here or on a server: Cancelled,
            # and the old session stays exactly as it was
            self.session = self.engine.Session(self.model, prompt, source=source, temperature=req.temperature,
                                               top_k=req.top_k, top_p=req.top_p, seed=req.seed, greedy=req.greedy,
                                               cancel=self._stop_check(rid))
            self._request = req
            return self.session.trace

        self._do(rid, "session", work)

    @Slot(int, object)
    def set_sampling(self, rid: int, changes: dict) -> None:
        def work() -> None:
            if self.session is not None:
                self.session.set_sampling(**changes)

        self._do(rid, "sampling", work)

    @Slot(int, object)
    def step(self, rid: int, token_id: int | None) -> None:
        def work() -> Trace:
            s = self._session()
            s.step(token_id, cancel=self._stop_check(rid))  # Stop/Esc stops a long step at its next layer
            return s.trace

        self._do(rid, "step", work)

    @Slot(int)
    def back(self, rid: int) -> None:
        def work() -> Trace:
            s = self._session()
            s.back()
            return s.trace

        self._do(rid, "back", work)

    @Slot(int, int, int)
    def branch(self, rid: int, position: int, token_id: int) -> None:
        """Put `token_id` at `position`: step at the frontier, else go back to it and branch."""

        def work() -> Trace:
            s = self._session()
            if s.family == "encoder":
                mask_id = self.model.config.mask_token_id
                masked = s.ids[position] != mask_id
                if masked:
                    s.mask(position)
                first = s.ids.index(mask_id)
                if first != position:
                    raise EngineError(f"fill the first [MASK] (position {first}) before position {position}")
                try:
                    s.step(token_id, cancel=self._stop_check(rid))
                except Cancelled:
                    if masked:  # stopped: take the mask this request made back too
                        s.back()
                    raise
                return s.trace
            if position < s.n_prompt:
                raise EngineError("that token is part of the prompt; edit the prompt to change it")
            if position > len(s.ids):
                raise EngineError(f"position {position} is beyond the end of the sequence")
            undone = []
            while len(s.ids) > position:
                undone.append(s.steps[-1])
                s.back()
            try:
                s.step(token_id, cancel=self._stop_check(rid))
            except Cancelled:  # stopped: the steps undone on the way are fed again, as they were
                s.restore_steps(undone[::-1])
                raise
            return s.trace

        self._do(rid, "branch", work)

    @Slot(int, int)
    def mask(self, rid: int, position: int) -> None:
        def work() -> Trace:
            s = self._session()
            s.mask(position)
            return s.trace

        self._do(rid, "mask", work)

    @Slot(int, int)
    def run(self, rid: int, n: int) -> None:
        def work() -> Trace:
            s = self._session()
            last_report = time.monotonic()
            try:
                for _ in range(n):
                    if rid <= self._cancel_upto or s.finished:
                        break
                    try:
                        s.step(cancel=self._stop_check(rid))  # a long step stops at its next layer
                    except Cancelled:
                        break
                    if time.monotonic() - last_report > PROGRESS_INTERVAL_S:
                        self.progress.emit(rid, s.trace)
                        last_report = time.monotonic()
            except Exception:
                if s.steps:  # the steps taken before the error stay; show them with the message
                    self.progress.emit(rid, s.trace)
                raise
            return s.trace

        self._do(rid, "run", work)

    @Slot(int, str, object)
    def call(self, rid: int, op: str, fn) -> None:  # noqa: ANN001 - fn(worker) -> plain data or Trace
        """Jobs (gui/core/jobs.py): `fn` runs here, in the worker thread, with this worker. A job may read
        `model` and `session`, keep results in `cache`, and replace the model or session through adopt()."""
        self._do(rid, op, lambda: fn(self))


class EngineClient(QObject):
    """GUI-thread face of the worker: numbered requests out, fresh results in, stale ones dropped."""

    model_loaded = Signal(object)  # ModelInfo
    trace_ready = Signal(object, str)  # Trace, op
    error = Signal(str, str)  # op, message
    stopped = Signal(str, str)  # op, message: Stop/Esc cancelled a step's forward; the session is as it was
    busy_changed = Signal(bool, str)  # busy, what
    result_ready = Signal(int, str, object)  # request id, op, plain data (analysis ops through call())
    load_progress = Signal(object)  # LoadProgress of the newest load

    # queued into the worker thread
    _load = Signal(int, str, object, object, object, object)
    _new_session = Signal(int, object)
    _set_sampling = Signal(int, object)
    _step = Signal(int, object)
    _back = Signal(int)
    _branch = Signal(int, int, int)
    _mask = Signal(int, int)
    _run = Signal(int, int)
    _call = Signal(int, str, object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._next_id = 0
        self._latest_trace_id = 0  # results of older trace requests are stale
        self._latest_load_id = 0  # only a newer load makes a load stale (a session typed meanwhile does not)
        self._pending: dict[int, str] = {}
        self.forward_requests = 0  # requests that run the model; tests check a re-draw adds none
        self.running = False
        self.run_asked = 0  # steps the newest run was asked for
        self.stop_asked = False  # Stop (Esc) was pressed during the newest run
        self._progress: tuple[int, Trace] | None = None
        self._load_cancel: threading.Event | None = None  # the newest load's; cancel_load() sets it
        self._latest_session_id = 0
        self._stopped_upto = 0  # requests up to this id were issued before the last Stop
        threads = share_cpu_with_ui(reserve=1)  # a core stays free for the event loop while a run computes
        log.debug("engine: %d torch threads", threads)
        self._thread = QThread()
        self._thread.setObjectName("engine-worker")
        self.worker = EngineWorker()
        self.worker.moveToThread(self._thread)
        for sig, slot in ((self._load, self.worker.load), (self._new_session, self.worker.new_session),
                          (self._set_sampling, self.worker.set_sampling), (self._step, self.worker.step),
                          (self._back, self.worker.back), (self._branch, self.worker.branch),
                          (self._mask, self.worker.mask), (self._run, self.worker.run),
                          (self._call, self.worker.call)):
            sig.connect(slot)
        self.worker.done.connect(self._on_done)
        self.worker.progress.connect(self._on_progress)
        self.worker.failed.connect(self._on_failed)
        self.worker.stopped.connect(self._on_stopped)
        self.worker.load_progress.connect(self._on_load_progress)
        self._thread.start()

    # -- requests ------------------------------------------------------------------------------
    def _issue(self, op: str) -> int:
        self._next_id += 1
        rid = self._next_id
        if op == "load":
            self._latest_load_id = rid
        if op in TRACE_OPS:
            self._latest_trace_id = rid
            self.forward_requests += 1
            if self.running and op != "run":  # anything that changes the session ends a run first
                self.worker.cancel(rid - 1)
        self._pending[rid] = op
        if len(self._pending) == 1 or op == "load":
            self.busy_changed.emit(True, op)
        return rid

    @property
    def engine(self) -> Any:
        """The engine the worker talks to (for listings from any thread: both kinds answer thread-safely)."""
        return self.worker.engine

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    @property
    def loading(self) -> bool:
        """A model is being opened: stepping now would act on a session that is about to go."""
        return "load" in self._pending.values()

    def load(self, source: str, device: str | None = None, dtype: str | None = None, options: dict | None = None) -> int:
        """`options`: more keywords for engine.load_model (backend, trust_remote_code)."""
        rid = self._issue("load")
        self._load_cancel = threading.Event()
        self._load.emit(rid, source, device, dtype, self._load_cancel, dict(options or {}))
        return rid

    def cancel_load(self) -> bool:
        """Stop the newest load (the engine checks between chunks of weights; the open model stays).
        False when no load is in progress."""
        if not self.loading or self._load_cancel is None:
            return False
        self._load_cancel.set()
        return True

    @property
    def load_cancelled(self) -> bool:
        """The newest load was cancelled by cancel_load()."""
        return self._load_cancel is not None and self._load_cancel.is_set()

    def new_session(self, req: SessionRequest) -> int:
        rid = self._latest_session_id = self._issue("session")
        self._new_session.emit(rid, req)
        return rid

    def set_sampling(self, **changes: Any) -> int:
        rid = self._issue("sampling")
        self._set_sampling.emit(rid, changes)
        return rid

    def step(self, token_id: int | None = None) -> int:
        rid = self._issue("step")
        self._step.emit(rid, token_id)
        return rid

    def back(self) -> int:
        rid = self._issue("back")
        self._back.emit(rid)
        return rid

    def branch(self, position: int, token_id: int) -> int:
        rid = self._issue("branch")
        self._branch.emit(rid, position, token_id)
        return rid

    def mask(self, position: int) -> int:
        rid = self._issue("mask")
        self._mask.emit(rid, position)
        return rid

    def run(self, n: int) -> int:
        rid = self._issue("run")
        self.running = True
        self.run_asked, self.stop_asked = n, False
        self._run.emit(rid, n)
        return rid

    def call(self, op: str, fn) -> int:  # noqa: ANN001
        """Run fn(worker) in the worker thread. A Trace result comes back as trace_ready (ops in TRACE_OPS
        replace the trace and follow its staleness), anything else as result_ready with the request id."""
        rid = self._issue(op)
        self._call.emit(rid, op, fn)
        return rid

    def stop(self) -> None:
        """Cooperative: the worker checks between steps, so this takes effect at once (also for a run
        still waiting in the queue)."""
        self.stop_asked = self.stop_asked or self.running
        self._stopped_upto = self._next_id
        self.worker.cancel(self._next_id)

    @property
    def session_cancelled(self) -> bool:
        """The newest new-session request was stopped (Stop/Esc) while it waited or prefilled."""
        return 0 < self._latest_session_id <= self._stopped_upto and "session" not in self._pending.values()

    def shutdown(self) -> None:
        self.worker.cancel(self._next_id)
        self._thread.quit()
        if not self._thread.wait(5000):
            log.warning("the engine thread did not stop within 5 s")

    # -- results (GUI thread) ------------------------------------------------------------------
    def _finish(self, rid: int) -> str:
        op = self._pending.pop(rid, "?")
        if op == "run":
            self.running = False
        if not self._pending:
            self.busy_changed.emit(False, "")
        return op

    def _stale(self, rid: int, op: str) -> bool:
        if op == "load":
            return rid < self._latest_load_id
        return op in TRACE_OPS and rid < self._latest_trace_id

    @Slot(int, str, object)
    def _on_done(self, rid: int, op: str, payload: object) -> None:
        if self._progress is not None and self._progress[0] == rid:
            self._progress = None  # the final trace supersedes any progress still queued
        self._finish(rid)
        if self._stale(rid, op):
            log.debug("dropped stale %s result %d", op, rid)
            return
        if op == "load":
            self.model_loaded.emit(payload)
        elif isinstance(payload, Trace):
            self.trace_ready.emit(payload, op)
        else:
            self.result_ready.emit(rid, op, payload)

    @Slot(int, object)
    def _on_progress(self, rid: int, trace: Trace) -> None:
        if rid != self._latest_trace_id:
            return
        # coalesce: if the GUI fell behind, only the newest of the queued progress traces is drawn
        first = self._progress is None
        self._progress = (rid, trace)
        if first:
            QTimer.singleShot(0, self._flush_progress)

    def _flush_progress(self) -> None:
        pending, self._progress = self._progress, None
        if pending is not None and pending[0] == self._latest_trace_id and pending[0] in self._pending:
            self.trace_ready.emit(pending[1], "progress")

    @Slot(int, object)
    def _on_load_progress(self, rid: int, progress: LoadProgress) -> None:
        if rid == self._latest_load_id and rid in self._pending:
            self.load_progress.emit(progress)

    @Slot(int, str, str)
    def _on_stopped(self, rid: int, op: str, message: str) -> None:
        self._finish(rid)
        self.stopped.emit(op, message)

    def _on_failed(self, rid: int, op: str, message: str) -> None:
        pending, self._progress = self._progress, None
        if pending is not None and pending[0] == rid == self._latest_trace_id:
            self.trace_ready.emit(pending[1], "progress")  # what a run managed before it failed
        self._finish(rid)
        # an error is never dropped: even a stale request's failure is news to the person
        self.error.emit(op, message)
