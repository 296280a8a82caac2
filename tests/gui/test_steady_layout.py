"""Issue 20: a step repaints what changed without re-laying out the window (QLabel.setText and
QSpinBox.setRange passed every step's new caption up to the QMainWindow, which re-laid out its docks),
and the candidates' probability labels are one painted item."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QVBoxLayout, QWidget

from gui.widgets.steady_label import SteadyLabel
from tests.gui.conftest import open_model, wait_idle


class _LayoutRequests(QObject):
    def __init__(self, widgets) -> None:  # noqa: ANN001
        super().__init__()
        self.seen: list[str] = []
        for w in widgets:
            w.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: ANN001, N802 - Qt API
        if event.type() == QEvent.Type.LayoutRequest and not isinstance(obj, SteadyLabel):
            self.seen.append(obj.objectName() or type(obj).__name__)
        return False


def _step(qtbot, win) -> None:  # noqa: ANN001
    before = win.state.trace
    win.client.step()
    qtbot.waitUntil(lambda: win.state.trace is not before, timeout=30_000)
    wait_idle(qtbot, win)
    qtbot.wait(30)


def test_a_step_does_not_relayout_the_window(qtbot, window, checkpoints):
    win = window
    win.resize(1400, 900)
    open_model(qtbot, win, checkpoints["long-decoder"], steps=3)
    qtbot.wait(100)  # the first trace's layout settles
    _step(qtbot, win)  # a heading may need its second line once (it keeps it): after that, none
    # a SteadyLabel's own QLabel asks it (and it ignores that): nobody above may be asked
    requests = _LayoutRequests([w for w in (win, *win.findChildren(QWidget)) if not isinstance(w.parent(), SteadyLabel)])
    n = len(win.state.trace)
    for _ in range(3):
        _step(qtbot, win)
    assert len(win.state.trace) == n + 3
    assert win.token_strip.summary.text().startswith(f"{len(win.state.trace)} tokens")  # the captions did change
    assert requests.seen == [], requests.seen


def test_steady_label_grows_a_line_only_when_its_text_needs_it(qtbot):
    host = QWidget()
    layout = QVBoxLayout(host)
    label = SteadyLabel("short")
    layout.addWidget(label)
    layout.addStretch(1)
    host.resize(220, 300)
    qtbot.addWidget(host)
    host.show()
    qtbot.wait(20)
    one_line = label.height()
    label.setText("a caption long enough to wrap onto more than one line in a narrow dock, surely")
    qtbot.waitUntil(lambda: label.height() > one_line, timeout=2000)
    assert label.label.text() == label.text()
    two_lines = label.height()
    label.setText("short again")  # keeps the line while the width stays: no jumping up and down per step
    qtbot.wait(30)
    assert label.height() == two_lines
    host.resize(400, 300)  # another width: as tall as the text is there
    qtbot.waitUntil(lambda: label.height() == one_line, timeout=2000)


def test_elided_label_keeps_the_whole_text_in_its_tooltip(qtbot):
    host = QWidget()
    layout = QVBoxLayout(host)
    label = SteadyLabel(wrap=False)
    layout.addWidget(label)
    host.resize(160, 60)
    qtbot.addWidget(host)
    host.show()
    text = "1001 tokens (1000 prompt + 1 generated) · last: “the” (greedy, p=0.123)"
    label.setText(text)
    qtbot.wait(20)
    assert label.text() == text
    assert label.label.text().endswith("…") and label.label.text() != text
    assert label.label.toolTip() == text
    assert label.sizeHint().width() < 100  # a long caption does not widen its dock


def test_candidates_label_every_bar_with_its_probability(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"], steps=3)
    panel = win.logits_panel
    labels = panel.labels.labels()
    assert len(labels) == panel.candidate_ids.size > 0
    for j, (x, y, text) in enumerate(labels):
        p = float(panel.bar_values[j])
        assert y == j and x > p
        assert text.split(" ")[0] == (f"{p:.3f}" if p >= 0.001 or p == 0 else f"{p:.0e}")
    # the chart draws them: the labels' area is not blank
    image = panel.plot.grab().toImage()
    rect = panel.plot.getPlotItem().vb.mapViewToDevice(panel.labels.boundingRect()).boundingRect().toAlignedRect()
    assert rect.width() > 5 and rect.height() > 5
    colours = {image.pixel(x, y) for x in range(rect.left(), rect.right(), 2) for y in range(rect.top(), rect.bottom(), 2)
               if image.rect().contains(x, y)}
    assert len(colours) > 3
