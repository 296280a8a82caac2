"""A model only the transformers backend opens, in the window: gpt-oss's attention sinks in the attention view's
caption (its rows sum to less than one), a hybrid's layers without attention left out without an error."""

from __future__ import annotations

import re

import numpy as np
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


def test_the_experts_dock_appears_for_a_model_with_experts_only(qtbot, window, checkpoints, tmp_path):
    from tests import factories

    dock = window.docks["experts"]
    open_model(qtbot, window, checkpoints["gpt_oss"])
    assert not dock.isHidden()
    open_model(qtbot, window, factories.gpt2(tmp_path / "gpt2"))  # no experts, no tab for them
    assert dock.isHidden()
    open_model(qtbot, window, checkpoints["qwen3_moe"])
    assert not dock.isHidden()


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
    qtbot.waitUntil(lambda: "layers 0, 2: no attention (short convolution)" in grid.caption.text(), timeout=10_000)
    assert "no attention (a short convolution layer)" in grid.describe_cell(0, 1)
    assert "no attention" not in grid.describe_cell(1, 1)


def test_the_experts_dock_colours_tokens_by_their_top_expert(qtbot, window, checkpoints):
    from gui.panels.experts import PALETTE, describe_choice

    open_model(qtbot, window, checkpoints["qwen3_moe"])
    panel, trace = window.experts_panel, window.state.trace
    assert panel.layers == trace.moe_layers == [0, 1]
    rgb = panel.image.image
    assert rgb.shape == (2, len(trace), 3)
    r = trace.routing(1)
    assert (rgb[1] == PALETTE[r.top_expert % len(PALETTE)]).all()
    assert "load" in panel.caption.text() and "4 experts" in panel.caption.text()
    text = describe_choice(trace, 1, 0)
    assert text.count("expert ") == r.k and f"expert {r.top_expert[0]} " in text


def test_the_experts_dock_says_when_a_model_has_none(qtbot, window, tmp_path):
    from tests.modern_factories import llama

    open_model(qtbot, window, llama(tmp_path / "llama"))
    assert window.experts_panel.layers == [] and "no mixture of experts" in window.experts_panel.caption.text()


def test_the_prompt_panels_engine_choice_opens_a_native_type_through_transformers(qtbot, window, tmp_path):
    from tests.gui.conftest import wait_idle
    from tests.modern_factories import llama

    folder = llama(tmp_path / "llama")
    panel = window.prompt_panel
    panel.model_box.setEditText(str(folder))
    panel.backend_box.setCurrentIndex(panel.backend_box.findData("transformers"))
    panel.open_button.click()  # the panel sends its request from the event loop: wait for the model, then idle
    qtbot.waitUntil(lambda: window.state.model is not None and window.state.model.backend == "transformers",
                    timeout=60_000)
    wait_idle(qtbot, window)
    assert "through transformers" in panel.model_label.text()
    panel.backend_box.setCurrentIndex(panel.backend_box.findData("auto"))
    panel.open_button.click()
    qtbot.waitUntil(lambda: window.state.model.backend == "native", timeout=60_000)
    wait_idle(qtbot, window)
    assert "transformers" not in panel.model_label.text()


def test_the_experts_dock_plots_the_selected_layers_load(qtbot, window, checkpoints):
    from gui.panels.experts import running_share

    open_model(qtbot, window, checkpoints["qwen3_moe"])
    panel, trace = window.experts_panel, window.state.trace
    share = panel.load_share
    assert share.shape == (4, len(trace)) and share is not None
    np.testing.assert_allclose(share.sum(0), 1.0, atol=1e-9)  # every token's k choices are counted once
    r = trace.routing(0)
    np.testing.assert_allclose(share[:, -1], r.load() / (r.k * len(trace)))
    window.state.select(layer=1)
    np.testing.assert_allclose(panel.load_share, running_share(trace, 1))
    x, y = panel.load_lines[2].getData()
    np.testing.assert_allclose(y, panel.load_share[2])


