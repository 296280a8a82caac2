"""The window never waits on a slow link for a trace whose patterns stay on the server (--mirror-limit 0, behind a
proxy holding every chunk 200 ms each way): hovering a new cell, another query's row plot, another layer's sink
column, rollout and the pattern export on a gpt-oss model make no network call from the GUI thread; each shows "…"
first and, once the answer lands, the same values the window shows with the model in process."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import Server, record_gui_thread_calls
from .test_slow_link import DelayProxy

pytest.importorskip("transformers")

TIMEOUT_MS = 120_000
PROMPT = "In the beginning God created the heaven and the earth."
CELL = (5, 2)  # (query, key) hovered
ROW = 3  # the query whose row is plotted


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    from tests import hf_factories

    root = tmp_path_factory.mktemp("hf-models")
    hf_factories.ARCHITECTURES["gpt_oss"](root / "gpt_oss")
    return root


def drawn(qtbot, win) -> None:
    qtbot.waitUntil(lambda: not win.client.busy and not win._chain, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: not win.head_grid.pending and not win.attention_view.pending, timeout=TIMEOUT_MS)


def look_around(qtbot, win, placeholders: list[str] | None) -> dict:
    """Another layer (its sink column), another query's row plot, a hovered cell, rollout: what each drew in the
    end. `placeholders` collects what was on screen right after each action (before its answer landed)."""
    view, got = win.attention_view, {}
    rollout = win.analysis.rollout
    shot = placeholders.append if placeholders is not None else (lambda _t: None)

    win.state.select(layer=1)
    shot(view._title)
    drawn(qtbot, win)
    got["sink"] = np.array(view.sink_row)
    assert got["sink"].size and "…" not in view._title

    view.row_plot_box.setChecked(True)
    win.state.select(query=ROW)
    shot(view.row_top.text())
    drawn(qtbot, win)
    got["row"] = np.array(view.row)
    assert view.row_top.text().startswith(f"query {ROW} ")

    view.hover(*CELL)
    shot(view.readout.text())
    drawn(qtbot, win)
    got["cell"] = view.hover_weight
    assert got["cell"] is not None and "…" not in view.readout.text()

    rollout.set_active(True)
    shot(view._title)
    drawn(qtbot, win)
    got["rollout"] = np.array(view.pattern)
    assert "rollout" in view._title and "…" not in view._title
    rollout.set_active(False)
    drawn(qtbot, win)
    return got


def test_reads_of_patterns_on_the_server_never_wait_in_the_gui_thread(qtbot, window, tmp_path, gpt_oss):
    win = window
    srv = Server(tmp_path, models_dirs=(gpt_oss,), extra=("--mirror-limit", "0"))
    host, port = srv.address.rsplit(":", 1)
    proxy = DelayProxy((host, int(port)))
    folder = str(gpt_oss / "gpt_oss")
    try:
        win.remote_engine.connect_to({"address": f"127.0.0.1:{proxy.port}", "token": srv.token})
        qtbot.waitUntil(lambda: win.client.engine.remote, timeout=TIMEOUT_MS)
        n_errors = len(win.errors)
        win.open_model(folder, prompt=PROMPT)
        drawn(qtbot, win)
        assert win.errors[n_errors:] == []
        assert win.state.trace.patterns_on_server and win.state.trace.n_layers["self"] >= 2

        in_gui_thread = record_gui_thread_calls(win.client.engine.conn)
        shown: list[str] = []
        far = look_around(qtbot, win, shown)
        # the pattern export reads the region in view the same way: written once it is here
        out = tmp_path / "pattern.npy"
        win.analysis.exports.export_pattern(str(out))
        qtbot.waitUntil(out.exists, timeout=TIMEOUT_MS)
        view = win.attention_view
        np.testing.assert_array_equal(np.load(out), view.exact_region(*view.visible_region()))
        assert in_gui_thread == [] and win.errors[n_errors:] == []  # the check above read what the export cached
        # each first showed the placeholder: nothing was here yet, nothing was waited for
        assert all("…" in text for text in shown), shown
    finally:
        from gui.core.engine_jobs import use_this_computer

        win.client.call("engine", use_this_computer())
        qtbot.waitUntil(lambda: not win.client.busy, timeout=TIMEOUT_MS)
        proxy.close()
        srv.stop()

    # the same model in process: every answer is here at once (no placeholder), and the values are the same
    win.state.select(layer=0, query=0)
    win.open_model(folder, prompt=PROMPT)
    drawn(qtbot, win)
    assert not getattr(win.state.trace, "patterns_on_server", False)
    near = look_around(qtbot, win, None)
    for name in ("sink", "row", "rollout"):
        np.testing.assert_allclose(far[name], near[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert far["cell"] == pytest.approx(near["cell"], rel=1e-4, abs=1e-6)
