"""Text labels at data points of a plot, all in one graphics item, drawn upright at screen size.

The candidates chart labelled its bars with one pyqtgraph TextItem each: every TextItem is a
QGraphicsTextItem (a QTextDocument) that re-computes its transform at every paint, and all fifty of them
(most of them empty) were painted on each step. One item with a cached QStaticText per string draws the
same labels in a fraction of that.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QPainter, QStaticText

CACHE_LIMIT = 2_000  # laid-out strings kept (dropped all at once past this)


class PointLabels(pg.GraphicsObject):
    """`set_labels([(x, y, text), …], colour)`: each text starts at data x and is centred on data y (as a
    TextItem with anchor (0, 0.5)), in the view's font at screen size, whatever the view's scale."""

    def __init__(self, font: QFont | None = None) -> None:
        super().__init__()
        self._labels: tuple[tuple[float, float, str], ...] = ()
        self._colour = QColor(0, 0, 0)
        self._font = QFont(font) if font is not None else QFont()
        self._static: dict[str, QStaticText] = {}
        self._bounds = QRectF()
        self._extent = (0.0, 0.0)  # the widest label and a line's height, in pixels

    def labels(self) -> tuple[tuple[float, float, str], ...]:
        return self._labels

    def set_labels(self, labels: list[tuple[float, float, str]], colour: QColor) -> None:
        labels = tuple((float(x), float(y), text) for x, y, text in labels if text)
        if labels == self._labels and colour.rgba() == self._colour.rgba():
            return
        self._labels, self._colour = labels, QColor(colour)
        self._update_bounds()
        self.update()

    def setFont(self, font: QFont) -> None:  # noqa: N802 - Qt API
        self._font = QFont(font)
        self._static.clear()
        self._update_bounds()
        self.update()

    def _update_bounds(self) -> None:
        """The labels' data points; the text's own extent is in pixels and added in boundingRect."""
        self.prepareGeometryChange()
        if not self._labels:
            self._bounds = QRectF()
            return
        fm = QFontMetricsF(self._font)
        self._extent = (max(fm.horizontalAdvance(t) for _x, _y, t in self._labels), fm.height())
        xs = [x for x, _y, _t in self._labels]
        ys = [y for _x, y, _t in self._labels]
        self._bounds = QRectF(min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt API
        if self._bounds.isNull() and not self._labels:
            return QRectF()
        # the points plus the widest text and half a line, in data units at the view's current scale
        px_w, px_h = self.pixelSize() if self.getViewBox() is not None else (0.0, 0.0)
        widest, line = self._extent
        return self._bounds.adjusted(0, -line * px_h, (widest + 2) * px_w, line * px_h)

    def viewTransformChanged(self) -> None:  # noqa: N802 - pyqtgraph API: the scale changed, so does the extent
        self.prepareGeometryChange()

    def _text(self, text: str) -> QStaticText:
        static = self._static.get(text)
        if static is None:
            if len(self._static) > CACHE_LIMIT:
                self._static.clear()
            static = self._static[text] = QStaticText(text)
            static.setTextFormat(Qt.TextFormat.PlainText)
            static.prepare(font=self._font)
        return static

    def paint(self, p: QPainter, *_args) -> None:
        if not self._labels:
            return
        to_device = p.transform()
        p.save()
        try:
            p.resetTransform()  # upright, unscaled text at the mapped points
            p.setFont(self._font)
            p.setPen(self._colour)
            half = QFontMetricsF(self._font).height() / 2
            for x, y, text in self._labels:
                at = to_device.map(QPointF(x, y))
                p.drawStaticText(QPointF(at.x(), at.y() - half), self._text(text))
        finally:
            p.restore()
