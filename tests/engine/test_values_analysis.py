"""Ablation and the analyses checked by value, at layers and heads other than 0, against answers that do not
come from the code under test: `transformers` (eager attention, forward hooks that switch a head off or read
the residual stream), hand-built patterns with answers worked out by hand, and brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine import CaptureError, Session, SessionError, load_model
from engine.analysis import (
    HeadStat,
    head_statistics,
    induction_pattern_score,
    induction_scores,
    logit_lens,
    mean_of_heads,
    pattern_statistics,
    repeated_random_ids,
    rollout,
)
from engine.trace import PatternBlock, Trace
from tests.engine.values_models import LazyCheckpoints, checkpoint_root, rollout_by_loops, sharp_gpt2

transformers = pytest.importorskip("transformers")

ATTN_TOL = 1e-5  # docs/models.md: every pattern within 1e-5 of transformers
PROMPT_IDS = [5, 17, 42, 99, 7, 250, 13, 64, 3, 120, 77]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Only the checkpoints this module uses, built on first use (values_models.LazyCheckpoints)."""
    return LazyCheckpoints(checkpoint_root(tmp_path_factory, "ckpt"))


@pytest.fixture(scope="module")
def bert(folders):
    return load_model(folders["bert"], device="cpu")


@pytest.fixture(scope="module")
def marian(folders):
    return load_model(folders["marian"], device="cpu")


@pytest.fixture(scope="module")
def gpt64(folders):
    return load_model(folders["gpt2"], device="cpu")  # factories.gpt2: 64 positions


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """(our model, the transformers reference) of one GPT-2 whose heads differ (see values_models)."""
    folder = sharp_gpt2(checkpoint_root(tmp_path_factory, "sharp") / "ckpt")
    ref = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    return load_model(folder, device="cpu"), ref


@pytest.fixture(scope="module")
def ref_bert(folders):
    return transformers.BertForMaskedLM.from_pretrained(folders["bert"], attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def ref_marian(folders):
    return transformers.MarianMTModel.from_pretrained(folders["marian"], attn_implementation="eager").eval()


def _scale_head_input(module: torch.nn.Module, head: int, n_heads: int, value: float):
    """A pre-hook on an attention output projection: its input is the heads' outputs side by side."""

    def hook(_mod, args):
        (x,) = args
        x = x.clone()
        hs = x.shape[-1] // n_heads
        x[..., head * hs:(head + 1) * hs] *= value
        return (x,)

    return module.register_forward_pre_hook(hook)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# -- head ablation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer, head, value", [(1, 2, 0.0), (0, 3, 0.0), (1, 1, 0.5)])
def test_gpt_ablation_switches_off_the_head_asked_for(sharp, layer, head, value):
    gpt, ref_gpt = sharp
    ids = PROMPT_IDS
    handle = _scale_head_input(ref_gpt.transformer.h[layer].attn.c_proj, head, gpt.n_heads, value)
    try:
        with torch.no_grad():
            out = ref_gpt(torch.tensor([ids]), output_attentions=True)
    finally:
        handle.remove()
    gpt.set_head_gate("self", layer, head, value)
    try:
        trace = gpt.run(ids)
    finally:
        gpt.clear_gates()
    assert trace.gates == {f"decoder.{layer}.attn": tuple(value if h == head else 1.0 for h in range(gpt.n_heads))}
    np.testing.assert_allclose(trace.logits, out.logits[0].numpy(), atol=1e-4)
    for i, a in enumerate(out.attentions):
        np.testing.assert_allclose(trace.attention("self", i), a[0].numpy(), atol=ATTN_TOL)
    # and it is not what switching off any other head of that layer gives
    plain = gpt.run(ids).logits
    assert np.abs(trace.logits - plain).max() > 1e-3


def test_gpt_ablation_with_the_wrong_head_would_differ(sharp):
    """The hooked reference for head 2 disagrees with our model with head 1 off: the check above can tell heads apart."""
    gpt, ref_gpt = sharp
    ids = PROMPT_IDS
    handle = _scale_head_input(ref_gpt.transformer.h[1].attn.c_proj, 2, gpt.n_heads, 0.0)
    try:
        with torch.no_grad():
            ref = ref_gpt(torch.tensor([ids])).logits[0].numpy()
    finally:
        handle.remove()
    gpt.set_head_gate("self", 1, 1, 0.0)
    try:
        wrong = gpt.run(ids).logits
    finally:
        gpt.clear_gates()
    assert np.abs(wrong - ref).max() > 1e-3


def test_bert_ablation_matches_the_hooked_reference(bert, ref_bert):
    ids = bert.tokenizer.encode("In the beginning God created the heaven")
    handle = _scale_head_input(ref_bert.bert.encoder.layer[1].attention.output.dense, 3, bert.n_heads, 0.0)
    try:
        with torch.no_grad():
            ref = ref_bert(torch.tensor([ids])).logits[0].numpy()
    finally:
        handle.remove()
    bert.set_head_gate("encoder", 1, 3, 0.0)
    try:
        trace = bert.run(ids)
    finally:
        bert.clear_gates()
    np.testing.assert_allclose(trace.logits, ref, atol=1e-4)


def test_marian_cross_attention_ablation_matches_the_hooked_reference(marian, ref_marian):
    tok = marian.tokenizer
    src = tok.encode("And God said, Let there be light")
    dec = [marian.config.decoder_start_token_id] + tok.encode("And God", special_tokens=False)
    layer = ref_marian.model.decoder.layers[1]
    handles = [_scale_head_input(layer.encoder_attn.out_proj, 1, marian.n_heads, 0.0),
               _scale_head_input(layer.self_attn.out_proj, 2, marian.n_heads, 0.25)]
    try:
        with torch.no_grad():
            out = ref_marian(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]))
    finally:
        for h in handles:
            h.remove()
    marian.set_head_gate("cross", 1, 1, 0.0)
    marian.set_head_gate("self", 1, 2, 0.25)
    try:
        trace = marian.run(dec, source=src)
    finally:
        marian.clear_gates()
    np.testing.assert_allclose(trace.logits, out.logits[0].numpy(), atol=1e-4)


