"""Compare → Patch on a model only the transformers backend opens (LFM2: convolution layers beside attention): a
patch shows engine.patching's result, the sweep fills the attention layer's row and leaves the convolution layers
blank (said in the caption), and a head of a layer without attention is refused in place, naming what it has."""

from __future__ import annotations

import numpy as np
import pytest

from engine import load_model
from engine.patching import patch
from tests.gui.conftest import open_model, wait_idle

pytest.importorskip("transformers")
TIMEOUT = 60_000
OTHER = "And the earth was without form"


@pytest.fixture(scope="module")
def lfm2(tmp_path_factory):
    from tests.hf_factories import ARCHITECTURES

    return ARCHITECTURES["lfm2"](tmp_path_factory.mktemp("hf") / "lfm2")


def test_patch_tab_patches_and_sweeps_a_transformers_backend_model(qtbot, window, lfm2):
    win = window
    open_model(qtbot, win, lfm2, prompt="In the beginning God created")
    trace = win.state.trace
    dlg = win.analysis.open_compare()
    dlg.prompt_edit.setText(OTHER)
    p = dlg.patch
    p.select_head(1, 2)
    p.run_patch()
    qtbot.waitUntil(lambda: p.result is not None, timeout=TIMEOUT)
    wait_idle(qtbot, win)
    want = patch(load_model(lfm2, device="cpu", backend="transformers"), trace, OTHER, "L1.H2")
    np.testing.assert_allclose(p.result.after, want.after, atol=1e-6)
    assert p.result.pairs == want.pairs and "aligned at the end" in p.patch_caption.text()
    assert p.movers.rowCount() == len(want.movers)

    p.run_sweep()
    qtbot.waitUntil(lambda: p.sweep is not None, timeout=TIMEOUT)
    wait_idle(qtbot, win)
    assert p.sweep.patched.shape == (3, 4) and not p.sweep.cancelled
    assert np.isfinite(p.sweep.patched[1]).all() and np.isnan(p.sweep.patched[[0, 2]]).all()
    assert "short convolution" in p.sweep_caption.text()

    p.components_edit.setText("L0.H1")
    p.run_patch()
    qtbot.waitUntil(lambda: "short convolution" in p.patch_caption.text(), timeout=TIMEOUT)
    wait_idle(qtbot, win)
    assert win.errors == []
