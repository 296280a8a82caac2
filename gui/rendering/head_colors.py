"""One colour per head, shared by the head grid's head numbers and the head view's lines and legend.

Heads 0-9 take the Tableau 10 colours (BertViz's d3 category10), later heads hues a golden angle apart,
so a colour depends only on the head's index and every view agrees without being told the head count.
`HeadAxis` is the head grid's top axis: the same numbers, each written in its head's colour."""

from __future__ import annotations

from functools import lru_cache

import pyqtgraph as pg
from PySide6.QtGui import QColor, QFont

TABLEAU10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
             "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
GOLDEN_ANGLE = 137.508


@lru_cache(maxsize=512)
def head_color(head: int) -> QColor:
    """The colour of query head `head` (a fresh QColor each caller may not modify: copy it first)."""
    if 0 <= head < len(TABLEAU10):
        return QColor(TABLEAU10[head])
    hue = (head * GOLDEN_ANGLE + 20.0) % 360.0
    return QColor.fromHsvF(hue / 360.0, 0.62, 0.86)


def head_rgb(head: int) -> tuple[int, int, int]:
    c = head_color(head)
    return c.red(), c.green(), c.blue()


class HeadAxis(pg.AxisItem):
    """An axis whose integer tick labels are head numbers, each drawn in its head's colour (bold)."""

    def drawPicture(self, p, axisSpec, tickSpecs, textSpecs) -> None:  # noqa: ANN001, N802 - pyqtgraph API
        super().drawPicture(p, axisSpec, tickSpecs, [])
        font = QFont(self.style["tickFont"] or p.font())
        font.setBold(True)
        p.setFont(font)
        p.setClipRect(self.boundingRect().toAlignedRect())
        for rect, flags, text in textSpecs:
            try:
                p.setPen(head_color(int(text)))
            except ValueError:  # not a head number
                p.setPen(self.textPen())
            p.drawText(rect, int(flags), text)
