"""Patterns rebuilt from queries, keys and row log-sum-exps equal the stored patterns (and so transformers,
which tests/parity checks the stored ones against) for every architecture: causal, sliding-window, soft-capped,
relative-bias (T5), grouped-query, cross-attention; tiles at edges and across step boundaries; pooled overviews
equal to pooling the dense pattern by brute force; earlier Traces unchanged by later steps and branches;
memory linear in the context. Tolerance 1e-5 (float32), as for parity."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Session, load_model
from engine.errors import CaptureError
from tests import factories, modern_factories

TOL = 1e-5
ALL = {**factories.ARCHITECTURES, **modern_factories.ARCHITECTURES}
SOURCE = "And God said, Let there be light: and there was light."


def _session(model, mode: str, n_prompt: int = 40) -> Session:
    model.capture_mode = mode
    tok = model.tokenizer
    if model.family == "encoder":
        return Session(model, tok.encode(SOURCE))
    if model.family == "encoder-decoder":
        return Session(model, None, source=tok.encode(SOURCE))
    return Session(model, list(range(5, 5 + n_prompt)))


def _drive(session: Session) -> None:
    """Steps, a back and a branch: every way blocks and keys are added and removed."""
    if session.family == "encoder":
        return
    for _ in range(4):
        session.step()
    session.back()
    session.branch(7)
    session.step()


@pytest.fixture(scope="module", params=list(ALL))
def model(request, tmp_path_factory):
    return load_model(ALL[request.param](tmp_path_factory.mktemp(request.param) / "ckpt"), device="cpu")


def test_rebuilt_patterns_equal_stored_ones(model):
    stored, rebuilt = _session(model, "patterns"), _session(model, "rebuild")
    _drive(stored)
    _drive(rebuilt)
    a, b = stored.trace, rebuilt.trace
    assert b.rules, "the rebuild session should keep queries, keys and lse, not patterns"
    for kind in a.kinds:
        for layer in range(a.n_layers[kind]):
            want, got = a.attention(kind, layer), b.attention(kind, layer)
            assert got.shape == want.shape
            err = float(np.abs(got - want).max())
            assert err <= TOL, f"{kind} layer {layer}: rebuilt differs from stored by {err:.1e}"
            q = want.shape[1] - 1
            np.testing.assert_allclose(b.attention_row(kind, layer, q)[:, : want.shape[2]], want[:, q], atol=TOL)
    if a.logits is not None:
        np.testing.assert_allclose(b.logits, a.logits, atol=1e-4)


def test_tiles_and_overviews(model):
    s = _session(model, "rebuild")
    _drive(s)
    trace = s.trace
    kind = trace.kinds[-1]
    layer = trace.n_layers[kind] - 1
    head = trace.n_heads - 1
    dense = trace.attention_head(kind, layer, head)
    nq, nk = dense.shape
    for q0, q1, k0, k1 in ((0, 1, 0, 1), (nq - 3, nq, 0, nk), (3, nq - 2, 2, nk - 1), (0, nq, nk - 1, nk), (nq - 1, nq + 5, -2, 3)):
        got = trace.attention_tile(kind, layer, head, q0, q1, k0, k1)
        np.testing.assert_allclose(got, dense[max(0, q0) : q1, max(0, k0) : k1], atol=TOL)
    # (2nq/3, 2nk/3): one or two cells per bin, pooled by offset within the bins rather than bin by bin
    for rows, cols in ((7, 5), (nq, nk), (3, 100), (max(1, 2 * nq // 3), max(1, 2 * nk // 3))):
        for reduce, fn in (("max", np.max), ("mean", np.mean)):
            got = trace.attention_overview(kind, layer, [head], rows, cols, reduce)[0]
            r, c = min(rows, nq), min(cols, nk)
            re, ce = (np.arange(r + 1) * nq) // r, (np.arange(c + 1) * nk) // c
            want = np.array([[fn(dense[re[i] : re[i + 1], ce[j] : ce[j + 1]]) for j in range(c)] for i in range(r)])
            np.testing.assert_allclose(got, want, atol=TOL, err_msg=f"{reduce} {rows}x{cols}")
    assert trace.family != "decoder" or 2 * nq // 3 >= 8, "the offset pooling needs a few output rows to be taken"
    part = trace.attention_overview(kind, layer, None, 4, 4, "max", q_range=(2, nq - 1), k_range=(1, nk))
    assert part.shape == (trace.n_heads, min(4, nq - 3), min(4, nk - 1))
    assert part[-1].max() == pytest.approx(dense[2 : nq - 1, 1:].max(), abs=TOL)


@pytest.mark.parametrize("mode", ["patterns", "rebuild"])
def test_every_heads_tiles_at_once(model, mode):
    """attention_tiles (one batched product per key/value head, for the head grid) equals each head's tile."""
    s = _session(model, mode)
    _drive(s)
    trace = s.trace
    for kind in trace.kinds:
        for layer in range(trace.n_layers[kind]):
            _h, nq, nk = trace.attention_shape(kind, layer)
            for q0, q1, k0, k1 in ((0, nq, 0, nk), (nq - 1, nq, 0, nk), (2, nq - 3, 1, nk - 2), (nq - 2, nq + 4, -1, 4)):
                got = trace.attention_tiles(kind, layer, q0, q1, k0, k1)
                want = np.stack([trace.attention_tile(kind, layer, h, q0, q1, k0, k1) for h in range(trace.n_heads)])
                assert got.shape == want.shape and got.dtype == np.float32
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=f"{kind} {layer} {(q0, q1, k0, k1)}")