def test_the_attention_view_shows_the_sinks_share_as_a_column_beside_the_keys(qtbot, window, checkpoints):
    open_model(qtbot, window, checkpoints["gpt_oss"])
    view, state = window.attention_view, window.state
    trace = state.trace
    n_q, n_k = view.shape
    np.testing.assert_allclose(view.sink_row, trace.sink_share("self", state.layer)[state.head], rtol=0, atol=0)
    assert view.sink_image.isVisible() and view.sink_label.isVisible()
    assert view.sink_image.image.shape == (n_q, 1)
    # the column's centre is right of the keys: the hover there reads the sink's share of that row
    vb = view.plot.getViewBox()
    view.fit()
    scene = vb.mapViewToScene(pg_point(n_k + 0.5, n_q - 1))
    assert view.cell_at(scene) == (n_q - 1, n_k)
    text = view.describe(n_q - 1, n_k)
    assert "→ sink: " in text and abs(view.hover_weight - trace.sink_share("self", state.layer)[state.head, -1]) < 1e-7
    state.select(mean_heads=True, layer=1)
    np.testing.assert_allclose(view.sink_row, trace.sink_share("self", 1).mean(axis=0), rtol=1e-6)


def test_a_model_without_sinks_has_no_sink_column(qtbot, window, checkpoints):
    open_model(qtbot, window, checkpoints["qwen3_moe"])
    view = window.attention_view
    assert view.sink_row is None and not view.sink_image.isVisible()
    n_q, n_k = view.shape
    scene = view.plot.getViewBox().mapViewToScene(pg_point(n_k + 0.5, n_q - 1))
    assert view.cell_at(scene) is None


def pg_point(x: float, y: float):
    from PySide6.QtCore import QPointF

    return QPointF(x, y)


def test_inside_this_head_and_which_heads_wrote_it_show_numbers_on_the_transformers_backend(qtbot, window, checkpoints):
    """The chain (with the row's sink share) and the attribution come from engine.hf_backend.explain: numbers, not
    an error, and the same numbers as the engine gives."""
    from engine import load_model
    from engine.explain import attribute
    from tests.gui.test_inside_head import _shown

    open_model(qtbot, window, checkpoints["gpt_oss"])
    state = window.state
    state.select(layer=1, head=2)
    _panel, tab = _shown(qtbot, window, "inside")
    ih, trace = tab.inside, state.trace
    assert ih is not None, tab.heading.text()
    np.testing.assert_allclose(ih.pattern, trace.attention("self", 1)[2, state.row_query], atol=1e-5)
    share = float(trace.sink_share("self", 1)[2, state.row_query])
    assert f"sink took {share:.1%}" in tab.chain.text(), tab.chain.text()
    assert ih.sink_share == pytest.approx(share, abs=1e-6)
    assert "native engine" not in tab.heading.text() and tab.table.rowCount() == len(trace)
    pos = len(trace) - 2
    state.select(query=pos)
    _panel, tab = _shown(qtbot, window, "attribution")
    a = tab.attribution
    assert a is not None and a.heads.shape == (2, 4)
    token = int(tab.token_combo.currentData())
    want = attribute(load_model(checkpoints["gpt_oss"], device="cpu"), trace, pos, token)
    np.testing.assert_allclose(a.heads, want.heads, atol=1e-5)
    assert a.total == pytest.approx(a.logit, abs=1e-3) and tab.table.rowCount() == 2
    assert float(tab.table.item(1, 2).text()) == pytest.approx(float(want.heads[1, 2]), abs=1e-3)
    assert not window.errors  # nothing said as an error dialog
    open_model(qtbot, window, checkpoints["qwen3_moe"])
    _panel, tab = _shown(qtbot, window, "inside")
    assert "sink" not in tab.chain.text()


