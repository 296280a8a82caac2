"""Plugs the analysis features (issue 7) into the main window: head ablation, and the menus that
reach them. The main window calls `install(window)` once; every feature lives in its own module."""

from __future__ import annotations

import logging

from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMainWindow, QMenu

from .ablation import AblationController

log = logging.getLogger(__name__)


class AnalysisUI:
    """What install() built, for the window (and the tests) to reach."""

    def __init__(self, window: QMainWindow) -> None:
        self.window = window
        self.ablation = AblationController(window.state, window.client, window.head_grid, window.logits_panel, window)
        self.menu = self._analysis_menu()

    def _analysis_menu(self) -> QMenu:
        w = self.window
        mb = w.menuBar()
        menu = QMenu("&Analysis", mb)
        help_action = next((a for a in mb.actions() if a.text().replace("&", "") == "Help"), None)
        if help_action is not None:
            mb.insertMenu(help_action, menu)
        else:
            mb.addMenu(menu)
        clear = QAction("&Clear ablations", w)
        clear.triggered.connect(lambda _c=False: self.ablation.clear())
        menu.addAction(clear)
        return menu


def install(window: QMainWindow) -> AnalysisUI:
    return AnalysisUI(window)
