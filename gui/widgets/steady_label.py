"""Labels and controls whose text changes on every step without re-laying out the window.

A QLabel's setText always calls updateGeometry(), and Qt's layouts pass that up to the top-level window
even when no size hint changed: every step re-laid out the QMainWindow (its dock layout, a geometry
animation per dock, the tab bars and dock frames repainted), ~5 ms of the GUI thread's ~25 ms per step.
A SteadyLabel keeps its QLabel in a container without a layout, which stops that climb, and asks its own
layout for room only when its text needs another line. It keeps a line it no longer needs until its width
changes or the text is cleared, so a heading whose token is long one step and short the next does not
make the panel below it jump up and down a line on every step (and re-lay out the window). In "elide"
mode it is one line whatever the text, cut with "…" where it does not fit (the whole text in its
tooltip), and it never asks for the text's width, so a long caption cannot widen its dock.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QSize, Qt
from PySide6.QtGui import QFontMetrics, QResizeEvent
from PySide6.QtWidgets import QAbstractSpinBox, QDoubleSpinBox, QLabel, QSizePolicy, QSpinBox, QWidget

MIN_WIDTH = 40  # what a SteadyLabel asks of its layout at least, in pixels


class SteadyLabel(QWidget):
    """A caption or heading that changes often: `setText` repaints it, re-lays out only on a new height.
    `wrap`: word-wrapped over as many lines as it needs; otherwise one elided line."""

    def __init__(self, text: str = "", wrap: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel(self)  # no layout here: its updateGeometry() stops at this widget
        # opaque: a new text repaints this widget alone, not the dock beneath it (its frame and title bar)
        self.setAutoFillBackground(True)
        self.label.setWordWrap(wrap)
        self.label.installEventFilter(self)  # a style sheet or font change alters the height it needs
        self._wrap = wrap
        self._text = ""
        self._given = -1  # the height the layout last got from this widget (for the current width)
        self._tallest = 0  # the most lines' height a text needed at this width (kept until it changes)
        policy = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        policy.setHeightForWidth(wrap)
        self.setSizePolicy(policy)
        self.setText(text)

    # -- the QLabel API the panels use --------------------------------------------------------------
    def text(self) -> str:
        return self._text

    def setText(self, text: str) -> None:  # noqa: N802 - QLabel API
        if text == self._text:
            return
        self._text = text
        if not text:
            self._tallest = 0
        self._show()

    def clear(self) -> None:
        self.setText("")

    def wordWrap(self) -> bool:  # noqa: N802 - QLabel API
        return self._wrap

    def setAlignment(self, alignment: Qt.AlignmentFlag) -> None:  # noqa: N802 - QLabel API
        self.label.setAlignment(alignment)

    def setObjectName(self, name: str) -> None:  # noqa: N802 - the style sheet styles QLabel#caption
        super().setObjectName(name)
        self.label.setObjectName(name)

    # -- geometry ----------------------------------------------------------------------------------
    def _margins(self) -> tuple[int, int]:
        m = self.contentsMargins()
        return m.left() + m.right(), m.top() + m.bottom()

    def _label_height(self, width: int) -> int:
        if self._wrap and self._text:
            return self.label.heightForWidth(max(1, width))
        return QFontMetrics(self.label.font()).height() + 2 * self.label.margin()

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt API
        return self._wrap

    def heightForWidth(self, width: int) -> int:  # noqa: N802 - Qt API
        mx, my = self._margins()
        needed = self._label_height(width - mx) + my
        return max(needed, self._tallest) if width == self.width() else needed

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        mx, my = self._margins()
        return QSize(MIN_WIDTH + mx, self._label_height(max(MIN_WIDTH, self.width() - mx)) + my)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        mx, my = self._margins()
        return QSize(MIN_WIDTH + mx, (self._label_height(MIN_WIDTH) if not self._wrap else 0) + my)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if event.oldSize().width() != event.size().width():
            self._tallest = 0  # another width: the lines the text needs there
        self.label.setGeometry(self.contentsRect())
        self._show(resized=True)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if watched is self.label and event.type() in (QEvent.Type.FontChange, QEvent.Type.StyleChange):
            self._given = -1
            self.updateGeometry()
        return False

    def _show(self, resized: bool = False) -> None:
        width = self.contentsRect().width()
        if self._wrap:
            shown, tip = self._text, ""
        else:
            shown = QFontMetrics(self.label.font()).elidedText(self._text, Qt.TextElideMode.ElideRight, max(1, width))
            tip = self._text if shown != self._text else ""
        if self.label.text() != shown:
            self.label.setText(shown)
        if self.label.toolTip() != tip:
            self.label.setToolTip(tip)
        needed = self.heightForWidth(self.width()) if self._wrap else self.sizeHint().height()
        if self._wrap:
            self._tallest = max(self._tallest, needed)
        if needed != self._given:
            self._given = needed
            if not resized or needed != self.height():
                self.updateGeometry()  # one more or one fewer line: the layout must give it room


def set_spin_range(spin: QSpinBox | QDoubleSpinBox | QAbstractSpinBox, low: float, high: float) -> None:
    """QSpinBox.setRange re-lays out the window even when the range is the same: set it only on a change."""
    if (spin.minimum(), spin.maximum()) != (low, high):
        spin.setRange(low, high)