def test_ablation_through_a_session_matches_the_reference_step_by_step(sharp):
    gpt, ref_gpt = sharp
    s = Session(gpt, PROMPT_IDS[:4])
    s.step(9)
    gpt.set_head_gate("self", 1, 3, 0.0)
    try:
        s.step(21)  # the session recomputes with the gate before feeding the next token
        trace = s.trace
    finally:
        gpt.clear_gates()
    handle = _scale_head_input(ref_gpt.transformer.h[1].attn.c_proj, 3, gpt.n_heads, 0.0)
    try:
        with torch.no_grad():
            ref = ref_gpt(torch.tensor([list(trace.token_ids)])).logits[0].numpy()
    finally:
        handle.remove()
    np.testing.assert_allclose(trace.logits, ref, atol=1e-4)


# -- logit lens -------------------------------------------------------------------------------------------


def _block_outputs(blocks, run) -> list[torch.Tensor]:
    """Run the reference with forward hooks that keep each block's output (the residual stream after it)."""
    seen: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda _m, _a, out: seen.append((out[0] if isinstance(out, tuple) else out).detach()))
               for b in blocks]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("position", [3, 8])
def test_logit_lens_reads_each_layer_of_gpt(sharp, position):
    gpt, ref_gpt = sharp
    ids = PROMPT_IDS
    trace = gpt.run(ids)
    resid = _block_outputs(ref_gpt.transformer.h, lambda: ref_gpt(torch.tensor([ids])))
    with torch.no_grad():
        expected = [_softmax(ref_gpt.lm_head(ref_gpt.transformer.ln_f(r[0, position])).numpy()) for r in resid]
    lens = logit_lens(gpt, trace, position, top=5)
    assert lens["probs"].shape == (gpt.n_layers, gpt.config.vocab_size)
    for layer in range(gpt.n_layers):
        np.testing.assert_allclose(lens["probs"][layer], expected[layer], rtol=1e-4, atol=1e-8, err_msg=f"layer {layer}")
        order = np.argsort(-expected[layer])[:5]
        np.testing.assert_array_equal(lens["top_ids"][layer], order)
        np.testing.assert_allclose(lens["top_probs"][layer], expected[layer][order], rtol=1e-4)
    assert np.abs(expected[0] / expected[1] - 1).max() > 0.02  # layer 0 reads differently from the last layer


