"""A running prefill stops at its next cancel point (between layers) when its flag is set from another thread,
and leaves every session as it was: no half-appended cache, trace or ids."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine import Cancelled, Session
from engine.cancel import cancellable, checkpoint

LONG = 60  # the gpt2 factory's context is 64 positions


def _long_ids(model) -> list[int]:
    rng = np.random.default_rng(0)
    return [int(i) for i in rng.integers(5, model.config.vocab_size, LONG)]


def _same(a: Session, b: Session, atol: float = 0.0) -> None:
    assert a.ids == b.ids
    ta, tb = a.trace, b.trace
    np.testing.assert_allclose(ta.logits, tb.logits, rtol=0, atol=atol)
    for layer in range(a.model.n_layers):
        np.testing.assert_allclose(ta.attention("self", layer), tb.attention("self", layer), rtol=0, atol=1e-6)


def _blocking_first_layer(model, started: threading.Event, release: threading.Event):
    """A pre-hook on layer 0 that says the forward is inside the stack and waits until the other thread has
    set the cancel flag: the cancel then lands in the middle of a running forward, deterministically."""
    def hook(_m, _a):
        started.set()
        assert release.wait(30), "the cancelling thread never answered"
    return model.net.decoder.layers[0].register_forward_pre_hook(hook)


def test_cancel_from_another_thread_stops_a_running_prefill(gpt):
    old = Session(gpt, "the cat sat")
    old.step()
    cancel, started, release = threading.Event(), threading.Event(), threading.Event()
    outcome: list[BaseException | Session] = []

    def prefill() -> None:
        try:
            outcome.append(Session(gpt, _long_ids(gpt), cancel=cancel))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    handle = _blocking_first_layer(gpt, started, release)
    try:
        worker = threading.Thread(target=prefill)
        worker.start()
        assert started.wait(30)
        cancel.set()  # from this thread, while the worker is inside the forward
        release.set()
        worker.join(30)
    finally:
        handle.remove()
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled), outcome
    # the older session is untouched: it still steps, and equals one that never saw the cancelled prefill
    old.step()
    fresh = Session(gpt, "the cat sat")
    fresh.step()
    fresh.step()
    _same(old, fresh)


def test_cancelled_step_leaves_the_session_as_before(gpt):
    s = Session(gpt, "the cat sat on")
    s.step()
    n_ids, n_cache = len(s.ids), s._cache.length
    calls = iter(range(100))
    with cancellable(lambda: next(calls) >= 1), pytest.raises(Cancelled):  # past layer 0, before layer 1
        s.step()
    assert len(s.ids) == n_ids and s._cache.length == n_cache and len(s.trace.steps) == 1
    s.step()
    fresh = Session(gpt, "the cat sat on")
    fresh.step()
    fresh.step()
    _same(s, fresh)


def test_an_unset_flag_changes_nothing(gpt):
    plain = Session(gpt, _long_ids(gpt))
    flagged = Session(gpt, _long_ids(gpt), cancel=threading.Event())
    _same(plain, flagged)


def test_checkpoint_outside_a_cancellable_block_does_nothing():
    checkpoint()
    with cancellable(None):
        checkpoint()
    with pytest.raises(TypeError):
        with cancellable(3):
            pass


@pytest.fixture(scope="module")
def hf_olmo(tmp_path_factory):
    from engine import load_model
    from tests import hf_factories

    return load_model(hf_factories.ARCHITECTURES["olmo3"](tmp_path_factory.mktemp("olmo3") / "ckpt"), device="cpu")


def test_transformers_backend_prefill_stops_between_layers(hf_olmo):
    assert type(hf_olmo).__name__ == "HFModel"  # the transformers backend, with a pre-hook on each decoder layer
    old = Session(hf_olmo, "the cat sat")
    old.step()
    checks = iter(range(100))
    with pytest.raises(Cancelled):
        Session(hf_olmo, "the cat sat on the mat and the dog sat on the log", cancel=lambda: next(checks) >= 1)
    s = Session(hf_olmo, "the cat sat")
    s.step()
    n_cache = s._cache.length
    with cancellable(lambda: True), pytest.raises(Cancelled):
        s.step()
    assert s._cache.length == n_cache and len(s.trace.steps) == 1
    s.step()
    old.step()
    # float rounding only (≤ 1e-6 seen): transformers' cache after a roll-back holds the same values in
    # differently shaped buffers than one that never grew past them
    _same(old, s, atol=1e-5)


def _tripped_after_first_check():  # noqa: ANN202
    """A cancel flag that is clear at the first cancel point (before layer 0) and set from the second on."""
    checks = iter(range(10_000))
    return lambda: next(checks) >= 1


@pytest.mark.parametrize("family", ["gpt", "marian", "bert"])
def test_step_and_branch_take_a_cancel_flag_and_leave_the_session_as_it_was(family, request):
    model = request.getfixturevalue(family)
    prompt = "the cat [MASK] on the [MASK]" if family == "bert" else "the cat sat on"
    kwargs = {"source": "the cat sat on the mat"} if family == "marian" else {}
    s = Session(model, prompt, **kwargs)
    s.step()
    ids, history, trace = list(s.ids), list(s.history), s.trace
    with pytest.raises(Cancelled):
        s.step(cancel=_tripped_after_first_check())
    assert s.ids == ids and s.history == history
    other = (ids[-1] + 1) % model.config.vocab_size if family != "bert" else (s.steps[-1].token_id + 1) % 50 + 5
    with pytest.raises(Cancelled):
        s.branch(other, cancel=_tripped_after_first_check())
    assert s.ids == ids and s.history == history  # the undone step is back, the history as it was
    for layer in range(model.n_layers):
        kind = "encoder" if family == "bert" else "self"
        np.testing.assert_allclose(s.trace.attention(kind, layer), trace.attention(kind, layer), rtol=0, atol=1e-6)
    np.testing.assert_allclose(s.trace.logits, trace.logits, rtol=0, atol=1e-6)
    s.step(cancel=threading.Event())  # an unset flag: the step runs
    fresh = Session(model, prompt, **kwargs)
    fresh.step()
    fresh.step()
    _same(s, fresh) if family != "bert" else np.testing.assert_array_equal(s.ids, fresh.ids)


def test_transformers_backend_step_and_branch_cancel(hf_olmo):
    s = Session(hf_olmo, "the cat sat")
    s.step()
    s.step()
    ids, history, n_cache = list(s.ids), list(s.history), s._cache.length
    with pytest.raises(Cancelled):
        s.step(cancel=_tripped_after_first_check())
    with pytest.raises(Cancelled):
        s.branch((ids[-1] + 1) % hf_olmo.config.vocab_size, cancel=_tripped_after_first_check())
    assert s.ids == ids and s.history == history and s._cache.length == n_cache
    s.step()
    fresh = Session(hf_olmo, "the cat sat")
    for _ in range(3):
        fresh.step()
    _same(s, fresh, atol=1e-5)
