"""Chunked analyses equal the whole-pattern ones (engine.analysis) — with chunks small enough that every
statistic crosses chunk edges — for causal, bidirectional and rebuilt traces."""

from __future__ import annotations

import numpy as np
import pytest

import engine.chunked_analysis as chunked
from engine import Session, load_model
from engine.analysis import pattern_statistics, rollout
from engine.errors import CaptureError
from tests import factories, modern_factories


@pytest.fixture(params=["gpt2-patterns", "mistral-rebuild", "bert-patterns"])
def trace(request, tmp_path, monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 8 * 40 * 3)  # three rows of a 40-key pattern per chunk
    name, mode = request.param.split("-")
    model = load_model((factories.ARCHITECTURES.get(name) or modern_factories.ARCHITECTURES[name])(tmp_path / "m"),
                       device="cpu")
    model.capture_mode = mode
    if model.family == "encoder":
        return Session(model, model.tokenizer.encode("In the beginning God created the heaven and the earth.")).trace
    s = Session(model, list(range(5, 40)))
    s.step()
    return s.trace


def test_statistics_match_the_whole_pattern(trace):
    kind = trace.kinds[0]
    # Stored patterns are the same float32 numbers either way; rebuilt rows are recomputed in float32 per chunk,
    # and BLAS rounds a 3-row product differently from a 36-row one (~1e-8 relative with numpy 2.4's OpenBLAS).
    tol = 1e-6 if trace.rules else 1e-9
    for layer in range(trace.n_layers[kind]):
        want = pattern_statistics(trace.attention(kind, layer), causal=kind == "self")
        got = chunked.pattern_statistics_chunked(trace, kind, layer)
        for name, values in want.items():
            np.testing.assert_allclose(got[name], values, rtol=tol, atol=tol, err_msg=f"{name} layer {layer}")


def test_rollout_row_matches_the_product(trace):
    kind = trace.kinds[0]
    n = trace.attention_shape(kind, 0)[1]
    for upto in (0, trace.n_layers[kind] - 1):
        full = rollout(trace, kind, upto)
        for q in (0, n // 2, n - 1):
            np.testing.assert_allclose(chunked.rollout_row(trace, kind, q, upto), full[q], atol=1e-6)
    with pytest.raises(CaptureError):
        chunked.rollout_row(trace, kind, n)


def test_head_statistics_switch_to_chunks_for_big_layers(tmp_path, monkeypatch):
    import engine.analysis as analysis

    model = load_model(modern_factories.ARCHITECTURES["qwen2"](tmp_path / "m"), device="cpu")
    trace = Session(model, list(range(5, 45))).trace
    induction = np.zeros((model.n_layers, model.n_heads))
    whole = analysis.head_statistics(model, trace, induction)
    monkeypatch.setattr(analysis, "WHOLE_PATTERN_BYTES", 0)
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 8 * 40 * 7)
    by_chunks = analysis.head_statistics(model, trace, induction)
    for a, b in zip(whole, by_chunks):
        assert (a.kind, a.layer, a.head) == (b.kind, b.layer, b.head)
        for name in ("entropy", "entropy_norm", "prev_token", "sink", "distance"):
            assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-9, abs=1e-12)
