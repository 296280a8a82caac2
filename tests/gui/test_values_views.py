"""What the views show, checked pixel by pixel at layers and heads other than 0 against the trace (and the
rollout against plain loops over its patterns), and a session file reopened in a fresh window with every
sampling setting and view choice set to something other than its default."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PySide6.QtCore import QSettings

from tests.engine.values_models import rollout_by_loops, sharp_gpt2
from tests.gui.conftest import open_model, wait_idle

PROMPT = "In the beginning God created the heaven and the earth"


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    return sharp_gpt2(tmp_path_factory.mktemp("sharp-gui") / "ckpt")


def _rendered_colours(view) -> np.ndarray:
    """The colours the big view's image item paints, [rows, cols, 3] (what a screenshot would show)."""
    item = view.image
    item.render()
    qimage = item.qimage
    w, h = qimage.width(), qimage.height()
    out = np.empty((h, w, 3), dtype=np.int64)
    for y in range(h):
        for x in range(w):
            c = qimage.pixelColor(x, y)
            out[y, x] = (c.red(), c.green(), c.blue())
    return out


def _check_big_view(view, weights: np.ndarray, lut: np.ndarray, log_scale: bool, causal: bool) -> None:
    """The image holds `weights` [queries, keys] (log10 on the log scale), NaN above the diagonal when causal,
    and paints each cell with the colour-map entry of its weight."""
    img = view.image.image
    n_q, n_k = weights.shape
    assert img.shape == (n_q, n_k)
    lo, hi = (-4.0, 0.0) if log_scale else (0.0, 1.0)
    colours = _rendered_colours(view)
    for q in range(n_q):
        for k in range(n_k):
            if causal and k > q:
                assert math.isnan(img[q, k]), (q, k)
                continue
            w = float(weights[q, k])
            want = math.log10(max(w, 1e-4)) if log_scale else w
            assert img[q, k] == pytest.approx(want, abs=1e-6), (q, k)
            # pyqtgraph maps the levels onto the table's 256 entries; allow the neighbouring entry at a boundary
            index = min(255, max(0, int((want - lo) / (hi - lo) * 256)))
            near = lut[max(0, index - 1): index + 2].astype(np.int64)
            assert np.abs(near - colours[q, k]).sum(-1).min() <= 3, (q, k, colours[q, k], lut[index])


def test_big_view_shows_the_chosen_layer_and_head(qtbot, window, sharp):
    from gui.rendering import colormaps

    win = window
    open_model(qtbot, win, sharp, prompt=PROMPT, steps=2)
    view, trace = win.attention_view, win.state.trace
    assert np.abs(trace.attention("self", 2)[3] - trace.attention("self", 0)[3]).max() > 0.1  # layers look different
    win.state.select(layer=2, head=3)
    assert "layer 2 · head 3" in view.plot.titleLabel.text
    _check_big_view(view, trace.attention("self", 2)[3], colormaps.lookup_table("viridis"), False, True)
    win.state.select(layer=1, head=2)
    win.state.set_display(colormap="magma", log_scale=True)
    _check_big_view(view, trace.attention("self", 1)[2], colormaps.lookup_table("magma"), True, True)
    win.state.set_display(log_scale=False)
    win.state.select(mean_heads=True)
    mean = trace.attention("self", 1).astype(np.float64).mean(0)
    _check_big_view(view, mean, colormaps.lookup_table("magma"), False, True)
    np.testing.assert_allclose(view.pattern, mean, atol=1e-6)
    assert win.errors == []


def test_big_view_of_cross_attention_at_layer_1(qtbot, window, checkpoints):
    from gui.rendering import colormaps

    win = window
    open_model(qtbot, win, checkpoints["encoder-decoder"], steps=2)
    trace = win.state.trace
    win.state.select(kind="cross", layer=1, head=3)
    _check_big_view(win.attention_view, trace.attention("cross", 1)[3], colormaps.lookup_table("viridis"), False, False)
    win.state.select(kind="encoder", layer=1, head=1)
    _check_big_view(win.attention_view, trace.attention("encoder", 1)[1], colormaps.lookup_table("viridis"), False, False)