def test_logit_lens_at_the_edges_of_the_sequence(sharp):
    gpt, ref_gpt = sharp
    ids = PROMPT_IDS
    trace = gpt.run(ids)
    resid = _block_outputs(ref_gpt.transformer.h, lambda: ref_gpt(torch.tensor([ids])))
    with torch.no_grad():
        first = _softmax(ref_gpt.lm_head(ref_gpt.transformer.ln_f(resid[0][0, 0])).numpy())
    lens = logit_lens(gpt, trace, 0)  # position 0 is a position like any other
    np.testing.assert_allclose(lens["probs"][0], first, rtol=1e-4, atol=1e-8)
    assert lens["top_ids"].shape == lens["top_probs"].shape == (gpt.n_layers, 10)  # ten candidates by default
    np.testing.assert_array_equal(logit_lens(gpt, trace, len(ids) - 1, top=3)["top_ids"][-1],
                                  np.argsort(-trace.logits[-1])[:3])
    for bad in (len(ids), -1):
        with pytest.raises(SessionError, match="outside"):
            logit_lens(gpt, trace, bad)


def test_logit_lens_reads_each_layer_of_bert(bert, ref_bert):
    ids = bert.tokenizer.encode("In the [MASK] God created")
    position = ids.index(bert.config.mask_token_id)
    trace = bert.run(ids)
    resid = _block_outputs(ref_bert.bert.encoder.layer, lambda: ref_bert(torch.tensor([ids])))
    with torch.no_grad():
        expected = [_softmax(ref_bert.cls(r[0, position]).numpy()) for r in resid]
    lens = logit_lens(bert, trace, position)
    for layer in range(bert.n_layers):
        np.testing.assert_allclose(lens["probs"][layer], expected[layer], rtol=1e-4, atol=1e-8, err_msg=f"layer {layer}")
    assert np.abs(expected[0] / expected[-1] - 1).max() > 0.02


def test_logit_lens_reads_each_decoder_layer_of_marian(marian, ref_marian):
    tok = marian.tokenizer
    src = tok.encode("And God said")
    dec = [marian.config.decoder_start_token_id] + tok.encode("And God", special_tokens=False)
    trace = marian.run(dec, source=src)
    position = 2
    resid = _block_outputs(ref_marian.model.decoder.layers,
                           lambda: ref_marian(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec])))
    with torch.no_grad():
        expected = [_softmax((ref_marian.lm_head(r[0, position]) + ref_marian.final_logits_bias[0]).numpy()) for r in resid]
    lens = logit_lens(marian, trace, position)
    for layer in range(marian.n_layers):
        np.testing.assert_allclose(lens["probs"][layer], expected[layer], rtol=1e-4, atol=1e-8, err_msg=f"layer {layer}")


# -- rollout ----------------------------------------------------------------------------------------------


def _hand_trace(patterns: list[np.ndarray]) -> Trace:
    """A decoder Trace holding hand-made patterns [heads, n, n] per layer (no model involved)."""
    h, n, _ = patterns[0].shape
    return Trace(family="decoder", model_name="hand", n_layers={"self": len(patterns)}, n_heads=h,
                 token_ids=tuple(range(n)), tokens=tuple("abcdefgh"[:n]), special=(False,) * n, n_prompt=n,
                 blocks={f"decoder.{i}.attn": (PatternBlock(0, p.astype(np.float32)),) for i, p in enumerate(patterns)},
                 logit_rows=None)


