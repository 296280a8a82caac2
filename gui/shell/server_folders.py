"""File → Open model folder when the engine is elsewhere: a small browser of the folders that engine may open
(a server's --models-dir folders and what is under them), listed by the engine itself, since the laptop's file
dialog cannot see the server's disk. Engines that open any local folder answer None (the local dialog)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QVBoxLayout,
    QWidget,
)

UP = ".. (up)"


class ServerFoldersDialog(QDialog):
    """Lists `list_folders(path)` entries ({"path", "name", "checkpoint"}); a double-click on a plain folder goes
    into it, on a checkpoint (it holds config.json) opens it; Open opens the selected checkpoint."""

    open_requested = Signal(str)  # the folder's path on the engine's machine

    def __init__(self, list_folders: Callable[[str | None], list[dict[str, Any]] | None], where: str = "the server",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Open a model folder on {where}")
        self._list = list_folders
        self.path: str | None = None
        self._parents: list[str | None] = []
        self.place = QLabel()
        self.place.setWordWrap(True)
        self.entries = QListWidget()
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel)
        self.open_button = self.buttons.button(QDialogButtonBox.StandardButton.Open)
        self.buttons.accepted.connect(self._open_selected)
        self.buttons.rejected.connect(self.reject)
        self.entries.itemSelectionChanged.connect(self._selection_changed)
        self.entries.itemDoubleClicked.connect(self._activated)
        layout = QVBoxLayout(self)
        layout.addWidget(self.place)
        layout.addWidget(self.entries)
        layout.addWidget(self.buttons)
        self.resize(560, 420)
        self.show_folder(None)

    def show_folder(self, path: str | None) -> None:
        """List `path` (None: the engine's allowed folders themselves). An error from the engine is shown in the
        dialog, and the listing stays where it was."""
        try:
            rows = self._list(path) or []
        except Exception as exc:  # noqa: BLE001 - an engine error (or a dropped link) is a message here
            self.place.setText(f"<b>Cannot list it:</b> {exc}")
            return
        self.path = path
        self.entries.clear()
        if path is not None:
            self.entries.addItem(QListWidgetItem(UP))
        for row in rows:
            item = QListWidgetItem(("▣ " if row.get("checkpoint") else "▸ ") + str(row["name"]))
            item.setData(Qt.ItemDataRole.UserRole, row)
            item.setToolTip(str(row["path"]) + ("  (a checkpoint: config.json)" if row.get("checkpoint") else ""))
            self.entries.addItem(item)
        if path is None:
            self.place.setText("The folders this engine may open (its --models-dir folders)." if rows else
                               "This engine opens no folders: start the server with --models-dir FOLDER. "
                               "Bundled and cached models are under File → Open bundled model / Open from cache.")
        else:
            self.place.setText(f"{path}  —  ▣ a checkpoint (double-click or Open), ▸ a folder (double-click to go in)")
        self._selection_changed()

    def _selected(self) -> dict | None:
        item = self.entries.currentItem()
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    def _selection_changed(self) -> None:
        row = self._selected()
        self.open_button.setEnabled(bool(row and row.get("checkpoint")))

    def _activated(self, item: QListWidgetItem) -> None:
        row = item.data(Qt.ItemDataRole.UserRole)
        if row is None:  # up
            self.show_folder(self._parents.pop() if self._parents else None)
        elif row.get("checkpoint"):
            self._open(row)
        else:
            self._parents.append(self.path)
            self.show_folder(str(row["path"]))

    def _open_selected(self) -> None:
        self._open(self._selected())

    def _open(self, row: dict | None) -> None:
        if row and row.get("checkpoint"):
            self.open_requested.emit(str(row["path"]))
            self.accept()
