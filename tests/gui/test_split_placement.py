"""The status bar of a model spread over several devices: the label names the devices, the tooltip which layers
are on each (here "cpu" and "cpu:1", a second name for the CPU: the engine's bookkeeping is the same)."""

from __future__ import annotations

import engine
from engine.placement import Placement
from tests.gui.conftest import open_model


def test_status_bar_names_a_split_placement(qtbot, window, monkeypatch):
    real = engine.load_model

    def spread(source, **kw):  # noqa: ANN001, ANN003, ANN202
        model = real(source, **kw)
        model.place(Placement(("cpu", "cpu", "cpu:1", "cpu:1"), "cpu", "cpu:1", {}))
        return model

    monkeypatch.setattr(engine, "load_model", spread)
    open_model(qtbot, window, "tiny-gpt")
    label = window.status_labels["device"]
    assert label.text().startswith("cpu + cpu:1 · ")
    assert "cpu layers 0–1 · cpu:1 layers 2–3 · head cpu" in label.toolTip()
    assert window.state.model.devices == ("cpu", "cpu:1")
    assert "cpu + cpu:1 float32" in window.prompt_panel.model_label.text()
