"""Issue 19: after an ablation the candidates keep a readable, labelled row per bar (the movers table
collapses to a line or takes its own splitter pane, and the bars scroll rather than lose labels)."""

from __future__ import annotations

import pytest

from tests.gui.conftest import open_model, wait_idle


def _labelled_rows(panel) -> list[int]:
    """The bars the token axis labels, as pyqtgraph asks it when it paints at the axis's present size."""
    axis = panel.axis
    lo, hi = panel.plot.getViewBox().viewRange()[1]
    levels = axis.tickValues(lo, hi, axis.geometry().height())
    return sorted({int(round(v)) for _spacing, values in levels for v in values})


def _ablate(qtbot, win):
    before = win.state.trace
    win.analysis.ablation.ablate(0, 1)
    qtbot.waitUntil(lambda: win.state.trace is not before, timeout=30_000)
    wait_idle(qtbot, win)
    qtbot.wait(50)


@pytest.mark.parametrize("size", [(1280, 800), (1920, 1080)])
def test_every_bar_keeps_its_label_after_an_ablation(qtbot, window, checkpoints, size):
    win = window
    win.resize(*size)
    open_model(qtbot, win, checkpoints["decoder"], steps=3)
    panel, diff = win.logits_panel, win.analysis.ablation.diff
    n = panel.candidate_ids.size
    assert n == panel.count_spin.value()
    assert _labelled_rows(panel) == list(range(n))
    _ablate(qtbot, win)
    assert diff.isVisible() and len(diff.rows) == 4
    assert _labelled_rows(panel) == list(range(n))  # every drawn bar is labelled
    assert "TV" in diff.summary.text()
    assert panel.plot.height() >= panel.chart_height(n)
    # the person opens the movers table: the bars still keep every label (they scroll if need be)
    diff.toggle.click()
    qtbot.wait(50)
    assert diff.expanded and diff.table.isVisible() and diff.user_expanded is True
    assert panel.plot.height() >= panel.chart_height(n)
    assert _labelled_rows(panel) == list(range(n))
    assert panel.axis.tickStrings([0.0, 1.0], 1, 1)[0] != ""
    # more bars than fit: still one label per bar
    panel.count_spin.setValue(30)
    qtbot.wait(50)
    assert panel.candidate_ids.size == 30
    assert _labelled_rows(panel) == list(range(30))
    assert panel.scroll.verticalScrollBar().maximum() > 0  # scrolls instead of squeezing
    diff.toggle.click()
    assert not diff.expanded and not diff.table.isVisible()


def test_movers_start_collapsed_where_the_bars_need_the_room(qtbot, window, checkpoints):
    win = window
    win.resize(1280, 800)
    open_model(qtbot, win, checkpoints["decoder"], steps=2)
    _ablate(qtbot, win)
    panel, diff = win.logits_panel, win.analysis.ablation.diff
    room = panel.splitter.height() - panel.chart_height()
    assert diff.expanded == (room >= diff.expanded_height())
    assert "total variation" in diff.heading.text()  # the full heading is kept (shown when expanded, and as a tooltip)
    assert diff.summary.toolTip() == diff.heading.text()
