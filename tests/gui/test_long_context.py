"""Long prompts in the window: a tiny grouped-query Llama (3 layers, 4 query heads on 2 key/value heads) that
rebuilds its patterns from q, k and row log-sum-exps, with a prompt of a few thousand tokens. The head grid
equals the trace's pooled overviews, the big view zooms, pans, shows the visible tile exactly as the trace
answers it, hovers with the exact weight, plots a row, and all of it keeps up as the session steps on."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF

from gui.rendering import display
from gui.rendering.thumbnails import ThumbnailPooler
from tests.gui.conftest import open_model, wait_idle

N_POSITIONS = 4096
TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. And God said, Let there be light: and there was light. ")


@pytest.fixture(scope="module")
def long_llama(tmp_path_factory):
    from tests.modern_factories import llama

    return llama(tmp_path_factory.mktemp("long-llama") / "llama", max_position_embeddings=N_POSITIONS)


def _force_rebuild(qtbot, win) -> None:
    """capture_mode="rebuild" on the open model, then a new session of the prompt in the box."""

    def fn(w):  # noqa: ANN001, ANN202 - runs in the engine thread
        w.model.capture_mode = "rebuild"
        return None

    win.client.call("capture_mode", fn)
    wait_idle(qtbot, win)
    win.prompt_panel.request_session()
    wait_idle(qtbot, win)


def _settle(qtbot, win) -> None:
    wait_idle(qtbot, win)
    qtbot.waitUntil(lambda: not win.head_grid.pending and not win.attention_view.pending, timeout=60_000)


def _shown(view) -> np.ndarray:
    return np.asarray(view.image.image)


def test_long_prompt_zoom_pan_hover_and_step(qtbot, window, long_llama):
    win = window
    prompt = TEXT * 28
    open_model(qtbot, win, long_llama, prompt=prompt)
    _force_rebuild(qtbot, win)
    _settle(qtbot, win)
    trace = win.state.trace
    n = len(trace)
    assert 2000 < n < N_POSITIONS - 16, n
    assert ThumbnailPooler.rebuilds(trace, "self") and trace.kv_group == 2

    # -- head grid: every layer's pooled overview, checked at layers 1 and 2 against the trace's own pooling
    grid = win.head_grid
    w = grid.bin_width
    full = n // w  # bins wholly inside the pattern
    assert grid.pooled.shape[:2] == (3, 4) and w > 1
    for layer in (1, 2):
        want = trace.attention_overview("self", layer, rows=full, cols=full, q_range=(0, full * w), k_range=(0, full * w))
        np.testing.assert_allclose(grid.pooled[layer, :, :full, :full], want, atol=1e-6, rtol=1e-5)
        last = trace.attention_overview("self", layer, rows=1, cols=full, q_range=(full * w, n), k_range=(0, full * w))
        np.testing.assert_allclose(grid.pooled[layer, :, full, :full], last[:, 0], atol=1e-6, rtol=1e-5)
    t, cell = grid.thumb, grid.thumb + 1
    pooled = grid.pooled[2, 3]
    hidden = display.fit((~display.future_mask(*pooled.shape)).astype(np.float32), t) == 0
    want = np.round(display.normalised(display.fit(pooled, t), False) * 254).astype(np.uint8)
    want[hidden] = 255
    np.testing.assert_array_equal(grid.atlas[2 * cell: 2 * cell + t, 3 * cell: 3 * cell + t], want)
    assert "key/value head 1 (shared by query heads 2–3)" in grid.describe_cell(1, 3)
    assert not grid.groups.path().isEmpty()  # a line between the two key/value groups

    # -- big view, fitted: the whole pattern max-pooled to the screen
    win.state.select(layer=1, head=3)
    view = win.attention_view
    _settle(qtbot, win)
    assert view.tiled and view.pattern is None and view.shape == (n, n)
    tile = view.tile
    assert not tile.exact and (tile.q0, tile.q1, tile.k0, tile.k1) == (0, n, 0, n)
    rows, cols = tile.weights.shape
    assert rows <= view.plot.getViewBox().height() + 1 and cols <= view.plot.getViewBox().width() + 1
    np.testing.assert_array_equal(tile.weights, trace.attention_overview("self", 1, heads=[3], rows=rows, cols=cols)[0])
    img = _shown(view)
    assert img.shape == (rows, cols)
    assert np.isnan(img[0, -1]) and not np.isnan(img[-1, 0])  # the future is transparent
    np.testing.assert_array_equal(img[~np.isnan(img)], tile.weights[~tile.future])
    assert view.bottom_axis.stride > 1 and "every" in view.bottom_axis.labelText  # thinned, and says so

    # -- zoom to 40 × 48 cells: one cell per pixel, exact tiles
    view.set_view(1500, 1540, 1480, 1528)
    _settle(qtbot, win)
    tile = view.tile
    assert tile.exact and (tile.q0, tile.q1, tile.k0, tile.k1) == (1500, 1540, 1480, 1528)
    np.testing.assert_array_equal(tile.weights, trace.attention_tile("self", 1, 3, 1500, 1540, 1480, 1528))
    img = _shown(view)
    causal = np.arange(1480, 1528)[None, :] > np.arange(1500, 1540)[:, None]
    assert (np.isnan(img) == causal).all()
    np.testing.assert_array_equal(img[~causal], tile.weights[~causal])

    # -- pan right by 20 keys, zoom out and in with the keys' slots
    view.set_view(1500, 1540, 1500, 1548)
    _settle(qtbot, win)
    assert (view.tile.k0, view.tile.k1) == (1500, 1548)
    view.zoom(1 / 1.5)
    _settle(qtbot, win)
    q0, q1, k0, k1 = view.tile.q0, view.tile.q1, view.tile.k0, view.tile.k1
    assert q1 - q0 > 40 and k1 - k0 > 48
    view.zoom(1.5)
    _settle(qtbot, win)

    # -- hover: the tooltip's weight is the trace's exact cell
    vb = view.plot.getViewBox()
    q, k = 1520, 1510
    view._on_mouse_moved(vb.mapViewToScene(QPointF(k, q)))
    exact = float(trace.attention_tile("self", 1, 3, q, q + 1, k, k + 1)[0, 0])
    assert view.hover_weight == exact and f"{exact:.4f}" in view.hover_text

    # -- the selected row as a line over all keys, strongest keys listed
    view.row_plot_box.setChecked(True)
    row = trace.attention_tile("self", 1, 3, n - 1, n, 0, n)[0]
    np.testing.assert_array_equal(view.row, row)
    top = int(np.argmax(row))
    assert f"{top} " in view.row_top.text()

    # -- step on: the zoomed view stays where it is, the grid takes the new row
    qtbot.wait(200)  # the row plot took some of the heatmap's height: a new tile for the new size
    _settle(qtbot, win)
    before = view.visible_region()
    assert (view.tile.q0, view.tile.q1, view.tile.k0, view.tile.k1) == before
    win.token_strip.step()
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=60_000)
    _settle(qtbot, win)
    trace2 = win.state.trace
    assert view.visible_region() == before and (view.tile.q0, view.tile.q1, view.tile.k0, view.tile.k1) == before
    np.testing.assert_array_equal(view.row, trace2.attention_tile("self", 1, 3, n, n + 1, 0, n + 1)[0])
    fresh, width = ThumbnailPooler(size=64).stack(trace2, "self")
    assert width == grid.bin_width
    np.testing.assert_allclose(grid.pooled, fresh, atol=1e-6, rtol=1e-5)
    view.fit()
    _settle(qtbot, win)
    assert (view.tile.q1, view.tile.k1) == (n + 1, n + 1)
    assert win.errors == []


def test_token_axis_labels_every_cell_that_fits(qtbot):
    from gui.widgets.token_axis import TokenAxis

    axis = TokenAxis("bottom")
    axis.set_tokens(tuple("abcdefghijklmnopqrst"))  # 20 one-letter source tokens
    assert axis.layout_labels(0, 19, 30.0) == (1, False)  # ~30 px a column: every label, side by side
    axis.set_tokens(("␣beginning", "␣created", "␣heaven", "␣earth") * 3)
    assert axis.layout_labels(0, 11, 24.0) == (1, True)  # too wide side by side, upright they fit
    stride, rotated = axis.layout_labels(0, 11, 4.0)
    assert stride > 1 and not rotated  # neither fits: thinned


def test_prompt_from_file_counts_tokens_first_and_export_writes_chosen_layers(qtbot, window, checkpoints, tmp_path,
                                                                               monkeypatch):
    from engine import load_model
    from gui.features import exports

    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    text = "And God said, Let there be light: and there was light."
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(text, encoding="utf-8")
    asked = []
    win.analysis.prompt_file.ask = lambda message: asked.append(message) or True
    win.analysis.prompt_file.open_path(str(prompt))
    wait_idle(qtbot, win)
    n = len(load_model(checkpoints["decoder"], device="cpu").tokenizer.encode(text))
    assert win.analysis.prompt_file.last_count == (n, 64)
    assert f"{n} tokens" in asked[0] and "run it?" in asked[0]
    assert win.prompt_panel.texts()[0] == text
    assert len(win.state.trace) >= n and win.errors == []

    # a whole-trace export over the limit asks which layers to write, and writes only those
    sizes_seen = []
    win.analysis.exports.choose_layers = lambda _parent, sizes: sizes_seen.append(sizes) or ["decoder.1.attn"]
    monkeypatch.setattr(exports, "EXPORT_ASK_BYTES", 0)
    out = tmp_path / "chosen.npz"
    from PySide6.QtWidgets import QFileDialog  # the dialogs go through gui/widgets/file_dialogs.py

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *_a, **_k: (str(out), "")))
    win.analysis.exports.export_trace_dialog()
    qtbot.waitUntil(lambda: win.analysis.exports.written == str(out), timeout=60_000)  # written in the engine's thread
    trace = win.state.trace
    assert sizes_seen == [{"decoder.0.attn": 4 * 4 * len(trace) ** 2, "decoder.1.attn": 4 * 4 * len(trace) ** 2}]
    with np.load(out) as data:
        assert "decoder.1.attn" in data and "decoder.0.attn" not in data
        np.testing.assert_array_equal(data["decoder.1.attn"], trace.attention("self", 1))
        assert list(data["tokens"]) == list(trace.tokens)


def test_prompt_file_on_the_command_line(checkpoints, tmp_path):
    import main

    prompt = tmp_path / "prompt.txt"
    prompt.write_text("In the beginning God created", encoding="utf-8")
    out = tmp_path / "t.npz"
    assert main.main(["export", "--model", str(checkpoints["decoder"]), "--prompt-file", str(prompt), "--out", str(out)]) == 0
    with np.load(out) as data:
        assert "".join(data["tokens"]).replace("Ġ", " ").endswith("created") or len(data["tokens"]) > 3
    assert main.main(["--prompt", "x", "--prompt-file", str(prompt)]) == 2  # one or the other


def test_a_step_shows_the_tile_coloured_in_the_display_thread(qtbot, window, long_llama):
    win = window
    open_model(qtbot, win, long_llama, prompt=TEXT * 6)
    _force_rebuild(qtbot, win)
    _settle(qtbot, win)
    win.token_strip.step()
    wait_idle(qtbot, win)
    _settle(qtbot, win)
    view = win.attention_view
    assert view.tiled and view.image._prepared is not None  # the display thread's colours are on screen
    shown = bytes(view.image.qimage.constBits())
    view.image._prepared = None  # what pyqtgraph itself would paint for the same image
    view.image._renderRequired = True
    view.image.render()
    assert bytes(view.image.qimage.constBits()) == shown
    assert view.graphics.updatesEnabled()  # the paint held for the tile was released


def test_steps_faster_than_tiles_do_not_freeze_the_view(qtbot, window, long_llama, monkeypatch):
    """The paint held for a step's tile ends hold_ms() after it began (a little more than recent tiles took,
    MAX_HOLD_MS at most), however many steps follow (a run whose tiles come slower than its steps once kept
    the view from painting at all)."""
    import time

    from gui.panels import attention

    win = window
    open_model(qtbot, win, long_llama, prompt=TEXT * 6)
    _force_rebuild(qtbot, win)
    _settle(qtbot, win)
    real = attention.tiles.visible_tile

    def slow(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        time.sleep(0.15)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention.tiles, "visible_tile", slow)
    view = win.attention_view
    held_since, longest = None, 0.0
    for _ in range(8):
        n = len(win.state.trace)
        win.token_strip.step()
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:  # a new step every ~40 ms or as soon as the last one is in
            qtbot.wait(5)
            now = time.monotonic()
            if view.graphics.updatesEnabled():
                held_since = None
            else:
                held_since = held_since or now
                longest = max(longest, now - held_since)
            if len(win.state.trace) > n and now > deadline - 0.16:
                break
    assert attention.HOLD_MS <= view.hold_ms() <= attention.MAX_HOLD_MS
    assert view.hold_ms() > attention.HOLD_MS  # it learned that these tiles take 150 ms
    assert longest <= attention.MAX_HOLD_MS / 1000 + 0.1, f"the view held its paint for {longest * 1000:.0f} ms"
    _settle(qtbot, win)
    assert view.graphics.updatesEnabled()
