"""One sequence of tokens as rounded chips, left to right, wrapping at the widget's width: one painted widget.

A widget per token cost the window ~20 ms per step at 1,024 tokens (every chip re-texted, the flow layout
asking 512 widgets their size, dozens of paint events). Here a step costs what changed plus what is on
screen: text widths are measured once per distinct string, appending tokens places only the new ones
(earlier positions move only on a width, font or style change, or when an earlier token changed: from
there on), a paint draws only the rows it exposes, a mark repaints only the chips whose mark changed, and
tooltips are asked for when shown (`tooltip`, a callable position -> text), not built per token per step.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence

import numpy as np
from PySide6.QtCore import QEvent, QPointF, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QHelpEvent, QMouseEvent, QPainter, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

TINT = QColor(255, 120, 30)
SELECTED = QColor(224, 64, 64)
ROLES = ("prompt", "generated", "special", "filled", "masked")
MUTED = frozenset(("special", "masked"))  # italic, placeholder-coloured text

MARGIN = 2  # around the flow
SPACING = 3  # between chips, across and down
PAD_X, PAD_Y = 6, 2  # inside a chip, around its text


class TokenFlow(QWidget):
    """The tokens of one sequence; `caption` (e.g. "decoder:") goes first in the flow while shown.

    Accessors for views and tests: `n`, `text(i)`, `role(i)`, `tint(i)`, `selected`, `rect(i)` (widget
    coordinates), `index_at(point)`; `placed_last` counts the tokens the last layout pass placed,
    `painted_last` the chips the last paint drew."""

    clicked = Signal(int)
    hovered = Signal(int)  # -1 when the mouse leaves the tokens

    def __init__(self, caption: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        sp = self.sizePolicy()
        sp.setHeightForWidth(True)
        self.setSizePolicy(sp)
        self.tooltip: Callable[[int], str] | None = None
        self._caption = caption
        self._caption_shown = False
        self._texts: list[str] = []
        self._roles: list[str] = []
        self._w: list[int] = []  # chip widths
        self._x: list[int] = []  # chip left edges
        self._row: list[int] = []  # row of each chip
        self._row_first: list[int] = [0]  # first chip of each row
        self._layout_width = -1  # the width the placement is for; -1: none yet
        self._widths: dict[tuple[str, bool], int] = {}  # (text, italic) -> chip width
        self._tints = np.zeros(0, np.float32)  # per chip, quantised to 1/32
        self.selected: int | None = None
        self._hover = -1
        self.placed_last = 0
        self.painted_last = 0  # chips the last paint drew
        self._told_height = 0  # the height when the layouts above last heard of it
        self._probes: dict[int, tuple[int, int, int]] = {}  # width -> (chips counted, next x, last row)
        self._metrics()

    # -- accessors -------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self._texts)

    def text(self, i: int) -> str:
        return self._texts[i]

    def role(self, i: int) -> str:
        return self._roles[i]

    def tint(self, i: int) -> float:
        return float(self._tints[i])

    def rect(self, i: int | None = None) -> QRect:  # noqa: D102 - QWidget.rect() without an index
        if i is None:
            return super().rect()
        self._ensure_layout()
        return QRect(self._x[i], self._row_y(self._row[i]), self._w[i], self._chip_h)

    def index_at(self, point) -> int:  # noqa: ANN001 - QPoint | QPointF
        """The token under `point` (widget coordinates), or -1."""
        self._ensure_layout()
        x, y = point.x(), point.y()
        row = int((y - MARGIN) // self._pitch) if y >= MARGIN else -1
        if not 0 <= row < len(self._row_first) or y > self._row_y(row) + self._chip_h:
            return -1
        first = self._row_first[row]
        last = self._row_first[row + 1] if row + 1 < len(self._row_first) else self.n
        i = bisect_right(self._x, x, first, last) - 1
        return i if i >= first and x < self._x[i] + self._w[i] else -1

    # -- content ---------------------------------------------------------------------------------------
    def set_caption_visible(self, shown: bool) -> None:
        if shown != self._caption_shown:
            self._caption_shown = shown
            self._relayout(0)

    def set_tokens(self, texts: Sequence[str], roles: Sequence[str]) -> None:
        """Show these tokens; only those from the first that differs from what is shown are placed again."""
        texts = ["∅" if not t else t for t in texts] if "" in texts else list(texts)
        roles = list(roles)
        n_old, n_new = self.n, len(texts)
        k = min(n_old, n_new)
        if texts[:k] != self._texts[:k] or roles[:k] != self._roles[:k]:  # an earlier token changed
            k = next(i for i in range(k) if texts[i] != self._texts[i] or roles[i] != self._roles[i])
        if k == n_old == n_new:
            return
        dirty = self._chips_rect(k, n_old)  # what the old chips from k on covered
        self._texts, self._roles = texts, roles
        self._probes = {w: p for w, p in self._probes.items() if p[0] <= k}  # those past k: count again
        del self._w[k:]
        self._w.extend(self._width(t, r in MUTED) for t, r in zip(texts[k:], roles[k:], strict=True))
        tints = np.zeros(n_new, np.float32)
        tints[:k] = self._tints[:k]
        self._tints = tints
        if self.selected is not None and self.selected >= n_new:
            self.selected = None
        if self._layout_width >= 0:
            self._place(k)
        self._changed(dirty.united(self._chips_rect(k, n_new)))

    def set_marks(self, selected: int | None, tints: np.ndarray | None) -> None:
        """The selected token (a red border) and a 0..1 tint per token (quantised to 1/32: no repaint for
        changes one cannot see); repaints only the chips whose mark changed."""
        new = np.zeros(self.n, np.float32)
        if tints is not None:
            m = min(self.n, len(tints))
            new[:m] = np.round(np.asarray(tints[:m], np.float32) * 32) / 32
        changed = np.flatnonzero(new != self._tints).tolist()
        self._tints = new
        if selected is not None and not 0 <= selected < self.n:
            selected = None
        if selected != self.selected:
            changed += [i for i in (self.selected, selected) if i is not None]
            self.selected = selected
        if changed and self._layout_width >= 0:  # one band of rows: a hover can re-tint thousands of chips
            self.update(self._chips_rect(min(changed), max(changed) + 1).adjusted(-1, -1, 1, 1))

    # -- layout ----------------------------------------------------------------------------------------
    def _metrics(self) -> None:
        font = QFont(self.font())
        self._fm = QFontMetrics(font)
        font.setItalic(True)
        self._italic = font
        self._fm_italic = QFontMetrics(font)
        self._line_h = max(self._fm.size(0, "Xg").height(), self._fm_italic.size(0, "Xg").height())
        self._chip_h = self._line_h + 2 * PAD_Y  # as a QLabel with these margins would size itself
        self._pitch = self._chip_h + SPACING
        caption_font = QFont(self.font())
        caption_font.setPointSizeF(9)
        self._caption_font = caption_font
        self._caption_w = QFontMetrics(caption_font).horizontalAdvance(self._caption)
        self._widths.clear()

    def _width(self, text: str, italic: bool) -> int:
        key = (text, italic)
        w = self._widths.get(key)
        if w is None:
            w = self._widths[key] = (self._fm_italic if italic else self._fm).size(0, text).width() + 2 * PAD_X
        return w

    def _row_y(self, row: int) -> int:
        return MARGIN + row * self._pitch

    def _lead(self) -> int:
        return MARGIN + (self._caption_w + SPACING if self._caption_shown and self._caption else 0)

    def _place(self, start: int) -> None:
        """Place chips start.. at the current layout width, continuing after chip start-1."""
        right = self._layout_width - MARGIN
        del self._x[start:], self._row[start:]
        if start == 0:
            x, row = self._lead(), 0
            self._row_first = [0]
        else:
            x, row = self._x[start - 1] + self._w[start - 1] + SPACING, self._row[start - 1]
            del self._row_first[row + 1:]
        xs, rows, firsts, widths = self._x, self._row, self._row_first, self._w
        for i in range(start, len(widths)):
            w = widths[i]
            if x + w > right and x > MARGIN:  # wrap (a chip wider than the row still gets one of its own)
                x, row = MARGIN, row + 1
                firsts.append(i)
            xs.append(x)
            rows.append(row)
            x += w + SPACING
        self.placed_last = len(widths) - start

    def _ensure_layout(self) -> None:
        if self._layout_width != self.width():
            self._layout_width = self.width()
            self._place(0)

    def _relayout(self, start: int) -> None:
        self._probes.clear()
        if self._layout_width >= 0:
            self._place(start)
        self._changed(super().rect())

    def _height(self) -> int:
        return self._rows_height((self._row[-1] + 1) if self._row else 1)

    def _rows_height(self, rows: int) -> int:
        if self.n == 0 and not (self._caption_shown and self._caption):
            return 0
        return 2 * MARGIN + rows * self._pitch - SPACING

    def _height_at(self, width: int) -> int:
        """The height at `width`: the layout's at its own width; at another (Qt asks the scroll area's width
        with and without the scroll bar) only the row count, kept per width and extended as tokens come."""
        if width == self._layout_width:
            return self._height()
        n_done, x, row = self._probes.pop(width, (0, 0, 0))
        if n_done == 0:
            x, row = self._lead(), 0
        right, widths = width - MARGIN, self._w
        for i in range(n_done, len(widths)):
            w = widths[i]
            if x + w > right and x > MARGIN:
                x, row = MARGIN, row + 1
            x += w + SPACING
        self._probes[width] = (len(widths), x, row)
        while len(self._probes) > 4:
            del self._probes[next(iter(self._probes))]
        return self._rows_height(row + 1)

    def _changed(self, dirty: QRect) -> None:
        height = self._height()
        if height != self._told_height:  # the layouts above ask heightForWidth again
            self._told_height = height
            self.updateGeometry()
        if not dirty.isEmpty():
            self.update(dirty.adjusted(-1, -1, 1, 1))

    def _chips_rect(self, start: int, stop: int) -> QRect:
        """The band of rows that chips start..stop-1 occupy (whole rows: cheap, and all a paint needs)."""
        if start >= stop or self._layout_width < 0 or start >= len(self._row):
            return QRect()
        first, last = self._row[start], self._row[min(stop, len(self._row)) - 1]
        top = self._row_y(first)
        return QRect(0, top, max(self.width(), self._layout_width), self._row_y(last) + self._chip_h - top)

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt API
        return True

    def heightForWidth(self, width: int) -> int:  # noqa: N802
        return self._height_at(width)

    def sizeHint(self) -> QSize:  # noqa: N802
        width = self.width() if self._layout_width < 0 else self._layout_width
        return QSize(max(width, 100), self._height_at(max(width, 100)))

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        return QSize(60, self._chip_h + 2 * MARGIN if self._height() else 0)

    def resizeEvent(self, event) -> None:  # noqa: ANN001, N802
        if event.size().width() != self._layout_width:
            self._layout_width = event.size().width()
            self._place(0)
            self._changed(QRect())
        super().resizeEvent(event)

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802
        if event.type() in (QEvent.Type.FontChange, QEvent.Type.StyleChange):
            self._metrics()
            self._w = [self._width(t, r in MUTED) for t, r in zip(self._texts, self._roles, strict=True)]
            self._relayout(0)
        elif event.type() == QEvent.Type.PaletteChange:
            self.update()
        super().changeEvent(event)

    # -- painting --------------------------------------------------------------------------------------
    def _colours(self, pal: QPalette) -> dict[str, tuple[QColor, QColor, Qt.PenStyle]]:
        light = pal.window().color().lightness() > 128
        return {
            "prompt": (pal.button().color(), pal.mid().color(), Qt.PenStyle.SolidLine),
            "generated": (QColor("#d5ecd4" if light else "#2f5a33"), QColor("#5aa35a"), Qt.PenStyle.SolidLine),
            "special": (QColor(0, 0, 0, 0), pal.mid().color(), Qt.PenStyle.DashLine),
            "filled": (QColor("#fde2c4" if light else "#6b4a1e"), QColor("#d08a2c"), Qt.PenStyle.SolidLine),
            "masked": (QColor(0, 0, 0, 0), QColor("#d08a2c"), Qt.PenStyle.DashLine),
        }

    def paintEvent(self, event) -> None:  # noqa: ANN001, N802
        self._ensure_layout()
        area = event.rect()
        pal = self.palette()
        painter = QPainter(self)
        if self._caption_shown and self._caption and area.top() < self._row_y(0) + self._chip_h:
            painter.setFont(self._caption_font)
            painter.setPen(pal.placeholderText().color())
            painter.drawText(QRect(MARGIN, self._row_y(0), self._caption_w + SPACING, self._chip_h),
                             int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), self._caption)
        if not self.n:
            painter.end()
            return
        first_row = max(0, (area.top() - MARGIN - self._chip_h) // self._pitch + 1)  # rows reaching into area
        last_row = min(len(self._row_first) - 1, (area.bottom() - MARGIN) // self._pitch)
        if first_row > last_row:
            painter.end()
            return
        start = self._row_first[first_row]
        stop = self._row_first[last_row + 1] if last_row + 1 < len(self._row_first) else self.n
        colours = self._colours(pal)
        text_pen, muted_pen = QPen(pal.windowText().color()), QPen(pal.placeholderText().color())
        fonts = (self.font(), self._italic)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        ascent = (self._fm.ascent(), self._fm_italic.ascent())
        text_top = PAD_Y + (self._line_h - self._fm.height()) / 2  # vertically centred, as a QLabel does
        tints, selected, h = self._tints, self.selected, self._chip_h
        italic_now = None
        painted = 0
        for i in range(start, stop):
            x, y, w, role = self._x[i], self._row_y(self._row[i]), self._w[i], self._roles[i]
            if x > area.right() or x + w < area.left():
                continue
            fill, border, style = colours[role]
            tint = tints[i]
            if tint > 0:
                fill = QColor(TINT.red(), TINT.green(), TINT.blue(), int(40 + 215 * tint))
            chosen = i == selected
            if chosen:
                border, style = SELECTED, Qt.PenStyle.SolidLine
            painter.setPen(QPen(border, 2.0 if chosen else 1.0, style))
            painter.setBrush(fill)
            painter.drawRoundedRect(QRectF(x + 1, y + 1, w - 2, h - 2), 4, 4)
            italic = role in MUTED
            if italic != italic_now:
                painter.setFont(fonts[italic])
                italic_now = italic
            painter.setPen(muted_pen if italic else text_pen)
            painter.drawText(QPointF(x + PAD_X, y + text_top + ascent[italic]), self._texts[i])
            painted += 1
        self.painted_last = painted
        painter.end()

    # -- mouse -----------------------------------------------------------------------------------------
    def _set_hover(self, i: int) -> None:
        if i != self._hover:
            self._hover = i
            if i >= 0:
                self.setCursor(Qt.CursorShape.PointingHandCursor)
            else:
                self.unsetCursor()
            self.hovered.emit(i)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self._set_hover(self.index_at(event.position()))
        super().mouseMoveEvent(event)

    def leaveEvent(self, event) -> None:  # noqa: ANN001, N802
        self._set_hover(-1)
        super().leaveEvent(event)

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        i = self.index_at(event.position())
        if event.button() == Qt.MouseButton.LeftButton and i >= 0:
            self.clicked.emit(i)
        else:
            super().mousePressEvent(event)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip:
            assert isinstance(event, QHelpEvent)
            i = self.index_at(event.pos())
            if i >= 0 and self.tooltip is not None:
                QToolTip.showText(event.globalPos(), self.tooltip(i), self, self.rect(i))
            else:
                QToolTip.hideText()
                event.ignore()
            return True
        return super().event(event)
