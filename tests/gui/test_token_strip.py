"""The token strip with a long trace: every token shown, a step places only the new one, clicks far down."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QEvent, QPoint, Qt
from PySide6.QtGui import QHelpEvent
from PySide6.QtWidgets import QApplication, QToolTip

from engine import Session, load_model
from tests.gui.conftest import long_gpt2, open_model

N = 3000


def settle(qtbot) -> None:
    for _ in range(3):  # the layout request, the scroll, the paint
        QApplication.processEvents()
    qtbot.wait(20)


def test_a_long_trace_shows_every_token_and_a_step_places_only_the_new_one(qtbot, window, tmp_path):
    win = window
    folder = long_gpt2(tmp_path / "gpt2-4k", n_positions=4096)
    open_model(qtbot, win, folder)
    session = Session(load_model(str(folder), device="cpu"), np.random.default_rng(0).integers(0, 250, N).tolist())
    win.state.set_trace(session.trace)
    settle(qtbot)
    strip, row = win.token_strip, win.token_strip.main_row
    trace = session.trace
    assert row.n == N  # all of them: no window of the last few hundred
    assert [row.text(i) for i in range(row.n)] == [t or "∅" for t in trace.tokens]
    assert [row.role(i) for i in range(row.n)] == ["special" if sp else "prompt" for sp in trace.special]
    assert row.rect().contains(row.rect(N - 1))  # the row grew to hold them: the scroll area scrolls
    assert row.rect(N - 1).top() > 20 * row.rect(0).height()

    session.step()
    win.state.set_trace(session.trace)
    settle(qtbot)
    assert row.n == N + 1 and row.role(N) == "generated"
    assert row.placed_last == 1  # earlier tokens kept their places
    last = row.rect(N)
    viewport = strip.scroll.viewport()
    assert viewport.rect().contains(row.mapTo(viewport, last.center()))  # scrolled to the new token
    assert win.state.query == N  # the query followed the frontier: the new token is the selected one
    assert row.selected == N
    seen = row.visibleRegion().boundingRect()  # the rows in the viewport
    on_screen = sum(1 for i in range(row.n) if seen.top() <= row.rect(i).bottom() and row.rect(i).top() <= seen.bottom())
    row.painted_last = 0
    row.update()  # all of it: only what is on screen gets painted
    settle(qtbot)
    assert 0 < row.painted_last <= on_screen < N // 10

    # back (the trace without the new token): nothing placed again, the token gone
    session.back()
    win.state.set_trace(session.trace)
    settle(qtbot)
    assert row.n == N and row.placed_last == 0
    # a token earlier on changed (as a branch or a mask would): placed again from there
    ids = list(session.trace.token_ids)
    ids[N - 10] = (ids[N - 10] + 1) % 250
    win.state.set_trace(Session(session.model, ids).trace)
    settle(qtbot)
    assert row.placed_last == 10

    # a token far down: scroll to it, hover and click it
    i = N - 700
    r = row.rect(i)
    strip.scroll.ensureVisible(*(lambda c: (c.x(), c.y()))(row.mapTo(strip.scroll.widget(), r.center())), 4, 20)
    settle(qtbot)
    assert viewport.rect().contains(row.mapTo(viewport, r.center()))
    qtbot.mouseMove(row, r.center())
    qtbot.waitUntil(lambda: strip.hover == ("main", i), timeout=2_000)
    assert row.cursor().shape() == Qt.CursorShape.PointingHandCursor
    qtbot.mouseClick(row, Qt.MouseButton.LeftButton, pos=r.center())
    assert win.state.query == i and row.selected == i
    qtbot.mouseClick(row, Qt.MouseButton.LeftButton, pos=QPoint(row.width() - 1, r.center().y()))  # past the end
    assert win.state.query == i  # of a row (or between chips): no token, no selection

    # the tooltip is made when asked for, for that token only
    expected = f"position {i} · id {win.state.trace.token_ids[i]} · prompt"
    assert row.tooltip(i) == expected
    QApplication.sendEvent(row, QHelpEvent(QEvent.Type.ToolTip, r.center(), row.mapToGlobal(r.center())))
    assert QToolTip.text() == expected
    QToolTip.hideText()

    # a narrower window: every token placed again, still all inside the row
    win.resize(900, 800)
    settle(qtbot)
    assert row.placed_last == N and row.rect().contains(row.rect(N - 1))


def test_height_for_another_width_matches_the_layout_there_as_tokens_come(qtbot):
    from gui.widgets.token_flow import TokenFlow

    flow = TokenFlow("decoder:")
    qtbot.addWidget(flow)
    flow.set_caption_visible(True)
    flow.resize(500, 100)
    texts = [f"t{i * 7919 % 1000}" * (1 + i % 3) for i in range(400)]
    probes = {}
    for n in (1, 50, 51, 399, 400, 300, 301):  # appends, and a back (fewer tokens) then an append
        flow.set_tokens(texts[:n], ["prompt"] * n)
        probes[n] = {w: flow.heightForWidth(w) for w in (180, 333)}  # counted on from the last count
    for w in (180, 333):
        flow.resize(w, 100)
        for n in (1, 50, 51, 399, 400, 300, 301):
            flow.set_tokens(texts[:n], ["prompt"] * n)
            assert flow.heightForWidth(w) == probes[n][w] == flow.rect(n - 1).bottom() + 1 + 2
    assert flow.index_at(flow.rect(123).center()) == 123 and flow.index_at(flow.rect(0).topLeft() - QPoint(1, 1)) == -1
