"""Plugs the analysis features (issue 7) into the main window: head ablation, and the menus that
reach them. The main window calls `install(window)` once; every feature lives in its own module."""

from __future__ import annotations

import logging

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMainWindow, QMenu

from ..features.ablation import AblationController
from ..features.aggregate import RolloutControl
from ..features.session_files import SessionIO
from ..panels.head_stats import HeadStatsPanel
from ..panels.logit_lens import LogitLensPanel
from . import style

log = logging.getLogger(__name__)


class AnalysisUI:
    """What install() built, for the window (and the tests) to reach."""

    def __init__(self, window: QMainWindow) -> None:
        self.window = window
        self.compare = None
        self.ablation = AblationController(window.state, window.client, window.head_grid, window.logits_panel, window)
        self.rollout = RolloutControl(window.state, window.attention_view, window)
        self.logit_lens = LogitLensPanel(window.state, window.client)
        self._dock("lens", "Logit lens", self.logit_lens)
        self.head_stats = HeadStatsPanel(window.state, window.client, window.head_grid)
        self._dock("stats", "Head statistics", self.head_stats)
        self.menu = self._analysis_menu()
        self.session_io = SessionIO(window, self.rollout)

    def _dock(self, key: str, title: str, widget) -> None:  # noqa: ANN001
        """A new dock, tabbed behind the candidates (the right column stays two panels high)."""
        w = self.window
        dock = w.add_dock(key, title, widget, Qt.DockWidgetArea.RightDockWidgetArea)
        w.tabifyDockWidget(w.docks["logits"], dock)
        dock.visibilityChanged.connect(lambda on: on and widget._timer.start())  # brought to the front: catch up
        w.docks["logits"].raise_()

    def show_dock(self, key: str) -> None:
        dock = self.window.docks[key]
        dock.show()
        dock.raise_()

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
        rollout = QAction("Attention &rollout (attention view)", w)
        rollout.triggered.connect(lambda _c=False: self.rollout.box.toggle())
        menu.addAction(rollout)
        menu.addSeparator()
        lens = QAction("Logit &lens", w)
        lens.triggered.connect(lambda _c=False: self.show_dock("lens"))
        menu.addAction(lens)
        stats = QAction("Head &statistics", w)
        stats.triggered.connect(lambda _c=False: self.show_dock("stats"))
        menu.addAction(stats)
        menu.addSeparator()
        compare = QAction("Compare &with another prompt…", w)
        compare.triggered.connect(lambda _c=False: self.open_compare())
        menu.addAction(compare)
        return menu


    def open_compare(self):  # noqa: ANN201 - CompareDialog
        """The compare dialog (one per window, non-modal), prefilled with the prompt on screen."""
        from ..features.compare import CompareDialog

        w = self.window
        if self.compare is None:
            self.compare = CompareDialog(w.state, w.client, w)
            style.theme_plots(self.compare)
            self.compare.prompt_edit.setText(w.prompt_panel.prompt_edit.toPlainText())
            self.compare.source_edit.setText(w.prompt_panel.source_edit.toPlainText())
        self.compare.show()
        self.compare.raise_()
        return self.compare


HELP = [
    ("right-click a head", "Ablate it, scale it, ablate its layer, or clear all ablations (head grid)"),
    ("Ctrl+click a head", "Switch that head off / on again (head grid)"),
    ("Ctrl+S / Ctrl+Shift+O", "Save / open a session (prompt, steps, ablations, view)"),
]


def install(window: QMainWindow) -> AnalysisUI:
    return AnalysisUI(window)
