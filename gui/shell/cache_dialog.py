"""File → Open from cache…: the models in the local Hugging Face cache, their sizes and architectures, which
ones the engine can open (the others greyed, with the reason), and Open; and the File → Hugging Face cache
submenu (repo ids only).

Both list the cache in a thread of their own (gui/core/load_jobs.CacheScanner: a large cache takes a while to
walk, and the GUI thread must not wait for it); until it answers the dialog says it is scanning, and the
submenu shows what the last scan found (or "scanning …") and fills in when the new one arrives. Opening a row
goes through the main window's open_model, like any other source.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QMenu,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.load_jobs import CacheScanner, format_size

COLUMNS = ("model", "size", "type", "can open")


class CacheDialog(QDialog):
    open_requested = Signal(str)  # repo id, as load_model takes it

    def __init__(self, parent: QWidget | None = None, scan: Callable[[], list] | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open from the Hugging Face cache")
        self.infos: list = []
        self.status = QLabel("Scanning the Hugging Face cache …")
        self.status.setWordWrap(True)
        self.tree = QTreeWidget()
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        header = self.tree.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for c in range(1, len(COLUMNS)):
            header.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(False)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel)
        self.open_button = self.buttons.button(QDialogButtonBox.StandardButton.Open)
        self.open_button.setEnabled(False)
        self.buttons.accepted.connect(self._open_selected)
        self.buttons.rejected.connect(self.reject)
        self.tree.itemSelectionChanged.connect(self._selection_changed)
        self.tree.itemDoubleClicked.connect(lambda _item, _col: self._open_selected())
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.buttons)
        self.resize(720, 420)
        # no parent: the scanner's thread may outlive the dialog and still emit into a living object
        self.scanner = CacheScanner(scan=scan)
        self.scanner.scanned.connect(self.show_models)
        self.scanner.failed.connect(self.show_failure)
        self.scanner.start()

    @property
    def scanning(self) -> bool:
        return not self.infos and self.status.text().startswith("Scanning")

    # -- results ---------------------------------------------------------------------------------------
    def show_models(self, infos: list) -> None:
        self.infos = list(infos)
        self.tree.clear()
        muted = self.palette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
        first_supported = None
        for m in self.infos:
            can = "yes" if m.supported else m.reason
            item = QTreeWidgetItem([m.repo_id, format_size(m.size_bytes) or "—", m.model_type or "?", can])
            item.setData(0, Qt.ItemDataRole.UserRole, m.repo_id)
            item.setTextAlignment(1, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            tip = str(m.path) if m.path else m.repo_id
            if not m.supported:
                tip += f"\ncannot be opened: {m.reason}"
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsSelectable)
                for c in range(len(COLUMNS)):
                    item.setForeground(c, muted)
            for c in range(len(COLUMNS)):
                item.setToolTip(c, tip)
            self.tree.addTopLevelItem(item)
            if m.supported and first_supported is None:
                first_supported = item
        n_ok = sum(1 for m in self.infos if m.supported)
        if not self.infos:
            self.status.setText("No models in the local Hugging Face cache. Download one with "
                                "`huggingface-cli download <id>`, or open a checkpoint folder.")
        else:
            self.status.setText(f"{len(self.infos)} models in the cache, {n_ok} of them can be opened "
                                "(the greyed ones say why not).")
        if first_supported is not None:
            self.tree.setCurrentItem(first_supported)

    def show_failure(self, message: str) -> None:
        self.status.setText(message)

    # -- choosing --------------------------------------------------------------------------------------
    def selected_repo(self) -> str | None:
        item = self.tree.currentItem()
        if item is None or not item.isSelected() or not (item.flags() & Qt.ItemFlag.ItemIsSelectable):
            return None
        return item.data(0, Qt.ItemDataRole.UserRole)

    def _selection_changed(self) -> None:
        self.open_button.setEnabled(self.selected_repo() is not None)

    def _open_selected(self) -> None:
        repo = self.selected_repo()
        if repo is None:
            return
        self.open_requested.emit(repo)
        self.accept()


def show_cache_dialog(window, scan: Callable[[], list] | None = None) -> CacheDialog:  # noqa: ANN001 - MainWindow
    dialog = CacheDialog(window, scan=scan)
    dialog.open_requested.connect(lambda repo: window.open_model(repo, device=window.prompt_panel.device()))
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    window.cache_dialog = dialog
    dialog.show()
    return dialog


class CachedModelsMenu(QObject):
    """Fills a menu with the cached models' repo ids each time it opens, from a scan in another thread:
    the last scan's list (or "scanning …") at once, the new one when it arrives."""

    def __init__(self, menu: QMenu, open_model: Callable[[str], None],
                 scan: Callable[[], list] | None = None) -> None:
        super().__init__(menu)
        self.menu, self.open_model = menu, open_model
        self.names: list[str] | None = None  # what the last scan found (None: no scan has answered yet)
        self.scanner = CacheScanner(scan=scan or _cached_repo_ids)
        self.scanner.scanned.connect(self._scanned)
        self.scanner.failed.connect(self._failed)
        menu.aboutToShow.connect(self.refresh)

    def refresh(self) -> None:
        self._fill(self.names, scanning=True)
        self.scanner.start()  # a no-op while one is under way

    def _scanned(self, names: list) -> None:
        self.names = [str(n) for n in names]
        self._fill(self.names, scanning=False)

    def _failed(self, message: str) -> None:
        self.menu.clear()
        self.menu.addAction(f"({message})").setEnabled(False)

    def _fill(self, names: list[str] | None, scanning: bool) -> None:
        self.menu.clear()
        for name in names or []:
            self.menu.addAction(name, lambda n=name: self.open_model(n))
        if scanning:
            self.menu.addAction("(scanning the Hugging Face cache …)").setEnabled(False)
        elif not names:
            self.menu.addAction("(no models in the local Hugging Face cache)").setEnabled(False)


def _cached_repo_ids() -> list[str]:
    from engine.checkpoints.resolve import cached_models  # the scanner's thread walks the cache

    return cached_models()
