"""The bundled models open in the window and step (skipped for any that is not installed yet)."""

from __future__ import annotations

import pytest

from engine.checkpoints.resolve import bundled_models
from tests.gui.conftest import open_model, wait_idle

FAMILIES = {"tiny-gpt": "decoder", "tiny-bert": "encoder", "tiny-seq2seq": "encoder-decoder"}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_bundled_model_opens_and_steps(qtbot, window, name):
    if name not in bundled_models():
        pytest.skip(f"{name} is not installed in resources/models")
    open_model(qtbot, window, name)
    assert window.state.model.family == FAMILIES[name]
    steps = len(window.state.trace.steps)
    window.token_strip.step()
    qtbot.waitUntil(lambda: len(window.state.trace.steps) == steps + 1, timeout=60_000)
    wait_idle(qtbot, window)
    assert window.head_grid.cell_count == window.state.n_layers * window.state.n_heads
    assert window.logits_panel.candidate_ids.size > 0
