"""FlowLayout keeps its placement between passes; it must still follow every change Qt reports."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QWidget

from gui.widgets.flow_layout import FlowLayout


def _check_reading_order(labels: list[QLabel], width: int) -> None:
    shown = [w.geometry() for w in labels if not w.isHidden()]
    for a, b in zip(shown, shown[1:]):
        assert a.right() <= width
        same_line = b.top() == a.top()
        assert (same_line and b.left() > a.right()) or (not same_line and b.top() > a.bottom())


def test_flow_layout_follows_text_visibility_and_width_changes(qtbot):
    host = QWidget()
    qtbot.addWidget(host)
    flow = FlowLayout(host)
    labels = [QLabel(f"token{i}") for i in range(40)]
    for w in labels:
        flow.addWidget(w)
    host.resize(300, flow.heightForWidth(300))
    host.show()
    qtbot.waitExposed(host)

    def settle() -> None:
        qtbot.wait(20)  # let Qt deliver the layout requests
        host.resize(host.width(), flow.heightForWidth(host.width()))
        qtbot.wait(20)

    settle()
    _check_reading_order(labels, 300)
    lines = len({w.geometry().top() for w in labels})
    assert lines > 2

    labels[3].setText("a much longer token than the others")  # pushes everything after it along
    settle()
    _check_reading_order(labels, 300)
    assert labels[4].geometry().left() > labels[3].geometry().left() or labels[4].geometry().top() > labels[3].geometry().top()

    labels[5].hide()
    settle()
    _check_reading_order(labels, 300)
    labels[5].show()
    settle()
    _check_reading_order(labels, 300)

    extra = QLabel("appended")
    flow.addWidget(extra)
    labels.append(extra)
    settle()
    _check_reading_order(labels, 300)
    assert extra.geometry().topLeft() != labels[0].geometry().topLeft()

    host.resize(600, host.height())
    settle()
    _check_reading_order(labels, 600)
    assert len({w.geometry().top() for w in labels}) < lines + 1
    assert flow.heightForWidth(600) < flow.heightForWidth(300)
