"""Sampling re-draws, branching, Stop, errors, the excepthook and the --screenshot command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt

from engine import Session
from tests.gui.conftest import open_model, wait_idle

ROOT = Path(__file__).resolve().parents[2]


def test_temperature_redraws_without_forward_pass(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    trace = win.state.trace
    forwards = win.client.forward_requests
    before = win.logits_panel.bar_values.copy()
    win.prompt_panel.temperature_spin.setValue(0.3)
    after = win.logits_panel.bar_values.copy()
    assert after[0] > before[0]  # colder: the top candidate gains mass
    win.prompt_panel.top_k_spin.setValue(5)
    assert np.count_nonzero(win.logits_panel.bar_values) == 5
    assert win.state.trace is trace
    assert win.client.forward_requests == forwards
    wait_idle(qtbot, win)
    assert win.state.trace is trace  # set_sampling sent no new trace either


def test_branch_from_logits_panel(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    n = len(win.state.trace)
    panel = win.logits_panel
    # at the frontier a candidate is a forced step
    chosen = int(panel.candidate_ids[3])
    panel.choose(3)
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=30_000)
    wait_idle(qtbot, win)
    trace = win.state.trace
    assert trace.token_ids[-1] == chosen and trace.steps[-1].how == "forced"
    # viewing the last step (the query before it): a candidate there branches, same length
    win.state.select(query=n - 1)
    assert panel.target_position == n
    other = int(panel.candidate_ids[1])
    assert other != chosen or int(panel.candidate_ids[0]) != chosen
    panel.choose(1)
    qtbot.waitUntil(lambda: win.state.trace is not trace, timeout=30_000)
    wait_idle(qtbot, win)
    assert len(win.state.trace) == n + 1 and win.state.trace.token_ids[-1] == other
    # a prompt position cannot be branched: a message, nothing breaks
    win.state.select(query=0)
    panel.choose(0)
    qtbot.waitUntil(lambda: bool(win.errors), timeout=30_000)
    assert "prompt" in win.last_error
    assert len(win.state.trace) == n + 1


def test_stop_interrupts_long_run(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["long-decoder"])
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

    def explode(self, token_id=None):  # noqa: ANN001
        raise RuntimeError("kaboom")

    monkeypatch.setattr(Session, "step", explode)
    win.token_strip.step()
    qtbot.waitUntil(lambda: bool(win.errors), timeout=30_000)
    assert "RuntimeError" in win.last_error and "kaboom" in win.last_error
    monkeypatch.undo()
    n = len(win.state.trace)
    win.token_strip.step()
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=30_000)


def test_excepthook_shows_unexpected_errors(qtbot, window):
    from gui.app import install_excepthook

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


def test_hover_tints_and_tooltip_text(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    trace = win.state.trace
    q = len(trace) - 1
    win.token_strip._hover("main", q)
    tints = [c.tint for c in win.token_strip.main_row.chips[: len(trace)]]
    row = trace.attention_row("self", win.state.layer, q)[win.state.head]
    np.testing.assert_allclose(tints, np.round(np.sqrt(row) * 32) / 32)  # square root of the weight, 1/32 steps
    win.token_strip._hover("main", -1)
    assert all(c.tint == 0 for c in win.token_strip.main_row.chips)
    text = win.attention_view.describe(q, 0)
    assert "→" in text and f"{row[0]:.4f}" in text
    assert "masked" in win.attention_view.describe(0, 1)  # causal: later keys are not weights but a mask
    assert np.isnan(win.attention_view.image.image[0, 1]) and not np.isnan(win.attention_view.image.image[1, 0])
    # clicking a chip selects the query row
    qtbot.mouseClick(win.token_strip.main_row.chips[1], Qt.MouseButton.LeftButton)
    assert win.state.query == 1
    assert win.attention_view.row_box.rect().center().y() == 1


def test_window_state_is_remembered(qtbot, window):
    window.save_settings()
    assert window.settings.value("window_state") is not None
    assert window.settings.value("geometry") is not None


def test_screenshot_command_line(checkpoints, tmp_path):
    out = tmp_path / "shot.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run([sys.executable, "main.py", "--model", str(checkpoints["decoder"]), "--prompt", "And God",
                           "--steps", "3", "--screenshot", str(out), "--size", "1280x800"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_keyboard_steps_back_and_selects_heads(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    n = len(win.state.trace)
    win.attention_view.graphics.setFocus()
    qtbot.keyClick(win.attention_view.graphics, Qt.Key.Key_Right)
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=30_000)
    wait_idle(qtbot, win)
    qtbot.keyClick(win.attention_view.graphics, Qt.Key.Key_Left)
    qtbot.waitUntil(lambda: len(win.state.trace) == n, timeout=30_000)
    qtbot.keyClick(win.attention_view.graphics, Qt.Key.Key_BracketRight)
    qtbot.keyClick(win.attention_view.graphics, Qt.Key.Key_Down)
    assert (win.state.layer, win.state.head) == (1, 1)


def test_drop_a_checkpoint_folder_opens_it(qtbot, window, checkpoints):
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(checkpoints["encoder"]))])
    event = QDropEvent(QPointF(100, 100), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    wait_idle(qtbot, window)
    assert window.state.model is not None and window.state.model.family == "encoder"
    assert window.recent_models()[0] == str(checkpoints["encoder"])


def test_double_click_on_a_bar_chooses_it(qtbot, window, checkpoints):
    from PySide6.QtCore import QPointF

    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    panel = win.logits_panel
    n = len(win.state.trace)
    j = 2
    wanted = int(panel.candidate_ids[j])
    scene = panel.plot.getViewBox().mapViewToScene(QPointF(float(panel.bar_values[j]) / 2, j))
    assert panel.bar_at(scene) == j
    assert "probability" in panel.describe(j) and "logit" in panel.describe(j)
    pos = panel.plot.mapFromScene(scene)
    qtbot.mouseDClick(panel.plot.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    qtbot.mouseRelease(panel.plot.viewport(), Qt.MouseButton.LeftButton, pos=pos)  # QTest's double click ends pressed
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=30_000)
    assert win.state.trace.token_ids[-1] == wanted


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


def test_file_menus_list_models(qtbot, window, checkpoints):
    open_model(qtbot, window, checkpoints["decoder"])
    window._fill_recent_menu()
    assert [a.text() for a in window.recent_menu.actions()] == [str(checkpoints["decoder"])]
    window._fill_bundled_menu()
    window._fill_hf_menu()
    assert window.bundled_menu.actions() and window.hf_menu.actions()  # names, or a disabled "none" entry
    titles = [a.text() for a in window.view_menu.actions()]
    assert "All heads" in titles and "Next-token candidates" in titles


def test_a_run_that_fails_keeps_its_steps_and_says_why(qtbot, window, checkpoints, monkeypatch):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    n = len(win.state.trace)
    real_step = Session.step
    calls = []

    def flaky(self, token_id=None):  # noqa: ANN001
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return real_step(self, token_id)

    monkeypatch.setattr(Session, "step", flaky)
    win.client.run(10)
    qtbot.waitUntil(lambda: bool(win.errors), timeout=30_000)
    wait_idle(qtbot, win)
    assert "device lost" in win.last_error
    assert len(win.state.trace) == n + 2


def test_typing_while_a_model_loads_does_not_lose_the_model(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    win.open_model(str(checkpoints["encoder"]))
    win.prompt_panel.request_session()  # e.g. the prompt's debounce fires during the load
    wait_idle(qtbot, win)
    assert win.state.model.family == "encoder"
    assert win.state.trace is not None and win.state.trace.family == "encoder"


def test_return_in_the_model_box_opens_the_model(qtbot, window, checkpoints):
    edit = window.prompt_panel.model_box.lineEdit()
    edit.setText(str(checkpoints["decoder"]))
    edit.setFocus()
    with qtbot.waitSignal(window.prompt_panel.open_requested, timeout=5_000):
        qtbot.keyClick(edit, Qt.Key.Key_Return)
    wait_idle(qtbot, window)
    assert window.state.model is not None and window.state.model.family == "decoder"
    n = len(window.state.trace)
    window.prompt_panel.prompt_edit.setFocus()  # Return in the prompt is a new line, not a run
    qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_Return)
    assert not window.client.running and len(window.state.trace) == n