def test_inside_the_mlp_opens_the_chosen_experts_of_a_moe_layer(qtbot, window, checkpoints):
    """Qwen3-MoE (every layer experts): the dock lists the experts the router chose for the token with their
    weights, and the picked expert's neurons with their direct effects, the engine's own numbers; another expert
    is picked from the combo; the candidate's effects follow the token combo."""
    from tests.gui.conftest import wait_idle

    open_model(qtbot, window, checkpoints["qwen3_moe"])
    trace = window.state.trace
    pos = len(trace) - 1
    window.state.select(layer=1, query=pos)
    window.registry.actions["analysis.inside_mlp"].trigger()
    panel = window.analysis.inside_mlp
    qtbot.waitUntil(lambda: panel.experts is not None and panel._wanted == panel.key(), timeout=60_000)
    wait_idle(qtbot, window)
    inside = panel.experts
    routing = trace.routing(1)
    assert [e.expert for e in inside.experts] == routing.experts[pos].tolist()
    assert panel.expert_combo.count() == len(inside.experts) and panel.expert_combo.isVisible()
    assert not panel.body.isVisible() and panel.experts_table.isVisible()
    assert f"expert {inside.experts[0].expert} (weight {routing.weights[pos][0]:.3f})" == panel.expert_combo.itemText(0)
    assert "mixture-of-experts layer" in panel.heading.text()
    for i, e in enumerate(inside.experts):
        panel.expert_combo.setCurrentIndex(i)
        best = int(np.argmax(e.effects))  # the dock ranks by write toward the candidate by default
        assert panel.experts_table.item(0, 0).text() == f"N{best}"
        assert panel.experts_table.item(0, 3).text() == f"{e.effects[best]:+.3f}"
        assert panel.experts_table.rowCount() == panel.count.value()
    np.testing.assert_allclose(sum(e.effect for e in inside.experts), inside.mlp_effect, rtol=1e-4)
    assert inside.token_id == panel.token_combo.currentData()
    panel.token_combo.setCurrentIndex(1)  # another candidate: the effects are asked again, for it
    qtbot.waitUntil(lambda: panel.experts is not None and panel.experts.token_id == panel.token_combo.currentData(),
                    timeout=60_000)
    window.state.select(layer=0, query=pos)  # still experts; a dense layer elsewhere shows the usual table
    qtbot.waitUntil(lambda: panel.experts is not None and panel.experts.layer == 0, timeout=60_000)
    wait_idle(qtbot, window)
    assert not window.errors


def test_inside_the_mlp_switches_between_a_dense_layer_and_an_expert_layer(qtbot, window, tmp_path):
    """DeepSeek-V3 (layer 0 dense, layer 1 experts beside a shared expert): the dense table, then the experts with
    the shared expert's share named, then the dense table again with its ablate button."""
    from tests.gui.conftest import wait_idle
    from tests.hf_factories import ARCHITECTURES

    open_model(qtbot, window, ARCHITECTURES["deepseek_v3"](tmp_path / "ds"))
    pos = len(window.state.trace) - 1
    window.state.select(layer=0, query=pos)
    window.registry.actions["analysis.inside_mlp"].trigger()
    panel = window.analysis.inside_mlp
    qtbot.waitUntil(lambda: panel.result is not None and panel._wanted == panel.key(), timeout=60_000)
    assert panel.body.isVisible() and not panel.experts_table.isVisible() and not panel.expert_combo.isVisible()
    window.state.select(layer=1, query=pos)
    qtbot.waitUntil(lambda: panel.experts is not None and panel._wanted == panel.key(), timeout=60_000)
    wait_idle(qtbot, window)
    inside = panel.experts
    assert panel.experts_table.isVisible() and not panel.body.isVisible() and not panel.clear_button.isVisible()
    rest = inside.mlp_effect - sum(e.effect for e in inside.experts)
    assert abs(rest) > 1e-3 and f"({rest:+.3f}) is a shared expert" in panel.caption.text()
    window.state.select(layer=0, query=pos)
    qtbot.waitUntil(lambda: panel.result is not None and panel._wanted == panel.key(), timeout=60_000)
    wait_idle(qtbot, window)
    assert panel.body.isVisible() and not panel.experts_table.isVisible() and panel.clear_button.isVisible()
    assert not window.errors


