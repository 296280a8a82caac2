"""Open a model of each family, type, step, go back, and check every panel shows the right thing."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt

from engine import distribution
from tests.gui.conftest import open_model, wait_idle


def step_times(qtbot, win, n: int) -> None:
    start = len(win.state.trace.steps)  # encoder-only steps fill masks: count steps, not tokens
    for _ in range(n):
        qtbot.mouseClick(win.token_strip.step_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(win.state.trace.steps) == start + n, timeout=30_000)
    wait_idle(qtbot, win)


def back_once(qtbot, win) -> None:
    start = len(win.state.trace)
    qtbot.mouseClick(win.token_strip.back_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(win.state.trace) == start - 1, timeout=30_000)
    wait_idle(qtbot, win)


def visible_chips(row) -> list[str]:
    """The tokens the row shows, each placed inside the row."""
    inside = [i for i in range(row.n) if row.rect().contains(row.rect(i))]
    return [row.text(i) for i in inside]


def check_logits_bars(win) -> None:
    trace, s = win.state.trace, win.state.sampling
    panel = win.logits_panel
    probs = distribution(trace.logits_at(win.state.query), s.temperature, s.top_k, s.top_p)
    n = panel.count_spin.value()
    expected = np.sort(probs)[::-1][:n]
    np.testing.assert_allclose(panel.bar_values, expected, rtol=1e-6)
    np.testing.assert_allclose(probs[panel.candidate_ids], expected, rtol=1e-6)
    heights = panel.bars.opts["width"]
    np.testing.assert_allclose(heights, expected, rtol=1e-6)


def type_prompt(qtbot, win, edit, text: str) -> None:
    edit.clear()
    qtbot.keyClicks(edit, text)
    qtbot.waitUntil(lambda: win.state.trace is not None and not win.client.busy
                    and not win.prompt_panel._debounce.isActive(), timeout=30_000)


def test_decoder_family(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    assert win.state.model.family == "decoder"
    assert "decoder" in win.status_labels["family"].text()
    type_prompt(qtbot, win, win.prompt_panel.prompt_edit, "And God said")
    trace = win.state.trace
    n = len(trace)
    assert "".join(trace.tokens).replace("␣", " ") == "And God said"
    assert visible_chips(win.token_strip.main_row) == list(trace.tokens)

    step_times(qtbot, win, 3)
    back_once(qtbot, win)
    trace = win.state.trace
    assert len(trace) == n + 2
    roles = [win.token_strip.main_row.role(i) for i in range(n + 2)]
    assert roles.count("generated") == 2 and roles[:n] == ["prompt"] * n
    assert visible_chips(win.token_strip.main_row) == list(trace.tokens)
    # the query follows the frontier; the heatmap is [tokens, tokens]
    assert win.state.query == n + 1
    assert win.attention_view.image.image.shape == (n + 2, n + 2)
    assert win.head_grid.cell_count == 2 * 4
    check_logits_bars(win)


def test_encoder_decoder_family(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder-decoder"])
    assert win.state.model.family == "encoder-decoder"
    assert win.prompt_panel.source_edit.isVisibleTo(win)
    type_prompt(qtbot, win, win.prompt_panel.source_edit, "And God said, Let there be light")
    trace = win.state.trace
    n_src, n_dec = len(trace.source_tokens), len(trace)
    assert visible_chips(win.token_strip.source_row) == list(trace.source_tokens)

    step_times(qtbot, win, 3)
    back_once(qtbot, win)
    assert len(win.state.trace) == n_dec + 2
    assert visible_chips(win.token_strip.main_row) == list(win.state.trace.tokens)  # the decoder row below
    assert win.state.kind == "cross"  # the default view of an encoder-decoder
    assert win.attention_view.image.image.shape == (n_dec + 2, n_src)
    # hovering a decoder token under cross-attention tints the source tokens it reads
    win.token_strip._hover("main", n_dec + 1)
    row = win.state.trace.attention_row("cross", 0, n_dec + 1)[0]
    tints = [win.token_strip.source_row.tint(i) for i in range(n_src)]
    np.testing.assert_allclose(tints, np.round(np.sqrt(row) * 32) / 32)
    win.token_strip._hover("main", -1)
    win.state.select(kind="self")
    assert win.attention_view.image.image.shape == (n_dec + 2, n_dec + 2)
    win.state.select(kind="encoder")
    assert win.attention_view.image.image.shape == (n_src, n_src)
    assert win.head_grid.cell_count == 2 * 4
    check_logits_bars(win)


def test_encoder_family_fill_and_mask(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder"])
    assert win.state.model.family == "encoder"
    assert win.token_strip.mask_button.isVisibleTo(win)
    trace = win.state.trace
    mask = win.state.model.mask_token
    assert mask in trace.tokens  # the example prompt has a mask to fill
    pos = trace.tokens.index(mask)
    win.state.select(query=pos)
    check_logits_bars(win)

    step_times(qtbot, win, 1)  # fill the mask
    trace = win.state.trace
    assert mask not in trace.tokens and trace.steps[-1].position == pos
    assert win.token_strip.main_row.role(pos) == "filled"
    # the panel shows the predictions the token was chosen from (mask still in place): greedy took the top one
    assert win.state.query == pos and win.logits_panel.candidate_ids[0] == trace.token_ids[pos]
    win.state.set_trace(trace)  # the same trace again (a run's last progress report, then its result)
    assert win.logits_panel.candidate_ids[0] == trace.token_ids[pos]
    assert win.attention_view.image.image.shape == (len(trace), len(trace))
    assert win.head_grid.cell_count == 2 * 4

    win.state.select(query=1)  # mask another token, then see the predictions there
    qtbot.mouseClick(win.token_strip.mask_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.state.trace.tokens[1] == mask, timeout=30_000)
    wait_idle(qtbot, win)
    assert win.token_strip.main_row.role(1) == "masked"
    win.state.select(query=1)
    check_logits_bars(win)
    assert win.logits_panel.target_position == 1


def test_head_grid_click_and_keyboard_select_head(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    win.state.select(layer=1, head=2)
    assert win.attention_view.layer_spin.value() == 1 and win.attention_view.head_spin.value() == 2
    outline = win.head_grid.outline.rect()
    assert (int(outline.x()), int(outline.y())) == (2, 1)
    win.state.step_head(1)
    win.state.step_layer(1)
    assert (win.state.layer, win.state.head) == (0, 3)
    win.attention_view.mean_box.setChecked(True)
    trace = win.state.trace
    np.testing.assert_allclose(win.attention_view.pattern, trace.attention("self", 0).mean(axis=0), rtol=1e-6)


def test_encoder_without_prediction_head_is_inspectable(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder-no-head"])
    trace = win.state.trace
    assert win.attention_view.image.image.shape == (len(trace), len(trace))
    assert win.head_grid.cell_count == 2 * 4
    assert "masked-LM head" in win.logits_panel.heading.text() and not win.logits_panel.plot.isVisibleTo(win)
    assert not win.token_strip.step_button.isEnabled() and not win.token_strip.run_button.isEnabled()
    assert win.token_strip.mask_button.isEnabled()  # masking still changes the attention
