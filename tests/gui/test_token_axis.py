"""TokenAxis makes its draw specs itself (issue 20: pyqtgraph's took ~1.7 ms per axis and step); they must be
exactly what pyqtgraph's AxisItem.generateDrawSpecs makes for the same axis."""

from __future__ import annotations

import pyqtgraph as pg
import pytest
from PySide6.QtGui import QImage, QPainter

from gui.widgets.token_axis import _MeasuringPainter
from tests.gui.conftest import open_model


def _plain(spec):
    axis, ticks, texts = spec
    return ((axis[1].x(), axis[1].y(), axis[2].x(), axis[2].y()),
            [(a.x(), a.y(), b.x(), b.y(), pen.color().rgba()) for pen, a, b in ticks],
            [(r.x(), r.y(), r.width(), r.height(), int(flags), text) for r, flags, text in texts])


@pytest.mark.parametrize("steps", [0, 30])
def test_specs_equal_pyqtgraphs(qtbot, window, checkpoints, steps):
    win = window
    open_model(qtbot, win, checkpoints["long-decoder"], steps=steps)
    win.resize(1400, 900)
    win.attention_view.zoom(1.7)  # a range that cuts labels at both ends
    qtbot.wait(50)
    image = QImage(1200, 1200, QImage.Format.Format_ARGB32)
    axes = [win.attention_view.left_axis, win.attention_view.bottom_axis, win.logits_panel.axis]
    checked = 0
    for axis in axes:
        painter = QPainter(image)
        try:
            ours = axis.generateDrawSpecs(painter)
            theirs = pg.AxisItem.generateDrawSpecs(axis, _MeasuringPainter(painter, {}))
        finally:
            painter.end()
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert _plain(ours) == _plain(theirs)
            checked += len(ours[2])
    assert checked > 10  # labels were compared, not only empty axes