def test_earlier_traces_do_not_change(tmp_path):
    model = load_model(modern_factories.ARCHITECTURES["mistral"](tmp_path / "m"), device="cpu")
    s = _session(model, "rebuild", 12)
    s.step()
    s.step()
    early = s.trace
    before = [early.attention("self", i).copy() for i in range(model.n_layers)]
    s.back()
    s.back()
    s.step(token_id=3)  # overwrites the positions `early` saw, in the cache and in the key arena
    for token in range(10, 80):  # and grows the key buffers past their first capacity (forced: no EOS)
        s.step(token_id=token)
    for i in range(model.n_layers):
        np.testing.assert_array_equal(early.attention("self", i), before[i])
    assert s.trace.attention("self", 0).shape[1] == 12 + 71


def test_memory_grows_linearly(tmp_path):
    model = load_model(modern_factories.ARCHITECTURES["llama"](tmp_path / "m"), device="cpu")
    sizes = {}
    for mode in ("patterns", "rebuild"):
        model.capture_mode = mode
        sizes[mode] = [model.run(list(range(1, 1 + n))).nbytes for n in (32, 128)]
    assert sizes["rebuild"][1] / sizes["rebuild"][0] == pytest.approx(4.0, rel=0.02)  # 4x the tokens, 4x the bytes
    assert sizes["patterns"][1] / sizes["patterns"][0] > 8  # stored rows grow as T^2 (triangles in row chunks)


def test_auto_mode_rebuilds_for_big_contexts(tmp_path):
    model = load_model(modern_factories.ARCHITECTURES["llama"](tmp_path / "m"), device="cpu")
    assert model.capture_mode == "auto" and not model.rebuilds_patterns  # small context: rows are stored
    big = model.config.with_(max_positions=32768)
    model.config = big
    assert model.rebuilds_patterns
    with pytest.raises(ValueError, match="capture_mode"):
        model.capture_mode = "sometimes"
        _ = model.rebuilds_patterns


def test_a_whole_huge_layer_is_refused_with_a_hint(tmp_path, monkeypatch):
    import engine.trace

    model = load_model(modern_factories.ARCHITECTURES["llama"](tmp_path / "m"), device="cpu")
    model.capture_mode = "rebuild"
    trace = model.run(list(range(1, 30)))
    monkeypatch.setattr(engine.trace, "DENSE_LIMIT", 1000)
    with pytest.raises(CaptureError, match="overview"):
        trace.attention("self", 0)
    assert trace.attention_head("self", 0, 1).shape == (29, 29)


@pytest.mark.parametrize("mode", ["patterns", "rebuild"])
def test_capture_of_chosen_layers_only(tmp_path, mode):
    model = load_model(modern_factories.ARCHITECTURES["qwen2"](tmp_path / "m"), device="cpu")
    model.capture_mode = mode
    full = Session(model, list(range(5, 25)))
    some = Session(model, list(range(5, 25)), capture={"decoder.1.attn"})
    for s in (full, some):
        s.step()
    np.testing.assert_allclose(some.trace.attention("self", 1), full.trace.attention("self", 1), atol=TOL)
    np.testing.assert_allclose(some.trace.logits, full.trace.logits, atol=1e-4)  # the others ran uncaptured
    with pytest.raises(CaptureError, match="not recorded"):
        some.trace.attention("self", 0)
    with pytest.raises(CaptureError, match="no capture point"):
        Session(model, [5, 6], capture={"decoder.9.attn"})
