"""The GUI on a machine with a GPU: the device picker offers CUDA, "auto" opens the model there, the status bar
says so, and a step runs on it. Plain Qt event processing (no pytest-qt), so it runs where only PySide6 and
pyqtgraph were carried; skipped without a GPU or without PySide6."""

from __future__ import annotations

import time

import pytest

from tests import factories
from tests.cuda.devices import needs_cuda

pytestmark = [pytest.mark.cuda, needs_cuda]
pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (see docs/gpu.md)")
pytest.importorskip("pyqtgraph", reason="pyqtgraph is not installed (see docs/gpu.md)")
pytest.importorskip("transformers")


def wait_until(app, done, timeout: float = 120.0) -> None:  # noqa: ANN001 - QApplication
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the window did not settle in time"
        app.processEvents()
        time.sleep(0.01)


def test_the_window_opens_models_on_cuda_by_default_and_says_so(tmp_path):
    from PySide6.QtCore import QSettings

    from gui.shell.app import make_app
    from gui.shell.main_window import MainWindow

    app = make_app()
    win = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))  # devices from the engine
    try:
        box = win.prompt_panel.device_box
        offered = [box.itemData(i) for i in range(box.count())]
        assert "cuda:0" in offered and win.prompt_panel.device() is None  # "auto" is the default choice
        win.resize(1280, 800)
        win.show()
        win.open_model(str(factories.gpt2(tmp_path / "gpt2")), prompt="In the beginning", steps=1)
        wait_until(app, lambda: not win.client.busy and not win._chain and win.state.trace is not None
                   and len(win.state.trace.steps) == 1)
        assert win.errors == []
        assert win.state.model.device.startswith("cuda")
        label = win.status_labels["device"]  # "cuda:0 · float32", or the dtype's reason when that names CUDA
        assert "cuda" in label.text().lower(), label.text()
    finally:
        win.close()
        app.processEvents()