def test_rollout_by_hand():
    # layer 0: mean of the heads is [[1,0,0],[1,0,0],[.5,.5,0]]; with the residual: [[1,0,0],[.5,.5,0],[.25,.25,.5]]
    l0 = np.array([[[1, 0, 0], [1, 0, 0], [1, 0, 0]], [[1, 0, 0], [1, 0, 0], [0, 1, 0]]], dtype=float)
    # layer 1: [[1,0,0],[0,1,0],[0,1,0]]; with the residual: [[1,0,0],[0,1,0],[0,.5,.5]]
    l1 = np.array([[[1, 0, 0], [0, 1, 0], [0, 1, 0]]] * 2, dtype=float)
    trace = _hand_trace([l0, l1])
    assert rollout(trace, "self").dtype == np.float32
    np.testing.assert_allclose(rollout(trace, "self", upto=0), [[1, 0, 0], [0.5, 0.5, 0], [0.25, 0.25, 0.5]], atol=1e-7)
    # row 2 of layer 1 mixes rows 1 and 2 of layer 0 half and half: .5·[.5,.5,0] + .5·[.25,.25,.5]
    np.testing.assert_allclose(rollout(trace, "self"), [[1, 0, 0], [0.5, 0.5, 0], [0.375, 0.375, 0.25]], atol=1e-7)


def test_mean_of_heads_and_stat_records_by_hand():
    l0 = np.zeros((3, 2, 2))
    l1 = np.array([[[1, 0], [0.8, 0.2]], [[1, 0], [0.2, 0.8]], [[1, 0], [0.5, 0.5]]])  # 3 heads, 2 queries
    np.testing.assert_allclose(mean_of_heads(_hand_trace([l0, l1]), "self", 1),
                               [[1, 0], [0.5, 0.5]], atol=1e-7)
    stat = HeadStat("self", 2, 3, 1.5, 0.75, 0.25, 0.5, 0.125, 2.0)
    assert stat.as_dict() == {"kind": "self", "layer": 2, "head": 3, "entropy": 1.5, "entropy_norm": 0.75,
                              "prev_token": 0.25, "induction": 0.5, "sink": 0.125, "distance": 2.0}


def test_rollout_renormalises_rows_that_do_not_sum_to_one():
    # stored patterns are rounded (float16 storage: each weight within 5e-4), so rows may miss 1 slightly;
    # exaggerated here so that a missing or wrong-axis renormalisation shows
    rng = np.random.default_rng(5)
    layers = []
    for _ in range(3):
        p = np.tril(rng.random((2, 4, 4)) + 0.1)
        p /= p.sum(-1, keepdims=True)
        p *= rng.uniform(0.9, 1.1, size=(2, 4, 1))  # each row off by up to 10 %
        layers.append(p)
    got = rollout(_hand_trace(layers), "self")
    np.testing.assert_allclose(got, rollout_by_loops(layers), atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)


def test_rollout_refuses_cross_attention_and_missing_stacks(marian, sharp):
    tok = marian.tokenizer
    trace = marian.run([marian.config.decoder_start_token_id] + tok.encode("And God", special_tokens=False),
                       source=tok.encode("And God said"))
    with pytest.raises(CaptureError, match="one stack's self-attention"):
        rollout(trace, "cross")
    assert rollout(trace, "self").shape == (len(trace), len(trace))
    with pytest.raises(CaptureError, match="this model has no 'encoder' attention"):
        rollout(sharp[0].run(PROMPT_IDS), "encoder")
    with pytest.raises(CaptureError, match="this model has no 'encoder' attention"):
        rollout(_hand_trace([np.ones((1, 2, 2)) / 2]), "encoder")  # a kind the trace does not even list


def test_rollout_matches_the_reference_patterns(sharp, bert, ref_bert):
    gpt, ref_gpt = sharp
    ids = PROMPT_IDS[:8]
    with torch.no_grad():
        gpt_atts = [a[0].double().numpy() for a in ref_gpt(torch.tensor([ids]), output_attentions=True).attentions]
    trace = gpt.run(ids)
    for upto in range(gpt.n_layers):
        np.testing.assert_allclose(rollout(trace, "self", upto=upto), rollout_by_loops(gpt_atts[:upto + 1]), atol=1e-5)
    bids = bert.tokenizer.encode("In the beginning God created")
    with torch.no_grad():
        bert_atts = [a[0].double().numpy() for a in ref_bert(torch.tensor([bids]), output_attentions=True).attentions]
    np.testing.assert_allclose(rollout(bert.run(bids), "encoder"), rollout_by_loops(bert_atts), atol=1e-5)


