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


def _render(item, paint, size) -> QImage:  # noqa: ANN001
    from PySide6.QtCore import Qt

    image = QImage(size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.white)
    painter = QPainter(image)
    try:
        item.picture = None  # both draw from fresh specs
        paint(painter)
    finally:
        painter.end()
    return image


def _differing_pixels(a: QImage, b: QImage) -> int:
    import numpy as np

    def pixels(img: QImage) -> np.ndarray:
        return np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())

    return int(np.count_nonzero(np.any(pixels(a).reshape(a.height(), -1, 4) != pixels(b).reshape(b.height(), -1, 4),
                                       axis=2)))


def _blurred_difference(a: QImage, b: QImage) -> float:
    """The largest difference of the two images' grey levels after a 3 x 3 box blur: a glyph placed a fraction
    of a pixel elsewhere gives ~20, one a whole pixel off 85 or more."""
    import numpy as np

    def grey(img: QImage) -> np.ndarray:
        img = img.convertToFormat(QImage.Format.Format_Grayscale8)
        return np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())[:, :img.width()]

    def blur(a: np.ndarray) -> np.ndarray:
        p = np.pad(a.astype(float), 1, mode="edge")
        return sum(p[1 + dy:1 + dy + a.shape[0], 1 + dx:1 + dx + a.shape[1]] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9

    return float(np.abs(blur(grey(a)) - blur(grey(b))).max())


def _draw_text_rotated(axis, p: QPainter, text_specs) -> None:  # noqa: ANN001
    """Upright labels as they were drawn before QStaticText: one drawText per label in a rotated box (but not
    clipped to it: the box is 0.8 of a line high, so that cut the bottom off glyphs such as ␣)."""
    from PySide6.QtCore import QRectF, Qt

    if axis.style["tickFont"] is not None:
        p.setFont(axis.style["tickFont"])
    p.setPen(axis.textPen())
    length = axis.height() - 6
    if text_specs:  # cut where a label would pass the axis' length (the box's length did), not across it
        p.setClipRect(QRectF(-1e6, text_specs[0][0].top(), 2e6, length), Qt.ClipOperation.IntersectClip)
    for rect, _flags, text in text_specs:
        p.save()
        p.translate(rect.center().x(), rect.top())
        p.rotate(-90)
        p.drawText(QRectF(-length, -rect.height() / 2, length, rect.height()),
                   int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter | Qt.TextFlag.TextDontClip), text)
        p.restore()


def _pyqtgraph_paint(axis, p: QPainter) -> None:  # noqa: ANN001
    """pyqtgraph's AxisItem.paint: the specs drawn by its own drawPicture into a QPicture, replayed (upright
    key labels: drawText in a rotated box per label)."""
    from PySide6.QtGui import QPicture

    picture = QPicture()
    painter = QPainter(picture)
    try:
        if axis.style["tickFont"]:
            painter.setFont(axis.style["tickFont"])
        specs = axis.generateDrawSpecs(painter)
        if specs is not None:
            pg.AxisItem.drawPicture(axis, painter, *specs[:2], [] if axis.rotated else specs[2])
            if axis.rotated:
                _draw_text_rotated(axis, painter, specs[2])
    finally:
        painter.end()
    picture.play(p)


@pytest.mark.parametrize("zoom", [1.0, 1.7])
def test_paints_what_pyqtgraph_paints(qtbot, window, checkpoints, zoom):
    """The axis draws its labels from cached QStaticTexts instead of pyqtgraph's recorded QPicture: the pixels
    must be the ones pyqtgraph's own paint makes (same glyphs, same places)."""
    from PySide6.QtCore import QSize

    win = window
    open_model(qtbot, win, checkpoints["long-decoder"], steps=5)
    win.resize(1400, 900)
    win.attention_view.zoom(zoom)
    qtbot.wait(50)
    axes = [win.attention_view.left_axis, win.attention_view.bottom_axis, win.logits_panel.axis]
    compared = 0
    for axis in axes:
        compared += 1
        size = axis.boundingRect().toAlignedRect().size().expandedTo(QSize(8, 8))
        ours = _render(axis, lambda p, a=axis: a.paint(p, None, None), size)
        theirs = _render(axis, lambda p, a=axis: _pyqtgraph_paint(a, p), size)
        assert axis._specs and axis._specs[2], "the axis drew no labels: the comparison would prove nothing"
        if axis.rotated:
            # A rotated drawText box and a QStaticText under one rotation can put a glyph a fraction of a pixel
            # apart (anti-aliased differently at some axis widths, e.g. 748 px): the same glyphs in the same
            # places to within a pixel, which a blurred comparison tells from a label moved by a whole pixel.
            assert _blurred_difference(ours, theirs) <= 32
        else:
            assert _differing_pixels(ours, theirs) == 0
    assert compared == 3
    assert any(axis.rotated for axis in axes) == (zoom == 1.0)  # upright key labels are compared too


def test_specs_are_kept_while_labels_move_less_than_a_pixel(qtbot, window, checkpoints):
    """A step that grows a long pattern by a row moves every label a fraction of a pixel: the axis keeps its
    specs (no new layout per step) until a label would be KEEP_PX or more from where it was drawn."""
    from gui.widgets import token_axis

    win = window
    open_model(qtbot, win, checkpoints["long-decoder"], steps=3)
    win.resize(1400, 900)
    qtbot.wait(50)
    axis, vb = win.attention_view.left_axis, win.attention_view.plot.getViewBox()
    image = QImage(1200, 1200, QImage.Format.Format_ARGB32)

    def specs():
        painter = QPainter(image)
        try:
            return axis.generateDrawSpecs(painter)
        finally:
            painter.end()

    (y0, y1) = vb.viewRange()[1]
    first = specs()
    px_per_unit = axis.geometry().height() / (y1 - y0)
    nudge = 0.3 / px_per_unit / max(1.0, y1)  # the far end moves ~0.3 px
    vb.setYRange(y0, y1 + nudge * (y1 - y0), padding=0)
    assert specs() is first  # kept
    vb.setYRange(y0, y1 + 3 * (y1 - y0) / axis.geometry().height(), padding=0)  # ~3 px at the far end
    again = specs()
    assert again is not first and _plain(again) != _plain(first)
    assert token_axis.KEEP_PX <= 1.0
