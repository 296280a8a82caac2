"""Plugs the analysis features into the main window: head ablation, rollout, the logit lens and head
statistics docks, session files, exports and the compare dialog, and binds their actions by id
(gui/shell/actions.py). The main window calls `install(window)` once; every feature lives in its own
module and knows only the panels it extends."""

from __future__ import annotations

import logging

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QMainWindow, QMenu

from ..features.ablation import AblationController
from ..features.aggregate import RolloutControl
from ..features.compare import CompareDialog
from ..features.exports import Exports
from ..features.prompt_file import PromptFile
from ..features.session_files import SessionFiles
from ..panels.head_stats import HeadStatsPanel
from ..panels.inside_head import InsideHeadPanel
from ..panels.inside_mlp import InsideMlpPanel
from ..panels.logit_lens import LogitLensPanel
from . import style

log = logging.getLogger(__name__)

MIN_VIEW_HEIGHT = 320  # what the attention view keeps when "Inside this head" opens below it
MIN_INSIDE_HEIGHT = 200


class AnalysisUI:
    """What install() built, for the window (and the tests) to reach."""

    def __init__(self, window: QMainWindow) -> None:
        self.window = window
        self.compare: CompareDialog | None = None
        self.ablation = AblationController(window.state, window.client, window.head_grid, window.logits_panel, window)
        self.rollout = RolloutControl(window.state, window.attention_view, window)
        self.logit_lens = LogitLensPanel(window.state, window.client)
        self._dock("lens", "Logit lens", self.logit_lens)
        self.head_stats = HeadStatsPanel(window.state, window.client, window.head_grid)
        self._dock("stats", "Head statistics", self.head_stats)
        self.inside_head = InsideHeadPanel(window.state, window.client, window.head_grid)  # issue 15
        inside = window.add_dock("inside", "Inside this head", self.inside_head, Qt.DockWidgetArea.BottomDockWidgetArea)
        inside.visibilityChanged.connect(lambda on: on and self.inside_head.refresh_soon())
        inside.hide()  # opened from Analysis → Inside this head (the default layout stays as it was)
        self.inside_mlp = InsideMlpPanel(window.state, window.client)  # issue 29
        mlp = window.add_dock("inside_mlp", "Inside the MLP", self.inside_mlp, Qt.DockWidgetArea.BottomDockWidgetArea)
        mlp.visibilityChanged.connect(lambda on: on and self.inside_mlp.refresh_soon())
        mlp.hide()  # opened from Analysis → Inside the MLP
        window.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)  # under the view only
        self.session_io = SessionFiles(window, self.rollout)
        self.exports = Exports(window, self.session_io.view_state)
        self.prompt_file = PromptFile(window)  # issue 13: File → Open prompt from file (binds file.open_prompt)
        self.menu: QMenu = window.registry.menu("analysis")
        self._bind_actions()

    def _bind_actions(self) -> None:
        r, io, ex = self.window.registry, self.session_io, self.exports
        for action_id, slot in (
            ("analysis.clear_ablations", self.ablation.clear),
            ("analysis.rollout", self.rollout.toggle),
            ("analysis.logit_lens", lambda: self.show_dock("lens")),
            ("analysis.head_stats", lambda: self.show_dock("stats")),
            ("analysis.inside_head", lambda: self.toggle_inside("inside")),
            ("analysis.attribution", lambda: self.show_inside("attribution")),
            ("analysis.inside_mlp", self.show_inside_mlp),
            ("analysis.compare", self.open_compare),
            ("file.open_session", io.open_session_dialog),
            ("file.save_session", io.save_session_dialog),
            ("file.export_view", ex.export_view_dialog),
            ("file.export_pattern", ex.export_pattern_dialog),
            ("file.export_summary", ex.export_summary_dialog),
            ("file.export_trace", ex.export_trace_dialog),
        ):
            r.bind(action_id, slot)

    def _dock(self, key: str, title: str, panel: LogitLensPanel | HeadStatsPanel) -> None:
        """A new dock, tabbed behind the candidates (the right column stays two panels high)."""
        w = self.window
        dock = w.add_dock(key, title, panel, Qt.DockWidgetArea.RightDockWidgetArea)
        w.tabifyDockWidget(w.docks["logits"], dock)
        dock.visibilityChanged.connect(lambda on: on and panel.refresh_soon())  # brought to the front: catch up
        w.docks["logits"].raise_()

    def show_dock(self, key: str) -> None:
        dock = self.window.docks[key]
        dock.show()
        dock.raise_()

    def show_inside(self, tab: str = "inside") -> None:
        """The "Inside this head" dock at a tab ("inside", "attribution", "embeddings"), below the view. It takes
        up to 46% of the window's height, leaving the attention view MIN_VIEW_HEIGHT px where the window has them;
        the window's size stays as it is (the dock's content scrolls when it has less than it asks for)."""
        w, dock = self.window, self.window.docks["inside"]
        was_hidden = dock.isHidden()
        size = w.size()
        shared = w.centralWidget().height()  # what the view and the dock share, read before the dock takes its part
        self.inside_head.show_tab(tab)
        self.show_dock("inside")
        if was_hidden and not dock.isFloating():
            height = max(MIN_INSIDE_HEIGHT, min(int(w.height() * 0.46), shared - MIN_VIEW_HEIGHT))
            w.resizeDocks([dock], [height], Qt.Orientation.Vertical)
            # a dock shown for the first time is laid out after this call: size it again once it has been
            QTimer.singleShot(0, lambda: dock.isVisible() and w.resizeDocks([dock], [height], Qt.Orientation.Vertical))
        if not (w.isMaximized() or w.isFullScreen()) and w.size() != size:
            w.resize(size)  # a dock never changes the window's size (issue 30)

    def toggle_inside(self, tab: str = "inside") -> None:
        """The I key: opens the dock at `tab`; pressed again while that tab is on screen, closes it."""
        dock = self.window.docks["inside"]
        if dock.isVisible() and not dock.visibleRegion().isEmpty() and self.inside_head.tabs.currentWidget() is \
                self.inside_head.tab(tab):
            dock.hide()
            return
        self.show_inside(tab)

    def show_inside_mlp(self) -> None:
        """The "Inside the MLP" dock, below the view (tabbed with "Inside this head")."""
        w, dock = self.window, self.window.docks["inside_mlp"]
        was_hidden = dock.isHidden()
        self.show_dock("inside_mlp")
        if was_hidden and not dock.isFloating():
            w.resizeDocks([dock], [int(w.height() * 0.5)], Qt.Orientation.Vertical)

    def open_compare(self) -> CompareDialog:
        """The compare dialog (one per window, non-modal), prefilled with the prompt on screen."""
        w = self.window
        if self.compare is None:
            self.compare = CompareDialog(w.state, w.client, w)
            style.theme_plots(self.compare)
            texts = w.prompt_panel.texts()
            self.compare.prompt_edit.setText(texts[0])
            self.compare.source_edit.setText(texts[1])
        self.compare.show()
        self.compare.raise_()
        return self.compare


def install(window: QMainWindow) -> AnalysisUI:
    return AnalysisUI(window)