# -- head statistics and induction ---------------------------------------------------------------------------


def _stats_by_loops(p: np.ndarray, causal: bool) -> dict[str, float]:
    """One head's statistics with explicit loops. p [queries, keys]; query i sits at key position i."""
    nq, nk = p.shape
    ent, ent_norm, prev, sink, dist = [], [], [], [], []
    for i in range(nq):
        keys = i + 1 if causal and nq == nk else nk
        e = -sum(float(w) * math.log2(float(w)) for w in p[i] if w > 0)
        if keys > 1:
            ent.append(e)
            ent_norm.append(e / math.log2(keys))
        if 1 <= i < nk:
            prev.append(float(p[i, i - 1]))
        if i >= 1:
            sink.append(float(p[i, 0]))
        dist.append(sum(float(p[i, j]) * abs(i - j) for j in range(nk)))
    return {"entropy": np.mean(ent), "entropy_norm": np.mean(ent_norm), "prev_token": np.mean(prev),
            "sink": np.mean(sink), "distance": np.mean(dist)}


def test_pattern_statistics_per_head_by_hand():
    n = 5
    prev_head = np.zeros((n, n))
    prev_head[0, 0] = 1
    for i in range(1, n):
        prev_head[i, i - 1] = 1
    sink_head = np.zeros((n, n))
    sink_head[:, 0] = 1
    uniform = np.tril(np.ones((n, n)))
    uniform /= uniform.sum(-1, keepdims=True)
    s = pattern_statistics(np.stack([uniform, sink_head, prev_head]))  # head 0 uniform, 1 sink, 2 previous token
    assert s["prev_token"][2] == pytest.approx(1.0) and s["prev_token"][1] == pytest.approx(0.25)
    assert s["sink"][1] == pytest.approx(1.0) and s["sink"][2] == pytest.approx(0.25)
    assert s["entropy"][2] == pytest.approx(0.0) and s["entropy_norm"][0] == pytest.approx(1.0)
    assert s["entropy"][0] == pytest.approx(np.mean([math.log2(k) for k in range(2, n + 1)]))
    assert s["distance"][1] == pytest.approx(sum(range(n)) / n) and s["distance"][2] == pytest.approx((n - 1) / n)


def test_pattern_statistics_in_float64_and_quiet_on_zeros():
    rng = np.random.default_rng(2)
    p = np.tril(rng.random((3, 6, 6)) ** 4)  # zeros above the diagonal and some tiny weights
    p = (p / p.sum(-1, keepdims=True)).astype(np.float16)  # as float16 storage would hold it
    with np.errstate(all="raise"):  # 0 · log 0 and 0 / 0 are handled, not warned about
        got = pattern_statistics(p)
    for head in range(3):
        for name, value in _stats_by_loops(p[head].astype(np.float64), causal=True).items():
            assert got[name][head] == pytest.approx(value, abs=1e-9), (head, name)  # float64 arithmetic


def test_pattern_statistics_of_the_shortest_patterns():
    import warnings

    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")  # no "mean of empty slice": defined values, not NaN
        one = pattern_statistics(np.ones((2, 1, 1)))  # a one-token prompt: no choice anywhere
        cross = np.array([[[0.5, 0.25, 0.25]], [[0.125, 0.75, 0.125]]])  # the first decoder token over 3 source tokens
        first = pattern_statistics(cross, causal=False)
        two = pattern_statistics(np.array([[[1, 0], [0.25, 0.75]], [[1, 0], [0.5, 0.5]]]))
    for name, value in (("entropy", 0), ("entropy_norm", 0), ("prev_token", 0), ("sink", 1), ("distance", 0)):
        np.testing.assert_array_equal(one[name], [value, value], err_msg=name)
    np.testing.assert_allclose(first["sink"], [0.5, 0.125])  # a single query: its own weight on key 0
    np.testing.assert_allclose(first["entropy"], [1.5, -(0.25 * math.log2(0.125) + 0.75 * math.log2(0.75))])
    np.testing.assert_allclose(first["entropy_norm"], first["entropy"] / math.log2(3))
    np.testing.assert_allclose(first["distance"], [0.25 + 0.5, 0.75 + 0.25])
    np.testing.assert_array_equal(first["prev_token"], [0, 0])
    np.testing.assert_allclose(two["sink"], [0.25, 0.5])  # row 0 (one key, no choice) left out
    np.testing.assert_allclose(two["prev_token"], [0.25, 0.5])
    np.testing.assert_allclose(two["entropy"], [-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)), 1.0])


