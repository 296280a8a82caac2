"""One look for the whole app: Fusion with the system's light or dark palette, plots to match."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QFont, QPalette
from PySide6.QtWidgets import QApplication, QWidget

STYLESHEET = """
QLabel#caption { color: palette(placeholder-text); font-size: 9pt; }
QLabel#banner { padding: 6px 8px; border-radius: 4px; }
QGroupBox { font-weight: 600; margin-top: 1.1em; }
QGroupBox::title { subcontrol-origin: margin; left: 6px; padding: 0 3px; }
QDockWidget::title { padding: 4px 6px; font-weight: 600; }
QPushButton { padding: 3px 10px; }
"""


def configure_pyqtgraph() -> None:
    # row-major: image[query, key], as numpy prints it
    pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)


def is_dark(palette: QPalette) -> bool:
    return palette.window().color().lightness() < 128


def apply(app: QApplication) -> None:
    """Fusion follows the system colour scheme (light or dark) in Qt ≥ 6.5; we only add spacing and captions."""
    app.setStyle("Fusion")
    font = app.font()
    if font.pointSizeF() < 9.5:
        font.setPointSizeF(9.5)
        app.setFont(font)
    app.setStyleSheet(STYLESHEET)
    configure_pyqtgraph()


def theme_plots(root: QWidget) -> None:
    """Give every pyqtgraph view the window's colours (call again when the scheme changes)."""
    pal = root.palette()
    bg, fg = pal.window().color(), pal.windowText().color()
    for view in root.findChildren(pg.GraphicsView):
        view.setBackground(bg)
    for axis in _axes(root):
        axis.setPen(fg)
        axis.setTextPen(fg)
        font = QFont(root.font())
        font.setPointSizeF(max(8.0, root.font().pointSizeF() - 0.5))
        axis.setTickFont(font)


def _axes(root: QWidget) -> list[pg.AxisItem]:
    out = []
    for view in root.findChildren(pg.GraphicsView):
        out += [item for item in view.scene().items() if isinstance(item, pg.AxisItem)]
    return out
