"""Zoom and scroll for the head grid (gui/panels/heads.py): wheel, Ctrl+wheel, dragging, scroll bars, and the
grid's buttons and keys all change one thing, the cell size in screen pixels and the first visible cell, and
`apply()` puts that on the view. The rules (what "fit" means, how far it may scroll) are plain numbers in
gui/rendering/grid_view.py.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QObject, QPointF, QSignalBlocker, Qt, Signal
from PySide6.QtWidgets import QScrollBar

from ..rendering.grid_view import MAX_CELL_PX, Viewport, auto_px, fit_all_px

AUTO, ALL = "auto", "all"  # zoom modes that follow the dock's size; a number is a fixed cell size in pixels
WHEEL_PX = 60.0  # pixels scrolled per wheel notch
WHEEL_ZOOM = 1.2  # cell size factor per Ctrl+wheel notch
STEP_ZOOM = 1.5  # per button press or key


class GridViewBox(pg.ViewBox):
    """The grid's view box: the wheel scrolls (Ctrl+wheel zooms about the pointer, Shift+wheel scrolls across)
    and dragging pans, through the navigator; a click stays a click (it selects a head)."""

    def __init__(self) -> None:
        super().__init__(enableMenu=False)
        self.navigator: GridNavigator | None = None

    def wheelEvent(self, ev, axis=None) -> None:  # noqa: ANN001, N802 - pyqtgraph API
        if self.navigator is None:
            return
        ev.accept()
        notches = ev.delta() / 120.0
        horizontal = ev.orientation() == Qt.Orientation.Horizontal
        mods = ev.modifiers()
        if mods & Qt.KeyboardModifier.ControlModifier:
            self.navigator.zoom_by(WHEEL_ZOOM ** notches, anchor=self.mapToView(ev.pos()))
        elif horizontal or mods & Qt.KeyboardModifier.ShiftModifier:
            self.navigator.pan_pixels(-notches * WHEEL_PX, 0.0)
        else:
            self.navigator.pan_pixels(0.0, -notches * WHEEL_PX)

    def mouseDragEvent(self, ev, axis=None) -> None:  # noqa: ANN001, N802 - pyqtgraph API
        if self.navigator is None or ev.button() not in (Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton):
            ev.ignore()
            return
        ev.accept()
        d = ev.pos() - ev.lastPos()  # the view box's own coordinates are screen pixels
        self.navigator.pan_pixels(-d.x(), -d.y())


class GridNavigator(QObject):
    """Cell size and scroll position of an n_layers × n_heads grid in a GridViewBox, with two scroll bars."""

    view_changed = Signal()  # zoomed, scrolled or resized: labels and thumbnail resolution may follow

    def __init__(self, viewbox: GridViewBox, hbar: QScrollBar, vbar: QScrollBar, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.vb, self.hbar, self.vbar = viewbox, hbar, vbar
        viewbox.navigator = self
        self.shape = (0, 0)  # (layers, heads)
        self.zoom: str | float = AUTO
        self.x0 = self.y0 = 0.0
        self.px = 0.0  # screen pixels per cell now (0: nothing laid out yet)
        self.view: Viewport | None = None
        # the vertical bar keeps its room when hidden: appearing must not narrow the view, which would re-fit
        # the cells to the width and perhaps hide it again (the horizontal one only shows when zoomed in)
        policy = vbar.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        vbar.setSizePolicy(policy)
        for bar in (hbar, vbar):
            bar.hide()
        hbar.valueChanged.connect(lambda v: self._scrolled(v, None))
        vbar.valueChanged.connect(lambda v: self._scrolled(None, v))
        viewbox.sigResized.connect(lambda _vb: self.apply())

    # -- what the view is --------------------------------------------------------------------------------
    def screen(self) -> tuple[float, float]:
        s = self.vb.size()
        return s.width(), s.height()

    def cell_px_for(self, n_layers: int, n_heads: int) -> float:
        """Pixels per cell a grid of that shape gets (0 before the view is laid out)."""
        w, h = self.screen()
        if w < 2 or h < 2 or not n_layers or not n_heads:
            return 0.0
        if (n_layers, n_heads) != self.shape or self.zoom == AUTO:
            return auto_px(w, h, n_layers, n_heads)
        every = fit_all_px(w, h, n_layers, n_heads)
        if self.zoom == ALL:
            return every
        return min(max(float(self.zoom), every), max(MAX_CELL_PX, every))

    @property
    def zoomed(self) -> bool:
        """Cells are larger than what shows the whole grid."""
        w, h = self.screen()
        return bool(self.shape[0]) and self.px > fit_all_px(w, h, *self.shape) + 1e-6

    # -- changing it -------------------------------------------------------------------------------------
    def set_shape(self, n_layers: int, n_heads: int) -> None:
        """Another grid (model or attention kind): back to the automatic fit, at the top left."""
        if (n_layers, n_heads) != self.shape:
            self.shape, self.zoom, self.x0, self.y0 = (n_layers, n_heads), AUTO, 0.0, 0.0
        self.apply()

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        """Cells `factor` times larger, keeping the cell point `anchor` (default: the centre) where it is."""
        if not self.shape[0] or self.view is None:
            return
        w, h = self.screen()
        every = fit_all_px(w, h, *self.shape)
        new = min(max(self.px * factor, every), max(MAX_CELL_PX, every))
        v = self.view
        ax, ay = (anchor.x(), anchor.y()) if anchor is not None else (v.x0 + v.width / 2, v.y0 + v.height / 2)
        sx, sy = (ax - v.x0) * self.px, (ay - v.y0) * self.px  # the anchor's screen offset stays
        self.zoom = ALL if new <= every + 1e-6 else new
        self.x0, self.y0 = ax - sx / new, ay - sy / new
        self.apply()

    def zoom_to(self, px: float) -> None:
        self.zoom_by(px / self.px if self.px else 1.0)

    def fit_all(self) -> None:
        self.zoom = ALL
        self.apply()

    def pan_pixels(self, dx: float, dy: float) -> None:
        if self.px > 0:
            self.x0 += dx / self.px
            self.y0 += dy / self.px
            self.apply()

    def page(self, pages: float) -> None:
        """Scroll the layers by `pages` screens (PageDown = 1)."""
        self.pan_pixels(0.0, pages * 0.9 * self.screen()[1])

    def scroll_to_end(self, end: bool) -> None:
        self.y0 = float(self.shape[0]) if end else 0.0
        self.apply()

    def ensure_visible(self, layer: int, head: int | None) -> None:
        """Scroll, as little as possible, so cell (layer, head) is in view (head None: only the layer's row)."""
        v = self.view
        if v is None or v.contains(layer, v.x0 if head is None else head):
            return
        x0, y0 = v.scrolled_to(layer, 0 if head is None else head)
        self.x0, self.y0 = (v.x0 if head is None else x0), y0
        self.apply()

    def _scrolled(self, x: int | None, y: int | None) -> None:
        if self.px <= 0:
            return
        if x is not None:
            self.x0 = x / self.px
        if y is not None:
            self.y0 = y / self.px
        self.apply()

    def apply(self) -> None:
        """Put the cell size and origin on the view box and the scroll bars."""
        n_layers, n_heads = self.shape
        w, h = self.screen()
        px = self.cell_px_for(n_layers, n_heads)
        if px <= 0:
            return
        v = Viewport.make(self.x0, self.y0, px, w, h, n_layers, n_heads)
        self.px, self.view, self.x0, self.y0 = px, v, v.x0, v.y0
        self.vb.setRange(xRange=(v.x0, v.x0 + v.width), yRange=(v.y0, v.y0 + v.height), padding=0)
        for bar, n, origin, screen in ((self.hbar, n_heads, v.x0, w), (self.vbar, n_layers, v.y0, h)):
            extent = n * px
            with QSignalBlocker(bar):
                bar.setRange(0, max(0, round(extent - screen)))
                bar.setPageStep(max(1, round(screen)))
                bar.setSingleStep(max(1, round(min(px, WHEEL_PX))))
                bar.setValue(round(max(origin, 0.0) * px))
            bar.setVisible(extent > screen + 0.5)
        self.view_changed.emit()
