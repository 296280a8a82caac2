"""One look for the whole app: Fusion with the system's light or dark palette, plots to match."""

from __future__ import annotations

import os

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QPalette
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


def dark_palette() -> QPalette:
    pal = QPalette()
    roles = {
        QPalette.ColorRole.Window: "#2b2d31", QPalette.ColorRole.WindowText: "#e6e6e6",
        QPalette.ColorRole.Base: "#1f2023", QPalette.ColorRole.AlternateBase: "#2f3136",
        QPalette.ColorRole.Text: "#e6e6e6", QPalette.ColorRole.Button: "#35373c",
        QPalette.ColorRole.ButtonText: "#e6e6e6", QPalette.ColorRole.Highlight: "#3d7bd9",
        QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#35373c",
        QPalette.ColorRole.ToolTipText: "#e6e6e6", QPalette.ColorRole.PlaceholderText: "#9a9a9a",
        QPalette.ColorRole.Mid: "#55575c", QPalette.ColorRole.Light: "#4a4c52", QPalette.ColorRole.Dark: "#202124",
        QPalette.ColorRole.Link: "#7fb0ff",
    }
    for role, color in roles.items():
        pal.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        pal.setColor(QPalette.ColorGroup.Disabled, role, QColor("#7a7a7a"))
    return pal


def is_dark(palette: QPalette) -> bool:
    return palette.window().color().lightness() < 128


def apply(app: QApplication) -> None:
    """Fusion follows the system colour scheme (light or dark) in Qt ≥ 6.5; we only add spacing and captions.
    ATTENTION_INSPECTOR_THEME=dark|light overrides the system (e.g. for screenshots)."""
    forced = os.environ.get("ATTENTION_INSPECTOR_THEME", "").lower()
    if forced in ("dark", "light"):
        app.styleHints().setColorScheme(Qt.ColorScheme.Dark if forced == "dark" else Qt.ColorScheme.Light)
    app.setStyle("Fusion")
    if forced == "dark" and not is_dark(app.palette()):  # platforms without a theme (offscreen, bare X)
        app.setPalette(dark_palette())
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
