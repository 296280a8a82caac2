"""An axis labelled with tokens (one per integer position) that thins its labels so none overlap."""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtGui import QFontMetricsF

MAX_LABEL_CHARS = 12


def short(token: str, limit: int = MAX_LABEL_CHARS) -> str:
    return token if len(token) <= limit else token[: limit - 1] + "…"


class TokenAxis(pg.AxisItem):
    """Ticks at 0..n-1 labelled with tokens; every k-th label when they would not fit."""

    def __init__(self, orientation: str, **kw) -> None:
        super().__init__(orientation, **kw)
        self.tokens: tuple[str, ...] = ()
        self.prefix_index = False  # "3 ␣the" on the vertical axis helps to find positions
        self._advances: dict[str, float] = {}  # label -> width in pixels, for the font in _advance_font
        self._advance_font = ""
        if orientation in ("top", "bottom"):
            self.setStyle(hideOverlappingLabels=40)  # let the first/last token's label overhang the ends a little

    def set_tokens(self, tokens: tuple[str, ...] | list[str], prefix_index: bool = False) -> None:
        tokens = tuple(tokens)
        if tokens != self.tokens or prefix_index != self.prefix_index:
            self.tokens = tokens
            self.prefix_index = prefix_index
            if self.orientation in ("left", "right"):
                # pyqtgraph drops tick text that does not fit, so make room for the widest label
                self._font_metrics()  # forgets the widths if the font changed
                widest = max((self._advance(self.label_text(i)) for i in range(len(tokens))), default=0)
                self.setWidth(int(widest + 16))
            self.picture = None  # force a redraw with the new strings
            self.update()

    def _font_metrics(self) -> QFontMetricsF:
        font = self.style.get("tickFont") or self.font()
        if font.toString() != self._advance_font:
            self._advances.clear()
            self._advance_font = font.toString()
        return QFontMetricsF(font)

    def _advance(self, text: str) -> float:
        """Label width in pixels, remembered: a step re-measures hundreds of labels that did not change."""
        if text not in self._advances:
            self._advances[text] = self._font_metrics().horizontalAdvance(text)
        return self._advances[text]

    def label_text(self, i: int) -> str:
        text = short(self.tokens[i])
        return f"{i} {text}" if self.prefix_index else text

    def tickValues(self, minVal: float, maxVal: float, size: float) -> list:  # noqa: N802 - pyqtgraph API
        minVal, maxVal = min(minVal, maxVal), max(minVal, maxVal)  # an inverted view passes them reversed
        n = len(self.tokens)
        if n == 0 or size <= 0:
            return []
        lo, hi = max(0, math.ceil(minVal)), min(n - 1, math.floor(maxVal))
        if hi < lo:
            return []
        fm = self._font_metrics()
        if self.orientation in ("left", "right"):
            per_label = fm.height() * 1.05
        else:
            widest = max(self._advance(self.label_text(i)) for i in range(lo, hi + 1))
            per_label = widest + 8
        visible = maxVal - minVal
        px_per_token = size / max(visible, 1e-9)
        stride = max(1, math.ceil(per_label / max(px_per_token, 1e-9)))
        return [(float(stride), [float(i) for i in range(lo - lo % stride, hi + 1, stride) if i >= lo])]

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:  # noqa: N802
        out = []
        for v in values:
            i = int(round(v))
            out.append(self.label_text(i) if 0 <= i < len(self.tokens) else "")
        return out
