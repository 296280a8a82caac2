"""Start the app: QApplication, style, the main window, an excepthook that shows errors, --screenshot."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, QTimer, Signal
from PySide6.QtWidgets import QApplication

from . import desktop, style

log = logging.getLogger(__name__)

SCREENSHOT_TIMEOUT_MS = 180_000  # a screenshot run gives up (and still saves) after this long


class ErrorRelay(QObject):
    """Carries an unexpected exception from any thread to the window, through a queued signal."""

    raised = Signal(str)


def install_excepthook(window) -> ErrorRelay:  # noqa: ANN001 - MainWindow
    relay = ErrorRelay()
    relay.raised.connect(lambda text: window.show_error(text))
    previous = sys.excepthook

    def hook(exc_type, exc, tb) -> None:  # noqa: ANN001
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            return
        log.error("unexpected error:\n%s", "".join(traceback.format_exception(exc_type, exc, tb)))
        relay.raised.emit(f"Unexpected {exc_type.__name__}: {exc} (details in the log). The app keeps running.")

    sys.excepthook = hook
    threading.excepthook = lambda args: hook(args.exc_type, args.exc_value, args.exc_traceback)
    return relay


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        return max(w, 400), max(h, 300)
    except ValueError:
        log.warning("--size %r is not WIDTHxHEIGHT; using 1400x900", text)
        return 1400, 900


def show_dock(window, name: str | None) -> None:  # noqa: ANN001 - MainWindow
    """--dock NAME: one of the "Inside this head" tabs, or any dock by its key, brought to the front."""
    if not name:
        return
    if name in ("inside", "attribution", "embeddings"):
        window.analysis.show_inside(name)
    elif name in window.docks:
        window.analysis.show_dock(name)
    else:
        log.warning("--dock %r: no such dock (%s)", name, ", ".join(sorted(window.docks)))


def make_app(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    app.setApplicationName("Attention Inspector")
    app.setOrganizationName("AttentionInspector")
    app.setDesktopFileName(desktop.APP_ID)  # Wayland's app id: the shell matches the window to the menu entry
    app.setWindowIcon(desktop.app_icon())
    style.apply(app)
    return app


def run_app(args: argparse.Namespace) -> int:
    """Open the window, prefilled from the command line; with --screenshot, render, save and exit.
    A screenshot run returns 0 when saved, 3 when saved but showing an error message, 1 when not saved."""
    from .main_window import MainWindow

    screenshot = getattr(args, "screenshot", None)
    headless_linux = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if screenshot and headless_linux and "QT_QPA_PLATFORM" not in os.environ:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # a screenshot needs no screen
    app = make_app()
    settings = None
    if screenshot:  # a screenshot uses the default layout, and leaves the person's settings alone
        settings = QSettings(str(Path(tempfile.mkdtemp()) / "screenshot.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings)
    relay = install_excepthook(window)  # noqa: F841 - kept alive for the app's lifetime
    size = getattr(args, "size", None)
    if screenshot or size:  # --size is honoured with or without --screenshot
        w, h = parse_size(size or "1400x900")
        window.resize(w, h)
        window.apply_default_sizes()
    window.show()
    show_dock(window, getattr(args, "dock", None))
    options = {"backend": getattr(args, "backend", "auto"), "trust_remote_code": getattr(args, "trust_remote_code", False)}
    window.trust_remote_code = bool(options["trust_remote_code"])  # and the later opens, from the panel or menus
    window.prompt_panel.set_backend(options["backend"])
    window.open_model(args.model, device=args.device, dtype=getattr(args, "dtype", None),
                      prompt=args.prompt, source_text=args.source, steps=max(0, args.steps or 0),
                      load_options={k: v for k, v in options.items() if v not in ("auto", False)})
    if not screenshot:
        # Ctrl+C in the terminal closes the window (saving its layout); the timer lets Python see the signal
        signal.signal(signal.SIGINT, lambda *_: window.close())
        heartbeat = QTimer()
        heartbeat.timeout.connect(lambda: None)
        heartbeat.start(250)
        return app.exec()

    result = {"code": 1}

    def save(force: bool = False) -> None:
        if result.get("saved"):
            return
        if window.client.busy and not force:  # a dock is still computing (Inside this head): the next settled saves
            return
        if not force and (window.head_grid.pending or window.attention_view.pending):
            QTimer.singleShot(100, save)  # the display threads are still pooling / tiling (long contexts)
            return
        result["saved"] = True
        app.processEvents()
        path = Path(screenshot)
        path.parent.mkdir(parents=True, exist_ok=True)
        ok = window.grab().save(str(path))
        log.info("screenshot %s %s", path, "saved" if ok else "FAILED")
        result["code"] = 0 if ok and not window.errors else (1 if not ok else 3)
        window.close()
        app.quit()

    # let the layout and the plots settle before grabbing
    window.settled.connect(lambda: QTimer.singleShot(400, save))
    QTimer.singleShot(SCREENSHOT_TIMEOUT_MS, lambda: save(True))
    app.exec()
    if window.errors:
        log.warning("the screenshot shows an error: %s", window.errors[-1])
    return result["code"]