def _thumbnail_by_loops(p: np.ndarray, t: int, log_scale: bool) -> np.ndarray:
    """Atlas indices of one causal cell, from the rules: max over square bins of w tokens (w the smallest power
    of two with ⌈n/w⌉ ≤ 64), then to t × t by nearest-neighbour repeat (m ≤ t) or max over bins [⌊i m/t⌋,
    ⌊(i+1) m/t⌋) (m > t); linear: scaled to the thumbnail's maximum, log: log10 on [1e-4, 1]; onto 0..254,
    and 255 (background) where every key is in the future."""
    n = p.shape[0]
    w = 1
    while math.ceil(n / w) > 64:
        w *= 2
    m = math.ceil(n / w)
    pooled = [[max(float(p[q, k]) for q in range(a * w, min(n, a * w + w)) for k in range(b * w, min(n, b * w + w)))
               for b in range(m)] for a in range(m)]

    def sources(i: int) -> range:
        return range(i * m // t, i * m // t + 1) if m <= t else range(i * m // t, (i + 1) * m // t)

    cells = [[[(a, b) for a in sources(i) for b in sources(j)] for j in range(t)] for i in range(t)]
    raw = np.array([[max(pooled[a][b] for a, b in cells[i][j]) for j in range(t)] for i in range(t)])
    scaled = (np.log10(np.maximum(raw, 1e-4)) + 4) / 4 if log_scale else raw / raw.max()
    out = np.round(scaled * 254).astype(np.int64)
    for i in range(t):
        for j in range(t):
            if all(b > a for a, b in cells[i][j]):
                out[i, j] = 255
    return out


def test_head_grid_shows_every_layer_and_head(qtbot, window, sharp):
    win = window
    open_model(qtbot, win, sharp, prompt=PROMPT, steps=3)
    grid, trace = win.head_grid, win.state.trace
    for log_scale in (False, True):
        win.state.set_display(log_scale=log_scale)
        t = grid.thumb
        cell = t + 1
        for layer in range(3):
            for head in range(4):
                want = _thumbnail_by_loops(trace.attention("self", layer)[head], t, log_scale)
                got = grid.atlas[layer * cell: layer * cell + t, head * cell: head * cell + t]
                np.testing.assert_array_equal(got, want, err_msg=f"layer {layer} head {head} log {log_scale}")
        assert not np.array_equal(grid.atlas[2 * cell: 2 * cell + t, 3 * cell: 3 * cell + t], grid.atlas[:t, 3 * cell: 3 * cell + t])


def test_head_grid_pools_long_prompts(qtbot, window, sharp):
    win = window
    open_model(qtbot, win, sharp, prompt=" ".join(["light"] * 45) + " " + PROMPT, steps=1)
    grid, trace = win.head_grid, win.state.trace
    t, cell = grid.thumb, grid.thumb + 1
    assert 64 < len(trace) < 128 and t < 64  # pooled in bins of two tokens, then fitted to the thumbnail
    for layer, head in ((2, 1), (1, 3)):
        got = grid.atlas[layer * cell: layer * cell + t, head * cell: head * cell + t]
        np.testing.assert_array_equal(got, _thumbnail_by_loops(trace.attention("self", layer)[head], t, False))


def test_rollout_view_matches_loops_over_the_trace(qtbot, window, sharp):
    win = window
    open_model(qtbot, win, sharp, prompt=PROMPT, steps=1)
    view, trace = win.attention_view, win.state.trace
    patterns = [trace.attention("self", i) for i in range(3)]
    win.analysis.rollout.set_active(True)
    for layer in (2, 1):
        win.state.select(layer=layer)
        want = rollout_by_loops(patterns[: layer + 1])
        np.testing.assert_allclose(view.pattern, want, atol=1e-5)
        img = view.image.image
        lower = np.tril(np.ones(want.shape, dtype=bool))
        np.testing.assert_allclose(img[lower], want[lower], atol=1e-5)
    assert np.abs(rollout_by_loops(patterns[:2]) - rollout_by_loops(patterns[:3])).max() > 1e-3


def _fresh_window(qtbot, tmp_path, name: str):
    from gui.shell.app import make_app
    from gui.shell.main_window import MainWindow

    make_app()
    win = MainWindow(settings=QSettings(str(tmp_path / f"{name}.ini"), QSettings.Format.IniFormat), devices=["cpu"])
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    return win


def _set_sampling_controls(panel, greedy: bool, temperature: float, top_k: int, top_p: float, seed: int) -> None:
    panel.mode_box.setCurrentText("greedy" if greedy else "sample")
    panel.temperature_spin.setValue(temperature)
    panel.top_k_spin.setValue(top_k)
    panel.top_p_spin.setValue(top_p)
    panel.seed_spin.setValue(seed)


SAMPLING = {"greedy": False, "temperature": 0.7, "top_k": 5, "top_p": 0.8, "seed": 11}


@pytest.mark.parametrize("which", ["decoder", "encoder-decoder"])
def test_session_file_reopens_every_setting_in_a_fresh_window(qtbot, window, sharp, checkpoints, tmp_path, which):
    win = window
    path_model = sharp if which == "decoder" else checkpoints["encoder-decoder"]
    open_model(qtbot, win, path_model, steps=1)
    _set_sampling_controls(win.prompt_panel, **SAMPLING)
    wait_idle(qtbot, win)
    assert win.state.sampling.temperature == 0.7
    old = win.state.trace
    win.client.step()
    qtbot.waitUntil(lambda: win.state.trace is not old, timeout=60_000)
    wait_idle(qtbot, win)
    assert win.state.trace.steps[-1].how == "sampled"
    s = win.state
    if which == "decoder":
        view = {"kind": "self", "layer": 2, "head": 3, "query": 3, "mean_heads": False, "rollout": True}
        s.select(layer=2, head=3, query=3)
        win.analysis.rollout.set_active(True)
    else:
        view = {"kind": "cross", "layer": 1, "head": 2, "query": 1, "source_query": 2, "mean_heads": True, "rollout": False}
        s.select(kind="cross", layer=1, head=2, query=1, source_query=2, mean_heads=True)
    s.set_display(colormap="plasma", log_scale=True)
    io_ = win.analysis.session_io
    path = tmp_path / "s.json"
    io_.save_session(str(path))
    qtbot.waitUntil(lambda: io_.saved is not None, timeout=30_000)
    saved = json.loads(path.read_text())
    assert saved["settings"] == SAMPLING
    trace = s.trace

    other = _fresh_window(qtbot, tmp_path, "other")
    try:
        assert other.state.sampling.greedy and other.state.colormap == "viridis"  # the defaults, before opening
        other.analysis.session_io.open_session(str(path))
        qtbot.waitUntil(lambda: other.state.trace is not None, timeout=60_000)
        wait_idle(qtbot, other)
        o = other.state
        assert o.trace.token_ids == trace.token_ids
        for key, value in view.items():
            got = other.analysis.rollout.active if key == "rollout" else getattr(o, key)
            assert got == value, key
        assert (o.colormap, o.log_scale) == ("plasma", True)
        assert (other.attention_view.cmap_box.currentText(), other.attention_view.scale_box.currentText()) == ("plasma", "log")
        for key, value in SAMPLING.items():
            assert getattr(o.sampling, key) == pytest.approx(value), key
        p = other.prompt_panel
        assert (p.mode_box.currentText(), p.temperature_spin.value(), p.top_k_spin.value(), p.top_p_spin.value(),
                p.seed_spin.value()) == ("sample", pytest.approx(0.7), 5, pytest.approx(0.8), 11)
        # the worker's session samples with them: the next step is drawn like the original window's
        before = o.trace
        other.client.step()
        qtbot.waitUntil(lambda: o.trace is not before, timeout=60_000)
        wait_idle(qtbot, other)
        win.client.step()
        qtbot.waitUntil(lambda: s.trace is not trace, timeout=60_000)
        wait_idle(qtbot, win)
        assert o.trace.steps[-1].how == "sampled"
        assert o.trace.token_ids == s.trace.token_ids
        assert other.errors == [] and win.errors == []
    finally:
        other.close()
