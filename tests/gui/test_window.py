"""The window: hover and selection, keyboard, drag & drop, menus, remembered state, and the --screenshot command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt

from tests.gui.conftest import open_model, wait_idle

ROOT = Path(__file__).resolve().parents[2]


def test_hover_tints_and_tooltip_text(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    trace = win.state.trace
    q = len(trace) - 1
    win.token_strip._hover("main", q)
    strip_row = win.token_strip.main_row
    assert strip_row.n == len(trace)
    tints = [strip_row.tint(i) for i in range(strip_row.n)]
    row = trace.attention_row("self", win.state.layer, q)[win.state.head]
    np.testing.assert_allclose(tints, np.round(np.sqrt(row) * 32) / 32)  # square root of the weight, 1/32 steps
    win.token_strip._hover("main", -1)
    assert all(strip_row.tint(i) == 0 for i in range(strip_row.n))
    text = win.attention_view.describe(q, 0)
    assert "→" in text and f"{row[0]:.4f}" in text
    assert "masked" in win.attention_view.describe(0, 1)  # causal: later keys are not weights but a mask
    assert np.isnan(win.attention_view.image.image[0, 1]) and not np.isnan(win.attention_view.image.image[1, 0])
    # clicking a chip selects the query row
    qtbot.mouseClick(strip_row, Qt.MouseButton.LeftButton, pos=strip_row.rect(1).center())
    assert win.state.query == 1
    assert win.attention_view.row_box.rect().center().y() == 1


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
    qtbot.keyClick(win.attention_view.graphics, Qt.Key.Key_Comma)
    assert win.state.query == n - 2


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


def test_file_menus_list_models(qtbot, window, checkpoints):
    open_model(qtbot, window, checkpoints["decoder"])
    window._fill_recent_menu()
    assert [a.text() for a in window.recent_menu.actions()] == [str(checkpoints["decoder"])]
    window._fill_bundled_menu()
    window.hf_models.refresh()
    qtbot.waitUntil(lambda: window.hf_models.names is not None, timeout=30_000)  # scanned in another thread
    assert window.bundled_menu.actions() and window.hf_menu.actions()  # names, or a disabled "none" entry
    titles = [a.text() for a in window.view_menu.actions()]
    assert "All heads" in titles and "Next-token candidates" in titles


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


def test_a_colour_scheme_change_rethemes_the_plots(qtbot, window, checkpoints):
    from PySide6.QtWidgets import QApplication

    from gui.shell import style

    open_model(qtbot, window, checkpoints["decoder"])
    app = QApplication.instance()
    saved = app.palette()
    try:
        app.setPalette(style.dark_palette())
        qtbot.waitUntil(lambda: style.is_dark(window.palette()), timeout=5_000)  # palettes propagate by events
        window._on_scheme_changed()
        assert window.attention_view.graphics.backgroundBrush().color().lightness() < 128
    finally:
        app.setPalette(saved)
        window._on_scheme_changed()


def test_export_trace_writes_the_npz(qtbot, window, checkpoints, tmp_path):
    open_model(qtbot, window, checkpoints["decoder"])
    out = tmp_path / "trace.npz"
    window.export_trace(str(out))  # written in the engine's thread: the window does not wait for it
    qtbot.waitUntil(lambda: window.analysis.exports.written == str(out), timeout=30_000)
    with np.load(out) as data:
        assert "decoder.0.attn" in data.files
        assert data["decoder.0.attn"].shape[-1] == len(window.state.trace)


def test_a_layout_saved_with_other_docks_is_not_restored(qtbot, window, tmp_path):
    from PySide6.QtCore import QSettings

    from gui.shell.main_window import MainWindow

    window.save_settings()
    assert window.settings.value("docks") == ",".join(sorted(window.docks))
    ini = QSettings(str(tmp_path / "old.ini"), QSettings.Format.IniFormat)
    ini.setValue("window_state", window.saveState())
    ini.setValue("docks", "heads,logits,prompt,tokens")  # as saved before more docks existed
    other = MainWindow(settings=ini, devices=["cpu"])
    qtbot.addWidget(other)
    assert other.saveState() == other._default_state
    other.close()
