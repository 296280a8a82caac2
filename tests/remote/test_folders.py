"""Open model folder against a remote engine: the server lists its --models-dir folders and what is under them
(checkpoints marked), nothing outside; the window's folder browser walks them and opens a checkpoint there.
In-process the engine answers None and the window keeps this computer's own folder dialog."""

from __future__ import annotations

import os

import pytest

from engine import CheckpointError
from engine.local import LocalEngine
from engine.remote.folders import list_folders


@pytest.fixture(scope="module")
def modern_dir(tmp_path_factory):
    """Overrides conftest's: a --models-dir with a checkpoint one level down, a hidden folder, a stray file and
    a link that leads outside it."""
    from tests import modern_factories

    root = tmp_path_factory.mktemp("models")
    modern_factories.ARCHITECTURES["gemma2"](root / "google" / "gemma2")
    (root / "google" / "notes").mkdir()
    (root / ".cache").mkdir()
    (root / "README.txt").write_text("not a folder")
    outside = tmp_path_factory.mktemp("outside")
    os.symlink(outside, root / "escape")
    return root


def test_local_engine_keeps_the_local_dialog():
    assert LocalEngine().list_folders() is None


def test_listing_stays_inside_the_roots(modern_dir, tmp_path):
    root = modern_dir.resolve()
    assert list_folders([root]) == [{"path": str(root), "name": str(root), "checkpoint": False}]
    assert [e["name"] for e in list_folders([root], str(root))] == ["google"]  # no hidden, file or escaping link
    inside = list_folders([root], str(root / "google"))
    assert [(e["name"], e["checkpoint"]) for e in inside] == [("gemma2", True), ("notes", False)]
    with pytest.raises(CheckpointError, match="--models-dir"):
        list_folders([root], str(tmp_path))
    with pytest.raises(CheckpointError, match="--models-dir"):
        list_folders([root], str(root / "escape"))
    with pytest.raises(CheckpointError, match="--models-dir"):
        list_folders([root], str(root / "google" / ".." / ".."))


def test_remote_engine_lists_its_models_dirs_and_opens_one(eng, modern_dir):
    root = modern_dir.resolve()
    top = eng.list_folders()
    assert [e["path"] for e in top] == [str(root)]
    google = eng.list_folders(str(root))[0]
    checkpoint = eng.list_folders(google["path"])[0]
    assert checkpoint["checkpoint"] and checkpoint["name"] == "gemma2"
    with pytest.raises(CheckpointError, match="--models-dir"):
        eng.list_folders("/")
    assert eng.load_model(checkpoint["path"]).n_layers > 0


def test_folder_dialog_walks_the_server_folders(qtbot, eng, modern_dir):
    from gui.shell.app import make_app
    from gui.shell.server_folders import UP, ServerFoldersDialog

    make_app()
    dialog = ServerFoldersDialog(eng.list_folders, eng.address)
    qtbot.addWidget(dialog)
    opened: list[str] = []
    dialog.open_requested.connect(opened.append)

    def names() -> list[str]:
        return [dialog.entries.item(i).text() for i in range(dialog.entries.count())]

    assert names() == [f"▸ {modern_dir.resolve()}"]
    dialog._activated(dialog.entries.item(0))
    assert names() == [UP, "▸ google"]
    dialog._activated(dialog.entries.item(1))
    assert names() == [UP, "▣ gemma2", "▸ notes"]
    dialog.entries.setCurrentRow(2)
    assert not dialog.open_button.isEnabled()  # a plain folder is not opened
    dialog.entries.setCurrentRow(1)
    assert dialog.open_button.isEnabled()
    dialog._activated(dialog.entries.item(0))  # up, then down again
    assert names() == [UP, "▸ google"]
    dialog._activated(dialog.entries.item(1))
    dialog._activated(dialog.entries.item(1))  # a checkpoint: opened
    assert opened == [str(modern_dir.resolve() / "google" / "gemma2")]
    dialog.show_folder("/")  # refused by the server: said in the dialog, the listing stays
    assert "Cannot list it" in dialog.place.text() and names() == [UP, "▣ gemma2", "▸ notes"]


def test_window_open_folder_browses_the_server(qtbot, server, modern_dir, tmp_path, monkeypatch):
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QFileDialog

    from gui.shell.app import make_app
    from gui.shell.main_window import MainWindow

    make_app()
    win = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat), devices=["cpu"])
    qtbot.addWidget(win)
    win.show()
    asked_locally: list[bool] = []
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: asked_locally.append(True) or "")
    try:
        win.remote_engine.connect_to({"address": server.address, "token": server.token})
        qtbot.waitUntil(lambda: win.client.engine.remote and not win.client.busy, timeout=60_000)
        win.registry.action("file.open_folder").trigger()
        dialog = win.folder_browser
        assert dialog.isVisible() and not asked_locally  # the server's folders, not this computer's dialog
        dialog._activated(dialog.entries.item(0))
        dialog._activated(dialog.entries.item(1))  # google
        dialog._activated(dialog.entries.item(1))  # gemma2: opened on the server
        qtbot.waitUntil(lambda: not win.client.busy and win.state.model is not None, timeout=60_000)
        assert win.state.model.folder == str(modern_dir.resolve() / "google" / "gemma2") and not win.errors
        # where the server placed it, in the status bar's device tooltip (one device today)
        assert f"cpu layers 0–{win.state.model.n_layers - 1}" in win.status_labels["device"].toolTip()
    finally:
        win.close()


def test_remote_model_says_its_placement(eng):
    assert eng.load_model("tiny-gpt").placement == load_local_placement("tiny-gpt")


def load_local_placement(name: str) -> str:
    from engine import load_model

    return load_model(name, device="cpu").placement
