"""A model only the transformers backend opens, in the window: gpt-oss's attention sinks in the attention view's
caption (its rows sum to less than one), a hybrid's layers without attention left out without an error."""

from __future__ import annotations

import re

import pytest

from tests.gui.conftest import open_model

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from tests.hf_factories import ARCHITECTURES

    root = tmp_path_factory.mktemp("hf")
    return {name: ARCHITECTURES[name](root / name) for name in ("gpt_oss", "qwen3_moe")}


def test_the_attention_view_says_what_share_went_to_the_sink(qtbot, window, checkpoints):
    open_model(qtbot, window, checkpoints["gpt_oss"])
    view = window.attention_view
    title = view.plot.titleLabel.text
    m = re.search(r"sink (\d+)% \(row (\d+)\), (\d+)% mean", title)
    assert m, title
    trace = window.state.trace
    share = trace.sink_share("self", 0)[0]
    assert int(m.group(2)) == len(trace) - 1
    assert abs(int(m.group(1)) - 100 * share[-1]) <= 0.5 and abs(int(m.group(3)) - 100 * share.mean()) <= 0.5


def test_a_model_without_sinks_shows_no_sink_share(qtbot, window, checkpoints):
    open_model(qtbot, window, checkpoints["qwen3_moe"])
    assert "sink" not in window.attention_view.plot.titleLabel.text


def test_load_options_reach_the_engine(qtbot, window, tmp_path):
    """--backend transformers (main.py) -> MainWindow.open_model(load_options=...) -> engine.load_model."""
    from tests.modern_factories import llama

    folder = llama(tmp_path / "llama")
    open_model(qtbot, window, folder, load_options={"backend": "transformers"})
    assert type(window.client.worker.model).__name__ == "HFModel"  # idle: reading it from here is safe
    open_model(qtbot, window, folder)
    assert type(window.client.worker.model).__name__ == "Model"


def test_the_head_grid_names_a_hybrids_layers_without_attention(qtbot, window, tmp_path):
    from tests.hf_factories import ARCHITECTURES

    open_model(qtbot, window, ARCHITECTURES["lfm2"](tmp_path / "lfm2"))
    grid = window.head_grid
    assert "layers 0, 2: no attention (short convolution)" in grid.caption.text()
    assert "no attention (a short convolution layer)" in grid.describe_cell(0, 1)
    assert "no attention" not in grid.describe_cell(1, 1)
