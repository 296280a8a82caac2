"""File → Open from cache and the File → Hugging Face cache submenu list the cache in another thread: the
dialog opens at once saying it is scanning, the event loop keeps running while a slow scan is under way, and
the lists fill in when it answers (issue 28)."""

from __future__ import annotations

import threading

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QMenu

from engine.checkpoints import CachedModel


def _slow_scan(result: list):
    """A scan that waits for `gate` and records the thread it ran in."""
    gate, ran_in = threading.Event(), []

    def scan() -> list:
        ran_in.append(threading.get_ident())
        assert gate.wait(30), "the test never let the scan finish"
        return result

    return scan, gate, ran_in


def _ticks(qtbot, n: int) -> None:
    """The GUI thread's event loop turns: a QTimer fires n times."""
    count = [0]
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: count.__setitem__(0, count[0] + 1))
    timer.start()
    qtbot.waitUntil(lambda: count[0] >= n, timeout=10_000)
    timer.stop()


def test_the_dialog_scans_in_another_thread_without_blocking_the_event_loop(qtbot, window):
    from gui.shell.cache_dialog import show_cache_dialog

    model = CachedModel("org/tiny", None, 2048, "gpt2", True, "")
    scan, gate, ran_in = _slow_scan([model])
    dialog = show_cache_dialog(window, scan=scan)  # returns while the scan is still blocked
    assert dialog.isVisible() and dialog.scanning and "Scanning" in dialog.status.text()
    assert not dialog.open_button.isEnabled()
    qtbot.waitUntil(lambda: bool(ran_in), timeout=10_000)
    assert ran_in[0] != threading.get_ident()  # not the GUI thread
    _ticks(qtbot, 5)  # the event loop runs while the scan waits
    assert dialog.scanning and dialog.tree.topLevelItemCount() == 0
    gate.set()
    qtbot.waitUntil(lambda: not dialog.scanning, timeout=10_000)
    assert dialog.tree.topLevelItemCount() == 1 and dialog.selected_repo() == "org/tiny"
    dialog.close()


def test_a_failed_scan_is_a_message(qtbot, window):
    from gui.shell.cache_dialog import show_cache_dialog

    def broken() -> list:
        raise OSError("permission denied: ~/.cache/huggingface")

    dialog = show_cache_dialog(window, scan=broken)
    qtbot.waitUntil(lambda: not dialog.scanning, timeout=10_000)
    assert "permission denied" in dialog.status.text() and not dialog.open_button.isEnabled()
    dialog.close()


def test_the_cache_submenu_fills_from_a_scan_in_another_thread(qtbot):
    from gui.shell.cache_dialog import CachedModelsMenu

    menu, opened = QMenu(), []
    qtbot.addWidget(menu)
    scan, gate, ran_in = _slow_scan(["org/a", "org/b"])
    scan2, gate2, _ran = _slow_scan([])  # the second time it opens: the models were deleted meanwhile
    scans = [scan, scan2]
    filler = CachedModelsMenu(menu, opened.append, scan=lambda: scans.pop(0)())
    menu.aboutToShow.emit()  # what opening it does
    assert [a.text() for a in menu.actions()] == ["(scanning the Hugging Face cache …)"]
    qtbot.waitUntil(lambda: bool(ran_in), timeout=10_000)
    assert ran_in[0] != threading.get_ident()
    _ticks(qtbot, 5)
    gate.set()
    qtbot.waitUntil(lambda: filler.names is not None, timeout=10_000)
    assert [a.text() for a in menu.actions()] == ["org/a", "org/b"]
    menu.actions()[1].trigger()
    assert opened == ["org/b"]
    # opened again: the last list at once, while a new scan runs
    menu.aboutToShow.emit()
    assert [a.text() for a in menu.actions()] == ["org/a", "org/b", "(scanning the Hugging Face cache …)"]
    gate2.set()
    qtbot.waitUntil(lambda: filler.names == [], timeout=10_000)
    assert [a.text() for a in menu.actions()] == ["(no models in the local Hugging Face cache)"]
