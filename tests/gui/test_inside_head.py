"""The "Inside this head" dock (issue 15): the chain of one head shows the trace's own pattern, the what-ifs are
labelled and drawn apart, direct logit attribution equals engine.explain.attribute and sums to the logit, a click
selects a head, encoder-only models say why they are not attributed, cross-attention reads the source, CSV exports."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PySide6.QtCore import Qt

from engine import load_model
from engine.explain import attribute
from tests.gui.conftest import open_model, wait_idle

TIMEOUT = 60_000


def _shown(qtbot, win, name):
    """Bring the tab to the front and wait until it shows the current selection."""
    win.analysis.show_inside(name)
    panel = win.analysis.inside_head
    tab = panel.tab(name)
    qtbot.waitUntil(lambda: panel.shown[name] is not None and panel.shown[name] == tab.key(), timeout=TIMEOUT)
    wait_idle(qtbot, win)
    return panel, tab


def _column(tab, title):
    col = tab.columns.index(title)
    return col, [tab.table.item(r, col).text() for r in range(tab.table.rowCount())]


def test_inside_head_shows_the_traces_pattern_and_the_chain(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    trace = win.state.trace
    win.state.select(layer=1, head=2, query=4)
    panel, tab = _shown(qtbot, win, "inside")
    ih = tab.inside
    assert (ih.kind, ih.layer, ih.head, ih.query) == ("self", 1, 2, 4)
    want = trace.attention_row("self", 1, 4)[2]
    np.testing.assert_allclose(ih.pattern[: want.shape[0]], want, atol=1e-5)
    # the table: one row per key, the α column is the pattern as drawn, the bars too
    assert tab.table.rowCount() == len(trace)
    _col, alpha = _column(tab, "α (pattern)")
    assert [float(a) for a in alpha] == pytest.approx(want.tolist(), abs=2e-3)
    np.testing.assert_allclose(tab.pattern_bars.opts["height"], want, atol=1e-6)
    # the chain, as the layer computes it: q·k, the scale, the causal mask with its reason, softmax
    assert "q·k" in tab.chain.text() and "1/√" in tab.chain.text() and "causal mask" in tab.chain.text()
    _col, masks = _column(tab, "mask")
    assert masks[:5] == ["sees it"] * 5 and all(m.startswith("−∞ (future") for m in masks[5:])
    assert "score" not in tab.columns  # no soft-cap or bias: the scaled column and the mask are what enters
    # value-weighted: α and α‖v W_O‖ side by side, and their product holds
    assert tab.columns.index("α‖v W_O‖") > tab.columns.index("α (pattern)")
    np.testing.assert_allclose(ih.weighted_norms, ih.pattern * ih.value_norms, rtol=1e-6)
    assert "writes" in tab.caption.text()
    # the vectors: q and the selected key (the one with the largest weight, its row selected)
    assert tab.selected_key == int(np.argmax(want))
    np.testing.assert_allclose(tab.k_bars.opts["height"], ih.k[tab.selected_key])
    tab.table.setCurrentCell(0, 0)
    assert tab.selected_key == 0 and "key 0" in tab.k_title.text()
    assert win.errors == []


def test_what_if_toggles_change_what_is_shown_and_are_labelled(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    win.state.select(layer=0, head=1, query=2)
    panel, tab = _shown(qtbot, win, "inside")
    ih = tab.inside
    assert not any(c.startswith("what-if") for c in tab.columns)
    x = tab.what_if_curve.getData()[0]
    assert x is None or len(x) == 0
    asked = panel.requests["inside"].count
    tab.no_scale.setChecked(True)
    assert "what-if: no scale" in tab.columns
    col = tab.columns.index("what-if: no scale")
    header = tab.table.horizontalHeaderItem(col)
    assert header.font().italic() and tab.table.item(0, col).font().italic()  # drawn apart from the model's α
    x, y = tab.what_if_curve.getData()
    np.testing.assert_allclose(y, ih.what_if_unscaled, atol=1e-6)
    assert not np.allclose(y, ih.pattern)  # the scale matters
    assert tab.what_if_curve.opts["pen"].style() == Qt.PenStyle.DashLine
    legend = tab.legend.text()
    assert "what-if: no scale (not the model)" in legend and "the pattern (the model's)" in legend
    np.testing.assert_allclose(tab.pattern_bars.opts["height"], ih.pattern)  # the model's own bars are untouched
    tab.no_mask.setChecked(True)
    _col, unmasked = _column(tab, "what-if: no mask")
    assert float(unmasked[-1]) > 0 and ih.blocked[-1]  # a future key gets weight only in the what-if
    np.testing.assert_allclose(tab.what_if_mask_curve.getData()[1], ih.what_if_unmasked, atol=1e-6)
    assert tab.what_if_mask_curve.opts["pen"].style() == Qt.PenStyle.DotLine and "no mask" in tab.legend.text()
    tab.no_scale.setChecked(False)
    tab.no_mask.setChecked(False)
    assert not any(c.startswith("what-if") for c in tab.columns)
    assert panel.requests["inside"].count == asked  # toggles ask the worker nothing: the what-ifs came with it


def test_logit_attribution_equals_the_engine_and_sums_to_the_logit(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    trace = win.state.trace
    pos = len(trace) - 2
    win.state.select(query=pos)
    panel, tab = _shown(qtbot, win, "attribution")
    token = int(tab.token_combo.currentData())
    assert token == trace.token_ids[pos + 1]  # the token that actually follows, by default
    want = attribute(load_model(str(checkpoints["decoder"]), device="cpu"), trace, pos, token)
    a = tab.attribution
    np.testing.assert_allclose(a.heads, want.heads, atol=1e-5)
    np.testing.assert_allclose(a.mlps, want.mlps, atol=1e-5)
    assert a.total == pytest.approx(a.logit, abs=1e-3)
    assert sum(v for _n, v in a.parts) == pytest.approx(float(trace.logits_at(pos)[token]), abs=1e-3)
    n_layers, n_heads = a.heads.shape
    assert tab.table.rowCount() == n_layers and tab.table.columnCount() == n_heads + 1
    for n in range(n_layers):
        for h in range(n_heads):
            assert float(tab.table.item(n, h).text()) == pytest.approx(float(want.heads[n, h]), abs=1e-3)
        assert float(tab.table.item(n, n_heads).text()) == pytest.approx(float(want.mlps[n]), abs=1e-3)
    assert "linearised" in tab.caption.text().lower() and "the logit" in tab.caption.text()
    # the bars: the largest parts first, then sorted the other ways
    names = [n for n, _v in tab.bar_parts]
    assert abs(dict(a.parts)[names[0]]) == max(abs(v) for _n, v in a.parts)
    tab.sort_combo.setCurrentIndex(2)
    assert tab.bar_parts[0][1] == min(v for _n, v in a.parts)
    # another candidate: another request, another token
    tab.token_combo.setCurrentIndex(1)
    qtbot.waitUntil(lambda: tab.attribution.token_id == int(tab.token_combo.currentData()), timeout=TIMEOUT)
    # colour by write norms: the grid marks follow
    tab.color_combo.setCurrentIndex(1)
    np.testing.assert_allclose(tab.grid_values("self"), tab.attribution.head_write_norms)
    tab.grid_marks.setChecked(True)
    assert not panel.marks.items["+"].path().isEmpty()
    assert win.errors == []


def test_clicking_a_head_selects_it(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    panel, tab = _shown(qtbot, win, "attribution")
    rect = tab.table.visualItemRect(tab.table.item(1, 3))
    qtbot.mouseClick(tab.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert (win.state.kind, win.state.layer, win.state.head) == ("self", 1, 3)
    tab.select_part("L0.H2")
    assert (win.state.layer, win.state.head) == (0, 2)
    tab.select_part("L1.MLP")  # not a head: nothing moves
    assert (win.state.layer, win.state.head) == (0, 2)


def test_encoder_only_says_why_it_is_not_attributed(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder"])
    panel, tab = _shown(qtbot, win, "attribution")
    assert "masked-LM head" in tab.message.text() and tab.attribution is None
    assert tab.table.isHidden()
    assert win.errors == []  # shown in place, not as a window error
    # the chain still works for encoder self-attention: nothing masked
    win.state.select(layer=1, head=1, query=2)
    panel, inside = _shown(qtbot, win, "inside")
    want = win.state.trace.attention_row("encoder", 1, 2)[1]
    np.testing.assert_allclose(inside.inside.pattern, want, atol=1e-5)
    assert "nothing is masked" in inside.chain.text()


def test_encoder_decoder_cross_attention_reads_the_source(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder-decoder"], steps=2)
    trace = win.state.trace
    q = len(trace) - 1
    win.state.select(kind="cross", layer=1, head=1, query=q)
    panel, tab = _shown(qtbot, win, "inside")
    want = trace.attention_row("cross", 1, q)[1]
    np.testing.assert_allclose(tab.inside.pattern, want, atol=1e-5)
    assert tab.table.rowCount() == len(trace.source_tokens)
    assert tab.table.item(0, 0).text().startswith("0 ") and "keys and values from the encoder" in tab.heading.text()
    panel, dla = _shown(qtbot, win, "attribution")
    a = dla.attribution
    assert a.cross_heads is not None and dla.table.columnCount() == 2 * a.heads.shape[1] + 1
    assert a.total == pytest.approx(a.logit, abs=1e-3)
    dla.click_cell(0, a.heads.shape[1] + 2)  # a cross-attention head
    assert (win.state.kind, win.state.layer, win.state.head) == ("cross", 0, 2)
    panel, emb = _shown(qtbot, win, "embeddings")
    assert emb.positions["scheme"] == "sinusoidal" and emb.table.rowCount() == emb.count.value()
    assert win.errors == []


def test_tables_export_as_csv(qtbot, window, checkpoints, tmp_path):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    panel, inside = _shown(qtbot, win, "inside")
    path = panel.export_csv("inside", str(tmp_path / "inside.csv"))
    rows = list(csv.reader(open(path, encoding="utf-8")))
    assert rows[0][:3] == ["key", "token", "blocked"] and "α (pattern)" in rows[0]
    col = rows[0].index("α (pattern)")
    assert [float(r[col]) for r in rows[1:]] == pytest.approx(inside.inside.pattern.tolist(), abs=1e-5)
    panel, dla = _shown(qtbot, win, "attribution")
    rows = list(csv.reader(open(panel.export_csv("attribution", str(tmp_path / "dla.csv")), encoding="utf-8")))
    parts = {r[0]: float(r[1]) for r in rows[1:]}
    assert parts["(sum of parts)"] == pytest.approx(dla.attribution.total, abs=1e-4)
    assert parts["L0.H0"] == pytest.approx(float(dla.attribution.heads[0, 0]), abs=1e-5)
    panel, emb = _shown(qtbot, win, "embeddings")
    rows = list(csv.reader(open(panel.export_csv("embeddings", str(tmp_path / "near.csv")), encoding="utf-8")))
    assert rows[0] == ["rank", "token", "id", "cosine"] and len(rows) == emb.count.value() + 1


def test_stale_answers_are_dropped(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    panel, tab = _shown(qtbot, win, "inside")
    shown = tab.inside
    req = panel.requests["inside"]
    panel._on_result(req.latest - 1, req.op, {"trace": win.state.trace, "inside": None})
    assert tab.inside is shown
    count = req.count
    win.state.select(head=1)
    win.state.select(head=2)
    qtbot.waitUntil(lambda: tab.inside.head == 2, timeout=TIMEOUT)
    assert req.count - count <= 2  # a burst of changes does not pile up requests


def test_bundled_tiny_gpt(qtbot, window):
    win = window
    open_model(qtbot, win, "tiny-gpt")
    win.state.select(layer=2, head=1)
    for name in ("inside", "attribution", "embeddings"):
        panel, tab = _shown(qtbot, win, name)
    assert panel.inside_tab.inside.layer == 2 and panel.inside_tab.table.rowCount() == len(win.state.trace)
    assert panel.attribution_tab.attribution.total == pytest.approx(panel.attribution_tab.attribution.logit, abs=1e-3)
    assert panel.embeddings_tab.positions["scheme"] == "learned" and panel.embeddings_tab.table.rowCount() > 0
    assert win.errors == []


@pytest.fixture(scope="module")
def positional_checkpoints(tmp_path_factory):
    """T5 (relative position bias added to q·k) and Llama (rotary q and k), built once."""
    from tests import factories, modern_factories

    root = tmp_path_factory.mktemp("positional")
    return {"relative": factories.t5(root / "t5"), "rotary": modern_factories.ARCHITECTURES["llama"](root / "llama")}


@pytest.mark.parametrize("scheme", ["relative", "rotary"])
def test_bias_rotation_and_positions(qtbot, window, positional_checkpoints, scheme):
    win = window
    open_model(qtbot, win, positional_checkpoints[scheme], steps=2)
    kind, q = "self", len(win.state.trace) - 1
    layer, head = win.state.model.layers_by_kind[kind] - 1, 1
    win.state.select(kind=kind, layer=layer, head=head, query=q)
    panel, tab = _shown(qtbot, win, "inside")
    ih = tab.inside
    want = win.state.trace.attention_row(kind, layer, q)[head]
    np.testing.assert_allclose(ih.pattern[: want.shape[0]], want, atol=1e-5)
    if scheme == "relative":  # T5: the bias is a column, and what enters the softmax is shown apart
        assert "+bias" in tab.columns and "score" in tab.columns and "relative position bias" in tab.chain.text()
    else:  # RoPE: q and k before the rotation, as a grey line under the bars
        assert ih.rotary_dims and "RoPE" in tab.chain.text() and "before" in tab.q_title.text()
        np.testing.assert_allclose(tab.q_before.getData()[1], ih.q_before_rotation)
    panel, emb = _shown(qtbot, win, "embeddings")
    assert emb.positions["scheme"] == scheme
    if scheme == "rotary":
        assert len(emb.pos_curves) == emb.positions["array"].shape[0]
    else:
        assert emb.pos_image.image is not None and emb.pos_image.image.shape == emb.positions["array"].shape
    assert win.errors == []


def test_a_failing_job_is_said_once_and_not_asked_again(qtbot, window, checkpoints, monkeypatch):
    from gui.core import explain_jobs

    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    panel, tab = _shown(qtbot, win, "inside")

    def broken(*_args):
        def fn(_w):
            raise RuntimeError("boom")

        return fn

    monkeypatch.setattr(explain_jobs, "inside_head", broken)
    req = panel.requests["inside"]
    count = req.count
    win.state.select(head=3)
    qtbot.waitUntil(lambda: "Could not compute" in tab.heading.text(), timeout=TIMEOUT)
    wait_idle(qtbot, win)
    qtbot.wait(300)
    assert req.count == count + 1 and "boom" in tab.heading.text() and "boom" in win.errors[-1]
