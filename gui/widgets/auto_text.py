"""A plain-text box as tall as its text (wrapped lines), between a minimum and a maximum number of lines;
past the maximum it scrolls. So a one-line prompt takes one line, not half the column."""

from __future__ import annotations

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QFontMetrics, QResizeEvent
from PySide6.QtWidgets import QFrame, QPlainTextEdit, QSizePolicy, QWidget


class AutoHeightTextEdit(QPlainTextEdit):
    def __init__(self, min_lines: int = 1, max_lines: int = 8, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.min_lines, self.max_lines = max(1, min_lines), max(min_lines, max_lines)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.document().contentsChanged.connect(self._fit)
        self._fit()

    def set_line_limits(self, min_lines: int, max_lines: int) -> None:
        self.min_lines, self.max_lines = max(1, min_lines), max(min_lines, max_lines)
        self._fit()

    def text_lines(self) -> int:
        """Lines the text takes at the current width (wrapped), at least one."""
        fm = QFontMetrics(self.font())
        margin = 2 * self.document().documentMargin()
        width = max(20, self.viewport().width() - int(margin) - 2)
        text = self.toPlainText() or " "
        # a trailing newline starts a line of its own; boundingRect would not count it
        rect = fm.boundingRect(QRect(0, 0, width, 1 << 20), int(Qt.TextFlag.TextWordWrap), text + (" " if text.endswith("\n") else ""))
        return max(1, round(rect.height() / max(1, fm.lineSpacing())))

    def height_for_lines(self, lines: int) -> int:
        fm = QFontMetrics(self.font())
        frame = 2 * self.frameWidth() if self.frameShape() != QFrame.Shape.NoFrame else 0
        return int(lines * fm.lineSpacing() + 2 * self.document().documentMargin() + frame + 2)

    def _fit(self) -> None:
        lines = min(self.max_lines, max(self.min_lines, self.text_lines()))
        h = self.height_for_lines(lines)
        if h != self.height() or self.minimumHeight() != h:
            self.setFixedHeight(h)
        policy = Qt.ScrollBarPolicy.ScrollBarAsNeeded if self.text_lines() > self.max_lines else Qt.ScrollBarPolicy.ScrollBarAlwaysOff
        self.setVerticalScrollBarPolicy(policy)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if event.oldSize().width() != event.size().width():
            self._fit()  # a narrower dock wraps the text onto more lines

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(super().sizeHint().width(), self.height_for_lines(min(self.max_lines, max(self.min_lines, self.text_lines()))))
