"""The worker thread: Stop, stale results, and every error shown in the window while the app keeps working."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from engine import Session
from tests.gui.conftest import open_model, wait_idle

ROOT = Path(__file__).resolve().parents[2]


def test_stop_interrupts_long_run(qtbot, window, checkpoints, monkeypatch):
    win = window
    open_model(qtbot, win, checkpoints["long-decoder"])
    real_step = Session.step

    def slow_step(self, *args, **kwargs):  # a tiny model runs ~1000 steps before a click lands; a real one does not
        time.sleep(0.005)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Session, "step", slow_step)
    n = len(win.state.trace)
    strip = win.token_strip
    strip.run_spin.setValue(100_000)
    qtbot.mouseClick(strip.run_button, Qt.MouseButton.LeftButton)
    assert strip.run_button.text() == "Stop"
    qtbot.waitUntil(lambda: len(win.state.trace) > n + 2, timeout=30_000)  # progress arrives during the run
    qtbot.mouseClick(strip.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not win.client.running, timeout=10_000)
    wait_idle(qtbot, win)
    stopped_at = len(win.state.trace)
    assert n + 2 < stopped_at < 1024
    assert strip.run_button.text() == "Run"
    # still usable
    qtbot.mouseClick(strip.step_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(win.state.trace) == stopped_at + 1, timeout=30_000)


def test_stale_results_are_dropped(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    n = len(win.state.trace)
    seen = []
    win.client.trace_ready.connect(lambda trace, op: seen.append(len(trace)))
    # both requests leave before any answer is handled, so the first answer is already stale
    win.client.step()
    win.client.step()
    wait_idle(qtbot, win)
    assert seen == [n + 2]
    assert len(win.state.trace) == n + 2


def test_typing_while_a_model_loads_does_not_lose_the_model(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    win.open_model(str(checkpoints["encoder"]))
    win.prompt_panel.request_session()  # e.g. the prompt's debounce fires during the load
    wait_idle(qtbot, win)
    assert win.state.model.family == "encoder"
    assert win.state.trace is not None and win.state.trace.family == "encoder"


def test_broken_folder_shows_error_and_app_keeps_working(qtbot, window, checkpoints, tmp_path):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    win.open_model(str(broken))
    qtbot.waitUntil(lambda: bool(win.errors), timeout=30_000)
    wait_idle(qtbot, win)
    assert "config.json" in win.last_error
    assert win.banner.isVisibleTo(win) and "config.json" in win.banner.label.text()
    # the old model is still open and steps
    assert win.state.model.family == "decoder"
    n = len(win.state.trace)
    win.token_strip.step()
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=30_000)
    assert not win.banner.isVisibleTo(win)  # a request that worked clears the old error
    # and another model opens fine
    open_model(qtbot, win, checkpoints["encoder"])
    assert not win.banner.isVisibleTo(win)


def test_missing_model_name_is_a_message(qtbot, window):
    window.open_model("no-such-bundled-model")
    qtbot.waitUntil(lambda: bool(window.errors), timeout=30_000)
    assert "no-such-bundled-model" in window.last_error
    assert window.banner.isVisibleTo(window)


def test_unexpected_worker_error_is_shown(qtbot, window, checkpoints, monkeypatch):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])

    def explode(self, token_id=None, cancel=None):  # noqa: ANN001
        raise RuntimeError("kaboom")

    monkeypatch.setattr(Session, "step", explode)
    win.token_strip.step()
    qtbot.waitUntil(lambda: bool(win.errors), timeout=30_000)
    assert "RuntimeError" in win.last_error and "kaboom" in win.last_error
    monkeypatch.undo()
    n = len(win.state.trace)
    win.token_strip.step()
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=30_000)


def test_a_run_that_fails_keeps_its_steps_and_says_why(qtbot, window, checkpoints, monkeypatch):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    n = len(win.state.trace)
    real_step = Session.step
    calls = []

    def flaky(self, token_id=None, cancel=None):  # noqa: ANN001
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return real_step(self, token_id, cancel=cancel)

    monkeypatch.setattr(Session, "step", flaky)
    win.client.run(10)
    qtbot.waitUntil(lambda: bool(win.errors), timeout=30_000)
    wait_idle(qtbot, win)
    assert "device lost" in win.last_error
    assert len(win.state.trace) == n + 2


def test_excepthook_shows_unexpected_errors(qtbot, window):
    from gui.shell.app import install_excepthook

    saved = sys.excepthook
    try:
        relay = install_excepthook(window)
        try:
            raise ValueError("lost in a slot")
        except ValueError as exc:
            sys.excepthook(type(exc), exc, exc.__traceback__)
        qtbot.waitUntil(lambda: "lost in a slot" in window.last_error, timeout=5_000)
        assert relay is not None
    finally:
        sys.excepthook = saved


def test_stop_before_the_run_starts_still_stops_it(qtbot, window, checkpoints, monkeypatch):
    import time

    win = window
    open_model(qtbot, win, checkpoints["long-decoder"])
    n = len(win.state.trace)
    real_step = Session.step

    def slow_step(self, token_id=None, cancel=None):  # noqa: ANN001 - the first step holds the worker for a moment
        time.sleep(0.5)
        monkeypatch.setattr(Session, "step", real_step)
        return real_step(self, token_id)  # without the cancel flag: this step runs to its end

    monkeypatch.setattr(Session, "step", slow_step)
    win.client.step()  # keeps the worker busy, so the run waits in the queue
    win.client.run(500)
    win.client.stop()
    wait_idle(qtbot, win)
    assert len(win.state.trace) == n + 1  # the step happened; the run stopped before its first step


def test_loading_a_model_freezes_the_survivors_out_of_the_cyclic_collector(qtbot, window, checkpoints):
    """A full collection during a run would walk every object of the model, Qt and the libraries while
    holding the GIL (~150 ms on GPT-2 small here); after a load they are frozen and it walks only new ones."""
    import gc

    gc.unfreeze()
    open_model(qtbot, window, checkpoints["decoder"], prompt="In the beginning")
    assert gc.get_freeze_count() > 10_000
    assert len(gc.get_objects()) < gc.get_freeze_count() / 5


def test_stop_during_a_long_prefill_cancels_it_and_keeps_the_session(qtbot, window, checkpoints):
    """Esc (generate.stop) while a new prompt's prefill runs: the worker's forward stops at its next layer, the
    status bar says so, no error banner, and the session before it is unchanged and steps again after Restore."""
    import threading

    win = window
    open_model(qtbot, win, checkpoints["long-decoder"])
    before = win.state.trace
    ids_before = list(win.client.worker.session.ids)
    started, release = threading.Event(), threading.Event()

    def hold(_m, _a):  # the prefill is inside the stack: hold it until Stop has been pressed
        started.set()
        release.wait(30)

    handle = win.client.worker.model.net.decoder.layers[0].register_forward_pre_hook(hold)
    try:
        win.prompt_panel.prompt_edit.setPlainText("a much longer prompt " * 20)
        win.prompt_panel.request_session()
        assert started.wait(30)
        win.registry.action("generate.stop").trigger()  # Esc
        release.set()
        wait_idle(qtbot, win)
    finally:
        release.set()
        handle.remove()
    assert win.client.session_cancelled
    assert "Stopped" in win.statusBar().currentMessage()
    assert not win.errors  # no banner: a cancel is not an error
    assert win.state.trace is before and win.client.worker.session.ids == ids_before
    win.prompt_panel.restore_button.click()  # back to the session's prompt: Step works again
    wait_idle(qtbot, win)
    n = len(win.state.trace)
    qtbot.mouseClick(win.token_strip.step_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=30_000)


def _hold_layer(layer):  # noqa: ANN001, ANN202
    """A forward pre-hook that holds the forward inside `layer` until released: (started, release, handle)."""
    import threading

    started, release = threading.Event(), threading.Event()

    def hold(_m, _a):  # noqa: ANN001, ANN202
        started.set()
        release.wait(30)

    return started, release, layer.register_forward_pre_hook(hold)


@pytest.mark.parametrize("how", ["step", "branch"])
def test_stop_during_one_long_step_cancels_it_and_keeps_the_session(qtbot, window, checkpoints, how):
    """Esc while one step's forward runs (held in layer 0, so Stop surely meets it running): the forward stops at
    the next layer, the status bar says so, no banner, and the session is as it was: same ids, the same trace, the
    same history of live events (a branch puts the step it undid back). Then Step works again."""
    from engine.session import live_events

    win = window
    open_model(qtbot, win, checkpoints["long-decoder"])
    qtbot.mouseClick(win.token_strip.step_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(win.state.trace.steps) == 1, timeout=30_000)
    wait_idle(qtbot, win)
    session = win.client.worker.session
    before, ids, live = win.state.trace, list(session.ids), live_events(session.history)
    attention = before.attention("self", 1).copy()
    started, release, handle = _hold_layer(win.client.worker.model.net.decoder.layers[0])
    try:
        if how == "step":
            win.token_strip.step()
        else:
            win.client.branch(len(ids) - 1, (ids[-1] + 1) % 50)
        assert started.wait(30)
        win.registry.action("generate.stop").trigger()  # Esc
        release.set()
        wait_idle(qtbot, win)
    finally:
        release.set()
        handle.remove()
    assert not win.errors  # a stop is not an error
    assert "Stopped" in win.statusBar().currentMessage() and "as it was" in win.statusBar().currentMessage()
    assert win.state.trace is before
    assert session.ids == ids and live_events(session.history) == live
    np.testing.assert_array_equal(session.trace.attention("self", 1), attention)
    n = len(win.state.trace)
    qtbot.mouseClick(win.token_strip.step_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=30_000)
    assert not win.errors