def test_head_statistics_match_loops_on_reference_patterns(sharp, marian, ref_marian):
    gpt, ref_gpt = sharp
    ids = PROMPT_IDS
    with torch.no_grad():
        atts = [a[0].double().numpy() for a in ref_gpt(torch.tensor([ids]), output_attentions=True).attentions]
    induction = np.arange(gpt.n_layers * gpt.n_heads, dtype=float).reshape(gpt.n_layers, gpt.n_heads) / 10
    stats = {(s.kind, s.layer, s.head): s for s in head_statistics(gpt, gpt.run(ids), induction=induction)}
    for layer, head in ((1, 2), (1, 3), (0, 1)):
        got = stats[("self", layer, head)]
        expected = _stats_by_loops(atts[layer][head], causal=True)
        for name, value in expected.items():
            assert getattr(got, name) == pytest.approx(value, abs=1e-5), (layer, head, name)
        assert got.induction == pytest.approx(induction[layer, head])
    # cross-attention and the encoder (not causal) of an encoder-decoder
    tok = marian.tokenizer
    src = tok.encode("And God said, Let there be light")
    dec = [marian.config.decoder_start_token_id] + tok.encode("And God said", special_tokens=False)
    with torch.no_grad():
        out = ref_marian(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), output_attentions=True)
    m_ind = np.full((marian.n_layers, marian.n_heads), 0.5)
    m_stats = {(s.kind, s.layer, s.head): s for s in head_statistics(marian, marian.run(dec, source=src), induction=m_ind)}
    for kind, atts, causal in (("cross", out.cross_attentions, False), ("encoder", out.encoder_attentions, False),
                               ("self", out.decoder_attentions, True)):
        got = m_stats[(kind, 1, 3)]
        for name, value in _stats_by_loops(atts[1][0, 3].double().numpy(), causal).items():
            assert getattr(got, name) == pytest.approx(value, abs=1e-5), (kind, name)
        assert (got.induction == 0.5) if kind == "self" else math.isnan(got.induction)


def test_induction_scores_match_the_reference(sharp):
    gpt, ref_gpt = sharp
    periods = (5, 8)
    scores = induction_scores(gpt, periods=periods, seed=3)
    assert scores.shape == (gpt.n_layers, gpt.n_heads)
    expected = np.zeros((gpt.n_layers, gpt.n_heads))
    for i, period in enumerate(periods):
        ids, offset = repeated_random_ids(gpt, period, 3 + i)
        first = ids[offset:offset + period]
        assert ids[offset + period:] == first and len(set(first)) == period  # prefix + R + R
        assert not set(first) & set(gpt.tokenizer.special_ids)
        with torch.no_grad():
            atts = ref_gpt(torch.tensor([ids]), output_attentions=True).attentions
        for layer in range(gpt.n_layers):
            for head in range(gpt.n_heads):
                p = atts[layer][0, head].double().numpy()
                qs = range(offset + period, len(ids))
                expected[layer, head] += sum(p[q, q - period + 1] for q in qs) / len(qs) / len(periods)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.ptp(expected) > 1e-3  # heads differ, so a score moved to another head would show


