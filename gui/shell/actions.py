"""Every menu and action of the main window, by id, in one place (napari's qactions, in small).

ENTRIES says what each action is called, its keys and what Help → Keyboard shortcuts says about it;
MENUS says where it sits. Whoever owns the behaviour binds it by id (`registry.bind("file.quit",
window.close)`); nothing is looked up by its visible text. The shortcut table is made from ENTRIES,
so there is no second list to keep in step. Hints are gestures (click, hover) the table lists too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMainWindow, QMenu

log = logging.getLogger(__name__)

Key = QKeySequence.StandardKey | Qt.Key | str


@dataclass(frozen=True)
class Entry:
    id: str
    text: str
    keys: tuple[Key, ...] = ()  # the first is the primary shortcut
    help: str = ""  # a row in the shortcut table ("" = not listed)
    group: str = ""  # rows of one group merge: "↑ / ↓  Previous / next layer" (the first entry's help)


@dataclass(frozen=True)
class Hint:
    """A gesture the shortcut table lists (no action)."""

    id: str
    keys: str
    help: str


K = Qt.Key
SK = QKeySequence.StandardKey
ENTRIES: tuple[Entry | Hint, ...] = (
    # generate
    Entry("generate.step", "&Step", (K.Key_Right,), "Step: choose the next token (encoder-only: fill the first mask)"),
    Entry("generate.back", "&Back", (K.Key_Left,), "Back: undo the last step"),
    Entry("generate.run", "&Run / Stop", (K.Key_Return, K.Key_Enter), "Run the number of steps next to Run"),
    Entry("generate.stop", "S&top", (K.Key_Escape,), "Stop a run"),
    Entry("generate.reset", "R&eset to prompt", ("Ctrl+R",), "Reset to the prompt"),
    Entry("generate.mask", "&Mask selected token", (K.Key_M,), "Mask the selected token (encoder-only models)"),
    # view
    Entry("view.prev_layer", "Previous layer", (K.Key_Up,), "Previous / next layer", group="layer"),
    Entry("view.next_layer", "Next layer", (K.Key_Down,), group="layer"),
    Entry("view.prev_head", "Previous head", (K.Key_BracketLeft,), "Previous / next head", group="head"),
    Entry("view.next_head", "Next head", (K.Key_BracketRight,), group="head"),
    Entry("view.mean_heads", "Mean of heads", (K.Key_A,), "Mean of heads on / off"),
    Entry("view.prev_query", "Previous query token", (K.Key_Comma,), "Previous / next query token", group="query"),
    Entry("view.next_query", "Next query token", (K.Key_Period,), group="query"),
    Entry("view.log_scale", "Log colour scale", (K.Key_L,), "Linear / log colour scale"),
    Entry("view.reset_layout", "Reset &layout"),
    # file
    Entry("file.open_folder", "&Open model folder…", (SK.Open,), "Open a checkpoint folder"),
    Entry("file.open_prompt", "Open &prompt from file…", ("Ctrl+Shift+P",), "Open a prompt from a text file (its token "
          "count is shown before it runs)"),
    Entry("file.open_cache", "Open from &cache…", ("Ctrl+Shift+H",), "Open a model from the Hugging Face cache (a list "
          "with sizes; the ones that cannot be opened say why)"),
    Entry("file.connect_engine", "Co&nnect to engine…", (), "Connect to an engine on another machine (an SSH host, or "
          "an address and token), or come back to this computer"),
    Entry("file.reconnect_engine", "Reconnect to en&gine"),
    Entry("file.open_session", "Open &session…", ("Ctrl+Shift+O",), "Open / save a session (prompt, steps, ablations, "
          "view)", group="session"),
    Entry("file.save_session", "Sa&ve session…", (SK.Save,), group="session"),
    Entry("file.export_view", "Export &view as PNG / SVG…"),
    Entry("file.export_head_view", "Export &head view as PNG / SVG…"),
    Entry("file.export_pattern", "Export &pattern as CSV / NPY…"),
    Entry("file.export_summary", "Export trace s&ummary (.json)…"),
    Entry("file.export_trace", "&Export trace (.npz)…", ("Ctrl+E",), "Export the trace (.npz)"),
    Entry("file.screenshot", "Save &screenshot…"),
    Entry("file.quit", "&Quit", (SK.Quit,)),
    # analysis
    Entry("analysis.clear_ablations", "&Clear ablations"),
    Entry("analysis.rollout", "Attention &rollout (attention view)"),
    Entry("analysis.logit_lens", "Logit &lens"),
    Entry("analysis.head_stats", "Head &statistics"),
    Entry("analysis.inside_head", "&Inside this head", ("I",), "Inside this head: q·k, scale, mask, softmax for the "
          "selected query"),
    Entry("analysis.attribution", "Which heads &wrote the token (logit attribution)"),
    Entry("analysis.inside_mlp", "Inside the &MLP (neurons, residual stream)"),
    Entry("analysis.compare", "Compare &with another prompt…"),
    # help
    Entry("help.shortcuts", "&Keyboard shortcuts", (SK.HelpContents,)),
    Entry("help.about", "&About"),
    # gestures
    Hint("hint.click_token", "click a token", "Select it as the query"),
    Hint("hint.hover_token", "hover a token", "Tint the others by the selected head's attention from it"),
    Hint("hint.choose_candidate", "double-click a candidate", "Choose it (at the frontier) or branch onto it"),
    Hint("hint.ablate_menu", "right-click a head",
         "Ablate it, scale it, ablate its layer, or clear all ablations (head grid)"),
    Hint("hint.ablate_toggle", "Ctrl+click a head", "Switch that head off / on again (head grid)"),
)

# menu id -> (title, items): an action id, "-" for a separator, "menu:<id>" for a submenu (filled by
# its owner on aboutToShow), "section:<id>" for a place others add to later (the docks' toggles)
MENUS: dict[str, tuple[str, tuple[str, ...]]] = {
    "file": ("&File", ("file.open_folder", "file.open_cache", "menu:file.hf", "menu:file.bundled", "menu:file.recent", "-",
                       "file.connect_engine", "file.reconnect_engine", "-", "file.open_prompt", "-",
                       "file.open_session", "file.save_session", "-", "file.export_view", "file.export_head_view", "file.export_pattern",
                       "file.export_summary", "file.export_trace", "file.screenshot", "-", "file.quit")),
    "generate": ("&Generate", ("generate.step", "generate.back", "generate.run", "generate.stop", "generate.reset",
                               "generate.mask")),
    "view": ("&View", ("section:view.docks", "-", "view.prev_layer", "view.next_layer", "view.prev_head",
                       "view.next_head", "view.mean_heads", "view.prev_query", "view.next_query", "view.log_scale", "-",
                       "view.reset_layout")),
    "analysis": ("&Analysis", ("analysis.clear_ablations", "analysis.rollout", "-", "analysis.logit_lens",
                               "analysis.head_stats", "analysis.inside_head", "analysis.attribution",
                               "analysis.inside_mlp", "-",
                               "analysis.compare")),
    "help": ("&Help", ("help.shortcuts", "help.about")),
}
SUBMENUS = {"file.hf": "Open from &Hugging Face cache", "file.bundled": "&Bundled models", "file.recent": "&Recent"}

ARROWS = {"Right": "→", "Left": "←", "Up": "↑", "Down": "↓", "Return": "Enter"}


def key_text(keys: Iterable[Key]) -> str:
    """How the shortcut table writes keys: arrows as arrows, Return and Enter as one Enter."""
    names: list[str] = []
    for key in keys:
        text = QKeySequence(key).toString(QKeySequence.SequenceFormat.NativeText)
        text = ARROWS.get(text, text)
        if text and text not in names:
            names.append(text)
    return " / ".join(names)


class ActionRegistry:
    """Builds the window's menu bar from MENUS and ENTRIES; owners bind behaviour by id."""

    def __init__(self, window: QMainWindow) -> None:
        self.window = window
        self.entries = {e.id: e for e in ENTRIES if isinstance(e, Entry)}
        self.actions: dict[str, QAction] = {}
        self.menus: dict[str, QMenu] = {}
        self._sections: dict[str, tuple[QMenu, QAction]] = {}
        self._bound: set[str] = set()
        bar = window.menuBar()
        for menu_id, (title, items) in MENUS.items():
            menu = self.menus[menu_id] = bar.addMenu(title)
            for item in items:
                self._add_item(menu, item)

    def _add_item(self, menu: QMenu, item: str) -> None:
        if item == "-":
            menu.addSeparator()
        elif item.startswith("menu:"):
            sub_id = item.removeprefix("menu:")
            self.menus[sub_id] = menu.addMenu(SUBMENUS[sub_id])
        elif item.startswith("section:"):
            anchor = menu.addSeparator()  # invisible: later entries go in front of it
            anchor.setVisible(False)
            self._sections[item.removeprefix("section:")] = (menu, anchor)
        else:
            entry = self.entries[item]
            action = QAction(entry.text, self.window)
            if entry.keys:
                action.setShortcuts([QKeySequence(k) for k in entry.keys])
            menu.addAction(action)
            self.actions[item] = action

    # -- for the owners -----------------------------------------------------------------------------
    def bind(self, action_id: str, slot: Callable[[], object]) -> QAction:
        action = self.actions[action_id]
        action.triggered.connect(lambda _checked=False: slot())
        self._bound.add(action_id)
        return action

    def action(self, action_id: str) -> QAction:
        return self.actions[action_id]

    def menu(self, menu_id: str) -> QMenu:
        return self.menus[menu_id]

    def add_to_section(self, section_id: str, action: QAction) -> None:
        menu, anchor = self._sections[section_id]
        menu.insertAction(anchor, action)

    def unbound(self) -> list[str]:
        """Actions nobody gave behaviour to (a test keeps this empty)."""
        return [a for a in self.actions if a not in self._bound]

    # -- Help → Keyboard shortcuts ------------------------------------------------------------------
    def shortcut_table(self) -> list[tuple[str, str]]:
        """(keys, what they do) for every listed entry, groups merged, then the gestures."""
        rows: list[tuple[str, str]] = []
        groups: dict[str, int] = {}
        keys_by_group: dict[str, list[Key]] = {}
        for e in ENTRIES:
            if isinstance(e, Hint):
                rows.append((e.keys, e.help))
            elif e.group:  # the group's first entry describes it
                keys_by_group.setdefault(e.group, []).extend(e.keys[:1])
                if e.group not in groups:
                    groups[e.group] = len(rows)
                    rows.append(("", e.help))
            elif e.help and e.keys:
                rows.append((key_text(e.keys), e.help))
        for group, at in groups.items():
            rows[at] = (key_text(keys_by_group[group]), rows[at][1])
        return rows
