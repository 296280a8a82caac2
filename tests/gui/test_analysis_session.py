"""File menu: save and reopen a session (ablations and view included), a damaged file, and the exports."""

from __future__ import annotations

import csv
import json

import numpy as np

from tests.gui.conftest import open_model, wait_idle


def _wait_trace(qtbot, win, old):
    qtbot.waitUntil(lambda: win.state.trace is not old, timeout=60_000)
    wait_idle(qtbot, win)
    return win.state.trace


def test_save_and_open_session_with_ablation(qtbot, window, checkpoints, tmp_path):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    io_ = win.analysis.session_io
    file_menu = win.registry.menu("file").actions()
    assert win.registry.action("file.save_session") in file_menu and win.registry.action("file.open_session") in file_menu
    trace = win.state.trace
    win.analysis.ablation.ablate(1, 2)
    trace = _wait_trace(qtbot, win, trace)
    win.client.step()
    trace = _wait_trace(qtbot, win, trace)
    win.state.select(layer=1, head=3, query=2)
    win.analysis.rollout.set_active(True)
    path = tmp_path / "s.json"
    io_.save_session(str(path))
    qtbot.waitUntil(lambda: io_.saved is not None, timeout=30_000)
    saved = json.loads(path.read_text())
    assert saved["gates"] == {"decoder.1.attn": [1.0, 1.0, 0.0, 1.0]}
    assert saved["view"]["layer"] == 1 and saved["view"]["rollout"] is True

    # change everything, then open the file again
    win.analysis.rollout.set_active(False)
    win.analysis.ablation.clear()
    after_clear = _wait_trace(qtbot, win, trace)
    win.client.step()
    _wait_trace(qtbot, win, after_clear)
    win.state.select(layer=0, head=0)
    old = win.state.trace
    io_.open_session(str(path))
    opened = _wait_trace(qtbot, win, old)
    assert opened.token_ids == trace.token_ids
    assert opened.gates == {"decoder.1.attn": (1.0, 1.0, 0.0, 1.0)}
    np.testing.assert_allclose(opened.attention("self", 1), trace.attention("self", 1), atol=1e-5)
    s = win.state
    assert (s.layer, s.head, s.query) == (1, 3, 2) and win.analysis.rollout.active
    assert "1 head ablated" in win.analysis.ablation.status.text()
    assert win.errors == []

    # a damaged file: a message, the session on screen stays and keeps working
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "attention-inspector-session", "version": 1, "model": ')
    io_.open_session(str(bad))
    qtbot.waitUntil(lambda: bool(win.errors), timeout=30_000)
    assert "damaged" in win.last_error
    assert win.state.trace is opened
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**saved, "version": 99}))
    io_.open_session(str(other))
    qtbot.waitUntil(lambda: len(win.errors) == 2, timeout=30_000)
    assert "version" in win.last_error
    n = len(opened)
    win.client.step()
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=30_000)


def test_exports(qtbot, window, checkpoints, tmp_path):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    io_ = win.analysis.exports
    png = io_.export_view(str(tmp_path / "v.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = io_.export_view(str(tmp_path / "v.svg"))
    assert b"<svg" in svg.read_bytes()
    pattern = win.attention_view.pattern
    npy = io_.export_pattern(str(tmp_path / "p.npy"))
    np.testing.assert_allclose(np.load(npy), pattern)
    out = io_.export_pattern(str(tmp_path / "p.csv"))
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert len(rows) == pattern.shape[0] + 1 and len(rows[0]) == pattern.shape[1] + 1
    assert float(rows[1][1]) == np.float32(f"{pattern[0, 0]:.6g}")
    summary = json.loads(io_.export_summary(str(tmp_path / "s.json")).read_text())
    assert summary["tokens"] == list(win.state.trace.tokens) and summary["family"] == "decoder"
    assert summary["view"]["kind"] == "self"
    assert win.errors == []


def test_open_session_of_another_model_loads_it(qtbot, window, checkpoints, tmp_path):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    io_ = win.analysis.session_io
    win.client.step()
    qtbot.waitUntil(lambda: bool(win.state.trace.steps), timeout=30_000)
    wait_idle(qtbot, win)
    saved = win.state.trace
    path = tmp_path / "s.json"
    io_.save_session(str(path))
    qtbot.waitUntil(lambda: io_.saved is not None, timeout=30_000)
    open_model(qtbot, win, checkpoints["encoder-decoder"])
    old = win.state.trace
    io_.open_session(str(path))
    opened = _wait_trace(qtbot, win, old)
    assert win.state.model.family == "decoder" and opened.token_ids == saved.token_ids
    assert win.prompt_panel.model_box.currentText() == str(checkpoints["decoder"])
    assert win.attention_view.kind_box.currentData() == "self"
    n = len(opened)
    win.client.step()  # the reopened session goes on
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=30_000)
    assert win.errors == []


def test_a_name_without_suffix_gets_the_chosen_type():
    from gui.features.exports import _with_suffix

    assert _with_suffix("/tmp/view", "SVG (*.svg)") == "/tmp/view.svg"
    assert _with_suffix("/tmp/view.png", "SVG (*.svg)") == "/tmp/view.png"
    assert _with_suffix("/tmp/p", "NumPy array (*.npy)") == "/tmp/p.npy"