def _induction_by_loops(patterns_by_period: list[tuple[list[np.ndarray], int, int]], n_layers: int, n_heads: int) -> np.ndarray:
    """Mean over periods of the mean weight from each second-copy query q to key q - period + 1."""
    out = np.zeros((n_layers, n_heads))
    for patterns, period, offset in patterns_by_period:
        for layer in range(n_layers):
            for head in range(n_heads):
                p, n = patterns[layer][head], patterns[layer].shape[1]
                qs = range(offset + period, n)
                out[layer, head] += sum(float(p[q, q - period + 1]) for q in qs) / len(qs) / len(patterns_by_period)
    return out


def test_repeated_random_ids_for_each_family(sharp, bert, marian):
    gpt = sharp[0]
    for model, prefix in ((gpt, [gpt.config.bos_token_id]), (bert, [2]),  # factories' WordPiece: [CLS] is id 2
                          (marian, [marian.config.decoder_start_token_id])):
        ids, offset = repeated_random_ids(model, 21, seed=4)
        assert offset == len(prefix) == 1 and ids[:1] == prefix, model
        first = ids[1:22]
        assert ids[22:] == first and len(ids) == 43 and len(set(first)) == 21  # R R, no token twice within R
        assert not set(first) & set(model.tokenizer.special_ids)
        assert max(first) < min(model.config.vocab_size, model.tokenizer.vocab_size)
        assert repeated_random_ids(model, 21, seed=4) == (ids, offset)  # seeded
        assert repeated_random_ids(model, 21, seed=5)[0] != ids
    assert bert.tokenizer.decode(repeated_random_ids(bert, 3)[0][:1], skip_special_tokens=False) == "[CLS]"


def test_induction_scores_of_encoders_and_encoder_decoders_by_loops(bert, marian):
    for model, kind in ((bert, "encoder"), (marian, "self")):
        runs = []
        for i, period in enumerate((5, 7)):
            ids, offset = repeated_random_ids(model, period, seed=9 + i)
            trace = model.run(ids, source=ids[offset:offset + period]) if kind == "self" else model.run(ids)
            runs.append(([trace.attention(kind, layer) for layer in range(model.n_layers)], period, offset))
        np.testing.assert_allclose(induction_scores(model, periods=(5, 7), seed=9),
                                   _induction_by_loops(runs, model.n_layers, model.n_heads), atol=1e-6)


def test_induction_periods_are_capped_to_the_context(gpt64):
    # 64 positions: a period of 40 would not fit twice; it becomes (64 - 2) // 2 = 31 (1 + 31 + 31 tokens)
    ids, offset = repeated_random_ids(gpt64, 31, seed=0)
    trace = gpt64.run(ids)
    want = _induction_by_loops([([trace.attention("self", i) for i in range(2)], 31, offset)], 2, gpt64.n_heads)
    np.testing.assert_allclose(induction_scores(gpt64, periods=(40,), seed=0), want, atol=1e-6)


def test_head_statistics_computes_induction_for_every_head(sharp):
    gpt = sharp[0]
    trace = gpt.run(PROMPT_IDS)
    scores = induction_scores(gpt)
    for s in head_statistics(gpt, trace):
        assert s.induction == pytest.approx(scores[s.layer, s.head])


def test_induction_pattern_score_by_hand_with_offset():
    period, offset = 3, 2
    n = offset + 2 * period
    p = np.zeros((2, n, n))
    for q in range(n):
        p[0, q, q] = 1  # head 0: self only
        p[1, q, max(q - period + 1, 0)] = 1  # head 1: the token after the earlier copy
    p[1, offset + period + 1] = 0
    p[1, offset + period + 1, 0] = 1  # one of head 1's three second-copy queries looks elsewhere
    np.testing.assert_allclose(induction_pattern_score(p, period, offset), [0.0, 2 / 3])
    # no prefix (offset 0 by default): R R straight away
    q = np.zeros((1, 2 * period, 2 * period))
    q[0, np.arange(period), np.arange(period)] = 1
    q[0, np.arange(period, 2 * period), np.arange(1, period + 1)] = 1
    q[0, period] = 0
    q[0, period, 0] = 1  # the first query of the second copy looks elsewhere: it counts too
    np.testing.assert_allclose(induction_pattern_score(q, period), [2 / 3])
