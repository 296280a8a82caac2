"""An axis labelled with tokens (one per integer position): every label that fits is drawn; key labels turn
vertical when that lets every one fit; only when even that fails are they thinned, and the axis title
says so ("key · every 4th labelled")."""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, QTimer
from PySide6.QtGui import QFontMetricsF

MAX_LABEL_CHARS = 12
GAP_PX = 6  # between neighbouring horizontal labels
MEASURE_LIMIT = 400  # visible labels measured one by one; beyond, the widest of all tokens stands for them


def short(token: str, limit: int = MAX_LABEL_CHARS) -> str:
    return token if len(token) <= limit else token[: limit - 1] + "…"


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 < 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


class TokenAxis(pg.AxisItem):
    """Ticks at 0..n-1 labelled with tokens; vertical or every k-th label when they would not fit."""

    def __init__(self, orientation: str, **kw) -> None:
        super().__init__(orientation, **kw)
        self.tokens: tuple[str, ...] = ()
        self.prefix_index = False  # "3 ␣the" on the vertical axis helps to find positions
        self.stride = 1  # every stride-th label is drawn (1: all)
        self.rotated = False  # key labels drawn vertically (they fit that way, not side by side)
        self.title = ""  # the axis title without the thinning note
        self._advances: dict[str, float] = {}  # label -> width in pixels, for the font in _advance_font
        self._advance_font = ""
        self._widest = 0.0  # widest label of all tokens (measured once per token)
        self._shown_title = ""
        if orientation in ("top", "bottom"):
            self.setStyle(hideOverlappingLabels=40)  # let the first/last token's label overhang the ends a little

    def set_title(self, text: str) -> None:
        self.title = text
        self._update_title()

    def set_tokens(self, tokens: tuple[str, ...] | list[str], prefix_index: bool = False) -> None:
        tokens = tuple(tokens)
        if tokens == self.tokens and prefix_index == self.prefix_index:
            return
        self._font_metrics()  # forgets the widths if the font changed
        grown = prefix_index == self.prefix_index and len(tokens) > len(self.tokens) and tokens[: len(self.tokens)] == self.tokens
        start = len(self.tokens) if grown and self._widest else 0  # a step appends: measure only the new labels
        if not start:
            self._widest = 0.0
        self.tokens, self.prefix_index = tokens, prefix_index
        self._widest = max([self._widest] + [self._advance(self.label_text(i)) for i in range(start, len(tokens))])
        if self.orientation in ("left", "right"):
            # pyqtgraph drops tick text that does not fit, so make room for the widest label
            width = int(self._widest + 16)
            if width != getattr(self, "fixedWidth", None):
                self.setWidth(width)
        self.picture = None  # force a redraw with the new strings
        self.update()

    def _font_metrics(self) -> QFontMetricsF:
        font = self.style.get("tickFont") or self.font()
        if font.toString() != self._advance_font:
            self._advances.clear()
            self._advance_font = font.toString()
            self._widest = 0.0
        return QFontMetricsF(font)

    def _advance(self, text: str) -> float:
        """Label width in pixels, remembered: a step re-measures hundreds of labels that did not change."""
        width = self._advances.get(text)
        if width is None:
            width = self._advances[text] = self._font_metrics().horizontalAdvance(text)
        return width

    def label_text(self, i: int) -> str:
        text = short(self.tokens[i])
        return f"{i} {text}" if self.prefix_index else text

    def layout_labels(self, lo: int, hi: int, px_per_token: float) -> tuple[int, bool]:
        """(stride, rotated) for labels lo..hi at px_per_token pixels apart."""
        fm = self._font_metrics()
        line = fm.height() * 1.05
        if self.orientation in ("left", "right"):
            return max(1, math.ceil(line / max(px_per_token, 1e-9))), False
        if hi - lo + 1 <= MEASURE_LIMIT:
            widths = [self._advance(self.label_text(i)) for i in range(lo, hi + 1)]
            widest = max(widths)
            # centred labels overlap when two neighbours' half widths and the gap exceed the spacing
            need = max(((a + b) / 2 for a, b in zip(widths, widths[1:])), default=widest)
        else:
            widest = need = self._widest
        if need + GAP_PX <= px_per_token:
            return 1, False
        if line <= px_per_token:  # side by side they overlap, upright they fit
            return 1, True
        return max(1, math.ceil((widest + GAP_PX) / max(px_per_token, 1e-9))), False

    def tickValues(self, minVal: float, maxVal: float, size: float) -> list:  # noqa: N802 - pyqtgraph API
        minVal, maxVal = min(minVal, maxVal), max(minVal, maxVal)  # an inverted view passes them reversed
        n = len(self.tokens)
        if n == 0 or size <= 0:
            self._set_layout(1, False)
            return []
        lo, hi = max(0, math.ceil(minVal)), min(n - 1, math.floor(maxVal))
        if hi < lo:
            return []
        px_per_token = size / max(maxVal - minVal, 1e-9)
        stride, rotated = self.layout_labels(lo, hi, px_per_token)
        self._set_layout(stride, rotated)
        return [(float(stride), [float(i) for i in range(lo - lo % stride, hi + 1, stride) if i >= lo])]

    def _set_layout(self, stride: int, rotated: bool) -> None:
        if (stride, rotated) == (self.stride, self.rotated):
            return
        self.stride, was_rotated, self.rotated = stride, self.rotated, rotated
        if rotated != was_rotated:  # change the axis height after this paint, not during it
            QTimer.singleShot(0, self._fit_height)
        QTimer.singleShot(0, self._update_title)

    def _fit_height(self) -> None:
        if self.rotated:
            self.setHeight(int(min(self._widest, 110) + 12))
        else:
            self.setHeight(None)

    def _update_title(self) -> None:
        if not self.title:
            return
        note = f" · every {_ordinal(self.stride)} labelled" if self.stride > 1 else ""
        text = self.title + note
        if text != self._shown_title:
            self._shown_title = text
            self.setLabel(text)

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:  # noqa: N802
        out = []
        for v in values:
            i = int(round(v))
            out.append(self.label_text(i) if 0 <= i < len(self.tokens) else "")
        return out

    def drawPicture(self, p, axisSpec, tickSpecs, textSpecs) -> None:  # noqa: ANN001, N802 - pyqtgraph API
        if not self.rotated:
            super().drawPicture(p, axisSpec, tickSpecs, textSpecs)
            return
        super().drawPicture(p, axisSpec, tickSpecs, [])
        if self.style["tickFont"] is not None:
            p.setFont(self.style["tickFont"])
        p.setPen(self.textPen())
        length = self.height() - 6
        for rect, _flags, text in textSpecs:  # upright, reading upwards, ending at the axis
            p.save()
            p.translate(rect.center().x(), rect.top())
            p.rotate(-90)
            p.drawText(QRectF(-length, -rect.height() / 2, length, rect.height()),
                       int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter), text)
            p.restore()
