"""A layout that places widgets left to right and wraps them onto new lines (Qt's FlowLayout example).

With hundreds of token chips, Qt asks for heightForWidth twice and then setGeometry for every change,
and each is a pass over every chip: the placement is computed once per width and kept until Qt
invalidates the layout (a chip added, shown, hidden or resized), and only chips that move are moved."""

from __future__ import annotations

from PySide6.QtCore import QMargins, QPoint, QRect, QSize, Qt
from PySide6.QtWidgets import QLayout, QLayoutItem, QWidget


class FlowLayout(QLayout):
    def __init__(self, parent: QWidget | None = None, spacing: int = 3) -> None:
        super().__init__(parent)
        self._items: list[QLayoutItem] = []
        self._spacing = spacing
        self._placed: dict[int, tuple[list[tuple[QLayoutItem, QRect]], int]] = {}
        self._min_size: QSize | None = None
        self._applied: dict[int, QRect] = {}  # id(item) -> the geometry it was last given
        self.setContentsMargins(QMargins(2, 2, 2, 2))

    def invalidate(self) -> None:
        self._placed.clear()
        self._min_size = None
        super().invalidate()

    def addItem(self, item: QLayoutItem) -> None:  # noqa: N802 - Qt API
        self._items.append(item)

    def count(self) -> int:
        return len(self._items)

    def itemAt(self, index: int) -> QLayoutItem | None:  # noqa: N802
        return self._items[index] if 0 <= index < len(self._items) else None

    def takeAt(self, index: int) -> QLayoutItem | None:  # noqa: N802
        if not 0 <= index < len(self._items):
            return None
        item = self._items.pop(index)
        self._applied.pop(id(item), None)
        self._placed.clear()  # no cached placement may refer to it (removeWidget invalidates Qt's side)
        self._min_size = None
        return item

    def expandingDirections(self) -> Qt.Orientation:  # noqa: N802
        return Qt.Orientation(0)

    def hasHeightForWidth(self) -> bool:  # noqa: N802
        return True

    def heightForWidth(self, width: int) -> int:  # noqa: N802
        return self._place(QRect(0, 0, width, 0))[1]

    def setGeometry(self, rect: QRect) -> None:  # noqa: N802
        super().setGeometry(rect)
        for item, geometry in self._place(rect)[0]:
            if self._applied.get(id(item)) != geometry:
                item.setGeometry(geometry)
                self._applied[id(item)] = geometry

    def sizeHint(self) -> QSize:  # noqa: N802
        return self.minimumSize()

    def minimumSize(self) -> QSize:  # noqa: N802
        if self._min_size is None:
            size = QSize()
            for item in self._items:
                size = size.expandedTo(item.minimumSize())
            m = self.contentsMargins()
            self._min_size = size + QSize(m.left() + m.right(), m.top() + m.bottom())
        return QSize(self._min_size)

    def _place(self, rect: QRect) -> tuple[list[tuple[QLayoutItem, QRect]], int]:
        """([(item, geometry)] for the visible items, height) within `rect`, computed once per width."""
        width = rect.width()
        if width not in self._placed:
            self._placed[width] = self._compute(QRect(0, 0, width, 0))
        placed, height = self._placed[width]
        if rect.x() or rect.y():
            placed = [(item, geometry.translated(rect.topLeft())) for item, geometry in placed]
        return placed, height

    def _compute(self, rect: QRect) -> tuple[list[tuple[QLayoutItem, QRect]], int]:
        m = self.contentsMargins()
        area = rect.adjusted(m.left(), m.top(), -m.right(), -m.bottom())
        x, y, line_height = area.x(), area.y(), 0
        placed = []
        for item in self._items:
            if item.isEmpty():  # a hidden chip kept for reuse
                continue
            hint = item.sizeHint()
            next_x = x + hint.width() + self._spacing
            if next_x - self._spacing > area.right() and line_height > 0:
                x, y = area.x(), y + line_height + self._spacing
                next_x = x + hint.width() + self._spacing
                line_height = 0
            placed.append((item, QRect(QPoint(x, y), hint)))
            x = next_x
            line_height = max(line_height, hint.height())
        return placed, y + line_height - rect.y() + m.bottom()