def test_the_experts_dock_ablates_and_restores_an_expert(qtbot, window, checkpoints):
    from tests.gui.conftest import wait_idle

    open_model(qtbot, window, checkpoints["qwen3_moe"])
    panel, state = window.experts_panel, window.state
    before = state.trace
    layer, token = 1, len(before) - 1
    expert = int(before.routing(layer).top_expert[token])
    menu = panel.menu_for(layer, token)
    texts = [a.text() for a in menu.actions()]
    assert f"Ablate expert {expert} of layer {layer}" in texts and not menu.actions()[-1].isEnabled()
    menu.actions()[texts.index(f"Ablate expert {expert} of layer {layer}")].trigger()
    qtbot.waitUntil(lambda: state.trace.expert_gates == {layer: {expert: 0.0}}, timeout=60_000)
    wait_idle(qtbot, window)
    after = state.trace
    assert after.token_ids == before.token_ids
    assert np.abs(after.logits_at(token) - before.logits_at(token)).max() > 1e-3  # the candidates moved
    r = after.routing(layer)
    assert np.all(r.weights[r.experts == expert] == 0)
    assert f"ablated: layer {layer} expert {expert}" in panel.caption.text()
    assert panel.menu_for(layer, token).actions()[-1].isEnabled()
    panel.menu_for(layer, token).actions()[-1].trigger()  # restore every expert
    qtbot.waitUntil(lambda: not state.trace.expert_gates, timeout=60_000)
    wait_idle(qtbot, window)
    np.testing.assert_allclose(state.trace.logits_at(token), before.logits_at(token), atol=1e-5)
    assert "ablated" not in panel.caption.text()


def test_head_statistics_have_a_sink_share_column_for_sink_models_only(qtbot, window, checkpoints):
    from engine.analysis import head_statistics
    from gui.panels.head_stats import SINK_COLUMN

    open_model(qtbot, window, checkpoints["gpt_oss"])
    panel, trace = window.analysis.head_stats, window.state.trace
    model = window.client.worker.model  # idle: reading it from here is safe
    stats = head_statistics(model, trace, induction=np.zeros((trace.n_layers["self"], trace.n_heads)))
    panel.show_stats(trace, stats)
    assert not panel.table.isColumnHidden(SINK_COLUMN)
    assert panel.table.horizontalHeaderItem(SINK_COLUMN).text() == "sink (gpt-oss)"
    for r in range(panel.table.rowCount()):
        st = panel.row_stat(r)
        share = float(trace.sink_share(st.kind, st.layer)[st.head].mean())
        assert panel.table.item(r, SINK_COLUMN).text() == f"{share:.3f}"
    open_model(qtbot, window, checkpoints["qwen3_moe"])
    trace, model = window.state.trace, window.client.worker.model
    panel.show_stats(trace, head_statistics(model, trace, induction=np.zeros((trace.n_layers["self"], trace.n_heads))))
    assert panel.table.isColumnHidden(SINK_COLUMN)


def test_the_sink_column_stays_beside_tiles(qtbot, window, checkpoints, monkeypatch):
    """A pattern drawn by tiles (long contexts): the sink column is its own image, the tiles are unchanged."""
    from gui.panels import attention

    monkeypatch.setattr(attention, "WHOLE_CELLS", 0)  # every pattern goes by tiles
    open_model(qtbot, window, checkpoints["gpt_oss"])
    view, state = window.attention_view, window.state
    qtbot.waitUntil(lambda: view.tiled and view.tile is not None and not view.pending, timeout=30_000)
    np.testing.assert_array_equal(view.sink_row, state.trace.sink_share("self", state.layer)[state.head])
    n_q, n_k = view.shape
    assert (view.tile.q1, view.tile.k1) == (n_q, n_k)  # the whole pattern, the sink column beside it
    assert view.sink_image.isVisible()


