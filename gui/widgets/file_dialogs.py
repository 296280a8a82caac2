"""Save and open file dialogs that start in the folder used last (any of them), not the working directory.

The main window seeds `memory` from its settings and is told of each new folder (`memory.on_change`), so the
folder is remembered across runs too; everything else calls save_path / open_path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QWidget


@dataclass
class FolderMemory:
    folder: str = ""
    on_change: Callable[[str], None] | None = None

    def start(self, name: str = "") -> str:
        """Where a dialog opens: the last folder (if it still exists), with the suggested file name."""
        folder = Path(self.folder) if self.folder and Path(self.folder).is_dir() else Path.cwd()
        return str(folder / name) if name else str(folder)

    def remember(self, path: str) -> None:
        folder = str(Path(path).parent)
        if folder != self.folder:
            self.folder = folder
            if self.on_change is not None:
                self.on_change(folder)


memory = FolderMemory()


def save_path(parent: QWidget | None, title: str, name: str, filters: str) -> tuple[str, str]:
    """QFileDialog.getSaveFileName in the last folder used; (path, chosen filter), path "" if cancelled."""
    path, chosen = QFileDialog.getSaveFileName(parent, title, memory.start(name), filters)
    if path:
        memory.remember(path)
    return path, chosen


def open_path(parent: QWidget | None, title: str, filters: str) -> tuple[str, str]:
    """QFileDialog.getOpenFileName in the last folder used."""
    path, chosen = QFileDialog.getOpenFileName(parent, title, memory.start(), filters)
    if path:
        memory.remember(path)
    return path, chosen
