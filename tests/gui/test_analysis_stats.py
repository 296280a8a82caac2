"""The head statistics dock: computed in the worker, sortable, a row selects its head, the grid tint."""

from __future__ import annotations

import math

from PySide6.QtCore import Qt

from tests.gui.conftest import open_model, wait_idle


def _show_stats(qtbot, win):
    win.analysis.show_dock("stats")
    panel = win.analysis.head_stats
    qtbot.waitUntil(lambda: panel.stats_trace is win.state.trace, timeout=60_000)
    wait_idle(qtbot, win)
    return panel


def test_head_statistics_table_sort_select_and_tint(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    panel = _show_stats(qtbot, win)
    trace = win.state.trace
    assert panel.table.rowCount() == trace.n_layers["self"] * trace.n_heads == len(panel.stats)
    # sort by sink, descending: the first row has the largest sink score
    col = [c[0] for c in __import__("gui.panels.head_stats", fromlist=["COLUMNS"]).COLUMNS].index("sink")
    panel.table.sortItems(col, Qt.SortOrder.DescendingOrder)
    first = panel.row_stat(0)
    assert first.sink == max(s.sink for s in panel.stats)
    # selecting a row shows that head
    target_row = next(r for r in range(panel.table.rowCount()) if panel.row_stat(r).layer == 1)
    st = panel.row_stat(target_row)
    panel.table.selectRow(target_row)
    assert (win.state.kind, win.state.layer, win.state.head, win.state.mean_heads) == ("self", 1, st.head, False)
    # colour the grid by induction (the panel's box and the grid's are one choice): one colour per head,
    # on the weight scale 0..1
    grid = win.head_grid
    assert grid.color_by is None
    panel.color_box.setCurrentIndex(panel.color_box.findData("induction"))
    assert grid.color_by == "induction"
    values = grid.statistic_values()
    want = {(s.layer, s.head): s.induction for s in panel.stats if s.kind == "self"}
    assert values.shape == (trace.n_layers["self"], trace.n_heads) and len(want) == values.size
    assert all(math.isclose(values[k], v, rel_tol=1e-6) for k, v in want.items())
    cell = grid.thumb + grid.gap
    brightest = max(want, key=want.get)
    assert grid.atlas[brightest[0] * cell, brightest[1] * cell] == round(min(max(want[brightest], 0), 1) * 254)
    grid.set_color_by(None)
    assert panel.color_box.currentData() is None and grid.statistic_values() is None
    # a new step: the table follows (one request per trace)
    requests = panel.requests
    win.client.step()
    qtbot.waitUntil(lambda: panel.stats_trace is win.state.trace and win.state.trace is not trace, timeout=60_000)
    assert panel.requests == requests + 1


def test_head_statistics_encoder_decoder_kinds(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder-decoder"])
    panel = _show_stats(qtbot, win)
    kinds = {s.kind for s in panel.stats}
    assert kinds == {"encoder", "self", "cross"}
    assert all(math.isnan(s.induction) for s in panel.stats if s.kind != "self")
    row = next(r for r in range(panel.table.rowCount()) if panel.row_stat(r).kind == "encoder")
    panel.table.selectRow(row)
    assert win.state.kind == "encoder"
    assert win.errors == []


def test_analysis_menu_and_help(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    menu = win.analysis.menu
    actions = {a.text().replace("&", ""): a for a in menu.actions() if a.text()}
    assert {"Clear ablations", "Attention rollout (attention view)", "Logit lens", "Head statistics",
            "Compare with another prompt…"} <= set(actions)
    actions["Head statistics"].trigger()
    panel = win.analysis.head_stats
    qtbot.waitUntil(lambda: panel.on_screen() and panel.stats_trace is win.state.trace, timeout=60_000)
    actions["Attention rollout (attention view)"].trigger()
    assert win.analysis.rollout.active
    win.show_shortcuts()
    table = win.shortcuts_dialog.findChild(type(panel.table))
    keys = [table.item(r, 0).text() for r in range(table.rowCount())]
    assert "right-click a head" in keys and keys.count("right-click a head") == 1
    win.shortcuts_dialog.close()