def test_the_status_bar_says_mxfp4_weights_were_dequantised(qtbot, window, tmp_path):
    from tests import mxfp4_factory

    mx, _reference, _values = mxfp4_factory.build(tmp_path)
    open_model(qtbot, window, mx)
    text = window.status_labels["device"].text()
    assert "mxfp4" in text and "bfloat16" in text, text
    assert window.state.model.quantization == "mxfp4, dequantised to bfloat16"


def test_device_text_names_the_quantisation_once():
    from dataclasses import replace

    from gui.shell.main_window import device_text
    from tests.gui.test_state_and_actions import _info

    info = replace(_info(), device="cpu", dtype="float32", dtype_reason="float32, as asked",
                   quantization="mxfp4, dequantised to float32")
    assert device_text(info) == "cpu · float32, as asked · mxfp4, dequantised to float32"
    said = replace(info, dtype="bfloat16", dtype_reason="mxfp4 weights dequantised to bfloat16 by transformers",
                   quantization="mxfp4, dequantised to bfloat16")
    assert device_text(said) == "cpu · mxfp4 weights dequantised to bfloat16 by transformers"
    assert device_text(replace(info, quantization="")) == "cpu · float32, as asked"


def test_which_heads_wrote_it_gives_a_hybrids_other_layers_their_own_cell(qtbot, window, tmp_path):
    """LFM2: layers 0 and 2 are short convolutions; their row says so with what they wrote, across the head columns."""
    from tests.gui.test_inside_head import _shown
    from tests.hf_factories import ARCHITECTURES

    open_model(qtbot, window, ARCHITECTURES["lfm2"](tmp_path / "lfm2"))
    _panel, tab = _shown(qtbot, window, "attribution")
    a = tab.attribution
    part = dict(a.parts)["L0.short convolution"]
    assert tab.table.item(0, 0).text() == f"short convolution: {part:+.3f}" and tab.table.columnSpan(0, 0) == 4
    assert tab.table.columnSpan(1, 0) == 1 and tab.table.item(1, 2).text() == f"{float(a.heads[1, 2]):+.3f}"
    assert a.total == pytest.approx(a.logit, abs=1e-3) and not window.errors


def test_inside_the_mlp_ablates_a_neuron_on_the_transformers_backend(qtbot, window, tmp_path):
    """OLMo 3 (dense MLPs, post-norms): the dock's numbers and its ablate button work as on the native engine."""
    from tests.gui.conftest import wait_idle
    from tests.gui.test_inside_mlp import _shown
    from tests.hf_factories import ARCHITECTURES

    open_model(qtbot, window, ARCHITECTURES["olmo3"](tmp_path / "olmo3"))
    trace = window.state.trace
    pos = len(trace) - 1
    window.state.select(layer=1, query=pos)
    panel = _shown(qtbot, window)
    r = panel.result
    res = r.residual
    assert res.embeddings_effect + res.attn_effects.sum() + res.mlp_effects.sum() + res.other_effect == pytest.approx(
        res.logit, abs=1e-3)
    first = r.neurons[0].index
    panel._on_cell_clicked(0, 1)
    qtbot.waitUntil(lambda: bool(window.state.trace.neuron_gates), timeout=60_000)
    wait_idle(qtbot, window)
    assert window.state.trace.neuron_gates == {"decoder.1.mlp": {first: 0.0}}
    assert np.abs(window.state.trace.logits_at(pos) - trace.logits_at(pos)).max() > 1e-5
    panel.clear_button.click()
    qtbot.waitUntil(lambda: not window.state.trace.neuron_gates, timeout=60_000)
    wait_idle(qtbot, window)
    np.testing.assert_allclose(window.state.trace.logits_at(pos), trace.logits_at(pos), atol=1e-5)
    assert not window.errors
