"""Stored patterns checked by value against `transformers`: causal prompts of several row chunks
(engine.model.ROW_CHUNK), decode rows after them, and float16 storage, with the tolerances docs/models.md states
(float32: every weight within 1e-5; float16: within 5e-4)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from engine import Session, load_model
from engine.model import ROW_CHUNK, Model
from tests.engine.values_models import LazyCheckpoints, checkpoint_root, sharp_gpt2

transformers = pytest.importorskip("transformers")

FP32_TOL, FP16_TOL = 1e-5, 5e-4
N_PROMPT = 130  # > 4 chunks of 32 rows, the last one partial


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Only the checkpoints this module uses, built on first use (values_models.LazyCheckpoints)."""
    return LazyCheckpoints(checkpoint_root(tmp_path_factory, "ckpt"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = sharp_gpt2(checkpoint_root(tmp_path_factory, "long") / "ckpt", n_layer=2)
    ref = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    return folder, ref


@pytest.fixture
def model(pair):
    return load_model(pair[0], device="cpu")


def _ids(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(1, 299, size=n).tolist()


def _reference(ref, ids: list[int]) -> list[np.ndarray]:
    with torch.no_grad():
        return [a[0].numpy() for a in ref(torch.tensor([ids]), output_attentions=True).attentions]


def _assert_close(ours: np.ndarray, theirs: np.ndarray, tol: float, what: str) -> None:
    assert ours.shape == theirs.shape, what
    err = np.abs(ours.astype(np.float64) - theirs)
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    assert err.max() <= tol, f"{what}: max error {err.max():.2e} at {worst}"


def _assert_row_close(ours: np.ndarray, theirs: np.ndarray, q: int, tol: float, what: str) -> None:
    """attention_row hands out the keys its chunk stores (at least 0..q); the reference is 0 beyond them."""
    n = ours.shape[1]
    assert q < n <= theirs.shape[1], what
    _assert_close(ours, theirs[:, :n], tol, what)
    assert not theirs[:, n:].any(), what


def test_long_prompt_patterns_match_the_reference(model, pair):
    assert N_PROMPT > 3 * ROW_CHUNK
    ids = _ids(N_PROMPT)
    trace = model.run(ids)
    ref = _reference(pair[1], ids)
    for layer, theirs in enumerate(ref):
        assert trace.pattern_blocks("self", layer)[0].rows.dtype == np.float32
        _assert_close(trace.attention("self", layer), theirs, FP32_TOL, f"layer {layer}")
        for head in (0, 3):
            _assert_close(trace.attention_head("self", layer, head), theirs[head], FP32_TOL, f"layer {layer} head {head}")
    # the rows on both sides of every chunk edge, one at a time, and the last row
    edges = [q for a in range(ROW_CHUNK, N_PROMPT, ROW_CHUNK) for q in (a - 1, a)] + [N_PROMPT - 1]
    for q in edges:
        _assert_row_close(trace.attention_row("self", 1, q), ref[1][:, q], q, FP32_TOL, f"row {q}")
        assert trace.attention_row("self", 1, q)[:, : q + 1].sum(-1) == pytest.approx(np.ones(4), abs=1e-5)
    np.testing.assert_allclose(trace.logits, pair[1](torch.tensor([ids])).logits[0].detach().numpy(), atol=1e-4)


def test_long_prompt_then_steps_match_a_full_reference_forward(model, pair):
    ids = _ids(100, seed=1)
    s = Session(model, ids)
    for t in (7, 200, 31, 5, 64):
        s.step(t)
    trace = s.trace
    assert len(trace) == 105
    for layer, theirs in enumerate(_reference(pair[1], list(trace.token_ids))):
        _assert_close(trace.attention("self", layer), theirs, FP32_TOL, f"layer {layer}")
    s.back()
    s.back()
    s.step(99)  # after back(), the chunked prompt rows stay and the new row is right
    for layer, theirs in enumerate(_reference(pair[1], list(s.trace.token_ids))):
        _assert_close(s.trace.attention("self", layer), theirs, FP32_TOL, f"after back, layer {layer}")


@pytest.mark.parametrize("n", [ROW_CHUNK, ROW_CHUNK + 1, 2 * ROW_CHUNK + 5])
def test_prompts_around_one_chunk(model, pair, n):
    ids = _ids(n, seed=n)
    trace = model.run(ids)
    for layer, theirs in enumerate(_reference(pair[1], ids)):
        _assert_close(trace.attention("self", layer), theirs, FP32_TOL, f"{n} tokens, layer {layer}")


def test_float16_storage_matches_the_reference_within_its_tolerance(model, pair):
    model.capture_dtype = "float16"
    assert model.pattern_dtype is np.float16
    ids = _ids(N_PROMPT, seed=2)
    s = Session(model, ids)
    s.step(17)
    s.step(250)
    trace = s.trace
    ref = _reference(pair[1], list(trace.token_ids))
    for layer, theirs in enumerate(ref):
        blocks = trace.pattern_blocks("self", layer)
        assert len(blocks) > 3 and all(b.rows.dtype == np.float16 for b in blocks)  # stored as float16
        ours = trace.attention("self", layer)
        assert ours.dtype == np.float32  # handed out as float32
        _assert_close(ours, theirs, FP16_TOL, f"float16 layer {layer}")
        _assert_close(trace.attention_head("self", layer, 2), theirs[2], FP16_TOL, f"float16 layer {layer} head 2")
        for q in (ROW_CHUNK - 1, ROW_CHUNK, len(trace) - 1):
            _assert_row_close(trace.attention_row("self", layer, q), theirs[:, q], q, FP16_TOL, f"float16 row {q}")
    assert np.abs(trace.attention("self", 1) - ref[1]).max() > 1e-6  # really rounded: float16 is in use
    # half the memory of the same trace stored as float32
    model.capture_dtype = "float32"
    s32 = Session(model, list(trace.token_ids[:N_PROMPT]))
    s32.step(17)
    s32.step(250)
    assert trace.nbytes * 2 == s32.trace.nbytes


def test_float16_for_encoder_decoder_patterns(folders):
    marian = load_model(folders["marian"], device="cpu")
    marian.capture_dtype = "float16"
    ref = transformers.MarianMTModel.from_pretrained(folders["marian"], attn_implementation="eager").eval()
    tok = marian.tokenizer
    src = tok.encode("And God said, Let there be light: and there was light.")
    dec = [marian.config.decoder_start_token_id] + tok.encode("And God said", special_tokens=False)
    trace = marian.run(dec, source=src)
    with torch.no_grad():
        out = ref(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), output_attentions=True)
    for kind, atts in (("encoder", out.encoder_attentions), ("self", out.decoder_attentions), ("cross", out.cross_attentions)):
        for layer, a in enumerate(atts):
            assert trace.pattern_blocks(kind, layer)[0].rows.dtype == np.float16
            _assert_close(trace.attention(kind, layer), a[0].numpy(), FP16_TOL, f"{kind} {layer}")


def _auto_dtype(**shape) -> type:
    cfg = types.SimpleNamespace(family="decoder", n_encoder_layers=0, n_decoder_layers=0, n_heads=1, max_positions=1)
    for k, v in shape.items():
        setattr(cfg, k, v)
    return Model.pattern_dtype.fget(types.SimpleNamespace(capture_dtype="auto", config=cfg))


def test_auto_storage_switches_to_float16_for_big_models(model):
    # docs/models.md: float32 while one full context's patterns fit in 128 MB, float16 beyond (GPT-2 small, BERT-base)
    assert _auto_dtype(family="decoder", n_decoder_layers=12, n_heads=12, max_positions=1024) is np.float16  # 302 MB
    assert _auto_dtype(family="encoder", n_encoder_layers=12, n_heads=12, max_positions=512) is np.float16  # 151 MB
    assert _auto_dtype(family="decoder", n_decoder_layers=4, n_heads=4, max_positions=512) is np.float32  # 8 MB
    assert _auto_dtype(family="encoder", n_encoder_layers=12, n_heads=12, max_positions=384) is np.float32  # 85 MB
    # Marian-base: 6 + 6 layers, 8 heads, 512 positions: (6 + 3 + 6) · 512² · 8 · 4 = 126 MB (just fits)
    assert _auto_dtype(family="encoder-decoder", n_encoder_layers=6, n_decoder_layers=6, n_heads=8,
                       max_positions=512) is np.float32
    assert _auto_dtype(family="encoder-decoder", n_encoder_layers=6, n_decoder_layers=6, n_heads=8,
                       max_positions=540) is np.float16
    assert model.capture_dtype == "auto" and model.pattern_dtype is np.float32  # the small test model stays exact
    with pytest.raises(ValueError, match="capture_dtype"):
        model.capture_dtype = "int8"
        _ = model.pattern_dtype
