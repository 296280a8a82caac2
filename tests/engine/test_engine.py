"""Engine behaviour on small random models of every family."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine import (
    CaptureError,
    DeviceError,
    ModelConfig,
    PromptError,
    SamplingError,
    Session,
    SessionError,
    load_model,
)
from engine.modules import LayerInputs, additive_mask
from engine.network import Transformer

SOURCE = "And God said, Let there be light"


def _session(model, **kw) -> Session:
    if model.family == "encoder-decoder":
        return Session(model, None, source=SOURCE, **kw)
    if model.family == "encoder":
        return Session(model, "In the [MASK] God created the [MASK]", **kw)
    return Session(model, "In the beginning", **kw)


def test_patterns_are_probabilities(any_model):
    trace = _session(any_model).trace
    for kind in trace.kinds:
        for layer in range(trace.n_layers[kind]):
            p = trace.attention(kind, layer)
            assert p.shape[0] == any_model.n_heads
            assert np.all(p >= 0)
            np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)


def test_causal_patterns_are_zero_above_the_diagonal(gpt, marian):
    for model in (gpt, marian):
        s = _session(model)
        for _ in range(4):
            s.step()
        p = s.trace.attention("self", 0)
        assert p.shape[1] == p.shape[2] == len(s.trace)
        assert np.all(np.triu(p, k=1) == 0.0)


def test_cross_attention_shape(marian):
    s = _session(marian)
    s.step()
    s.step()
    tr = s.trace
    assert tr.attention("cross", 1).shape == (marian.n_heads, len(tr.token_ids), len(tr.source_ids))
    assert tr.source_tokens is not None and len(tr.source_tokens) == len(tr.source_ids)


def test_single_head_matches_hand_computed_attention():
    torch.manual_seed(0)
    cfg = ModelConfig(family="decoder", vocab_size=50, d_model=8, n_heads=1, d_ff=16, n_decoder_layers=1, max_positions=16)
    net = Transformer(cfg).eval()
    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    rec: dict = {}
    with torch.no_grad():
        net.decode(ids, capture=rec)
        block = net.decoder.layers[0]
        x = net.embed(ids) + net.decoder.positions(torch.arange(6))
        q, k, v = block.attn.qkv(block.attn_norm(x)).split(8, dim=-1)
        scores = q @ k.transpose(-2, -1) / np.sqrt(8) + torch.triu(torch.full((6, 6), float("-inf")), 1)
        expected = torch.softmax(scores, -1)
    torch.testing.assert_close(rec["decoder.0.attn"][0, 0], expected[0], atol=1e-6, rtol=0)
    # and the attention output is pattern @ V through the output projection
    with torch.no_grad():
        out = block.attn(block.attn_norm(x), LayerInputs({None: additive_mask(0, 6, 6, True, None, x.device)}))
        torch.testing.assert_close(out, block.attn.out(expected @ v), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gpt", "marian", "t5"])
def test_kv_cache_steps_equal_full_forward(name, request):
    model = request.getfixturevalue(name)
    s = _session(model)
    for _ in range(6):
        s.step()
    stepped = s.trace
    full = model.run(list(stepped.token_ids), source=list(stepped.source_ids) if stepped.source_ids else None)
    for kind in stepped.kinds:
        for layer in range(stepped.n_layers[kind]):
            np.testing.assert_allclose(stepped.attention(kind, layer), full.attention(kind, layer), atol=1e-5, rtol=0)
    np.testing.assert_allclose(stepped.logits, full.logits, atol=1e-5, rtol=0)


def test_back_then_step_reproduces(any_model):
    s = _session(any_model)
    first = s.step()
    second = s.step()
    before = s.trace
    s.back()
    assert len(s.steps) == 1 and s.ids[: first.position + 1][-1] == first.token_id
    again = s.step()
    assert again.token_id == second.token_id
    after = s.trace
    assert after.token_ids == before.token_ids
    for name in before.capture_names:
        kind = "cross" if "cross" in name else ("encoder" if name.startswith("encoder") else "self")
        layer = int(name.split(".")[1])
        np.testing.assert_allclose(after.attention(kind, layer), before.attention(kind, layer), atol=1e-6)


def test_back_truncates_the_cache_without_recompute(gpt):
    s = _session(gpt)
    s.step()
    s.step()
    n = len(s.ids)
    s.back()
    assert s._cache.length == n - 1 == len(s.ids)


def test_branch_changes_only_the_future(gpt):
    s = _session(gpt)
    for _ in range(3):
        s.step()
    before = s.trace
    alt = int(np.argsort(before.logits[-2])[-2])  # the runner-up at the last step's position
    s.branch(alt)
    after = s.trace
    assert after.token_ids[:-1] == before.token_ids[:-1] and after.token_ids[-1] == alt
    a_old, a_new = before.attention("self", 1), after.attention("self", 1)
    np.testing.assert_array_equal(a_old[:, :-1], a_new[:, :-1])  # the prefix is untouched
    assert after.steps[-1].how == "forced"


def test_seeded_sampling_is_reproducible(gpt):
    def sample(seed):
        s = Session(gpt, "In the beginning", greedy=False, temperature=1.5, seed=seed)
        return [s.step().token_id for _ in range(8)]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_temperature_changes_probabilities_not_logits(gpt):
    s = _session(gpt)
    logits_before = s.trace.logits.copy()
    p1 = s.distribution()
    s.temperature = 0.5
    p2 = s.distribution()
    assert not np.allclose(p1, p2)
    assert p2.max() > p1.max()  # colder is sharper
    np.testing.assert_array_equal(s.trace.logits, logits_before)


def test_distribution_follows_a_changed_head_gate(gpt):
    s = _session(gpt)
    before = s.distribution()
    gpt.set_head_gate("self", 1, 0, 0.0)
    try:
        after = s.distribution()
        assert not np.allclose(before, after)  # the ablated head changed the next-token distribution
        fresh = Session(gpt, s.ids).distribution()
        np.testing.assert_allclose(after, fresh, atol=1e-6)
    finally:
        gpt.set_head_gate("self", 1, 0, 1.0)


def test_top_k_and_top_p_filter(gpt):
    s = Session(gpt, "In the beginning", top_k=5)
    assert np.count_nonzero(s.distribution()) == 5
    s.set_sampling(top_k=None, top_p=0.5)
    p = s.distribution()
    assert np.isclose(p.sum(), 1, atol=1e-5) and np.count_nonzero(p) < p.size


def test_gating_a_head(gpt):
    ids = gpt.tokenizer.encode("In the beginning God")
    base = gpt.run(ids).logits
    gpt.set_head_gate("self", 0, 1, 1.0)
    np.testing.assert_array_equal(gpt.run(ids).logits, base)
    gpt.set_head_gate("self", 0, 1, 0.0)
    try:
        gated = gpt.run(ids)
        assert not np.allclose(gated.logits, base)
        assert gated.gates == {"decoder.0.attn": (1.0, 0.0, 1.0, 1.0)}
    finally:
        gpt.clear_gates()
    np.testing.assert_array_equal(gpt.run(ids).logits, base)


def test_encoder_fill_mask_steps(bert):
    s = Session(bert, "In the [MASK] God created the [MASK]")
    mask = bert.config.mask_token_id
    first = s.ids.index(mask)
    step = s.step()
    assert step.position == first and s.ids[first] == step.token_id != mask
    assert step.token_id == int(np.argmax(step.logits))
    s.step()
    assert s.finished
    with pytest.raises(SessionError, match="MASK"):
        s.step()
    s.back()
    assert not s.finished and s.ids.count(mask) == 1
    s.mask(1)
    assert s.ids[1] == mask and s.steps[-1].how == "masked"


def test_eos_finishes_and_step_after_finished_raises(gpt):
    eos = gpt.config.eos_token_id
    s = _session(gpt)
    s.step(token_id=eos)
    assert s.finished
    with pytest.raises(SessionError, match="end-of-sequence"):
        s.step()
    s.back()
    assert not s.finished


def test_context_full_finishes(gpt):
    s = Session(gpt, [1] * (gpt.max_positions - 2))
    s.step()
    s.step()
    assert s.finished
    with pytest.raises(SessionError, match="context is full"):
        s.step()


# -- bad input --------------------------------------------------------------------------------

def test_empty_prompt_uses_bos_when_there_is_one(gpt):
    s = Session(gpt, "")
    assert s.ids == [gpt.config.bos_token_id]


def test_empty_prompt_without_bos_is_an_error(bert):
    with pytest.raises(PromptError, match="empty"):
        Session(bert, "   ")


def test_over_long_prompt(gpt):
    with pytest.raises(PromptError, match=f"at most {gpt.max_positions}"):
        Session(gpt, [1] * (gpt.max_positions + 1))


def test_ids_outside_vocabulary(gpt):
    with pytest.raises(PromptError, match="outside this model's vocabulary"):
        gpt.run([1, 2, gpt.config.vocab_size])
    s = _session(gpt)
    with pytest.raises(SessionError, match="outside"):
        s.step(token_id=-1)
    with pytest.raises(SessionError, match="outside"):
        s.branch(10**9)


def test_back_past_the_prompt(gpt):
    with pytest.raises(SessionError, match="prompt"):
        _session(gpt).back()


def test_unknown_capture_kind_or_layer(gpt, marian):
    tr = _session(gpt).trace
    with pytest.raises(CaptureError, match="no 'cross'"):
        tr.attention("cross", 0)
    with pytest.raises(CaptureError, match="layers are 0..1"):
        tr.attention("self", 5)
    with pytest.raises(CaptureError):
        tr.attention("bogus", 0)


@pytest.mark.parametrize("kw, match", [
    (dict(greedy=False, temperature=0), "temperature"),
    (dict(greedy=False, temperature=-1), "temperature"),
    (dict(top_p=0.0), "top-p"),
    (dict(top_p=1.5), "top-p"),
    (dict(top_k=0), "top-k"),
])
def test_bad_sampling_settings(gpt, kw, match):
    with pytest.raises(SamplingError, match=match):
        Session(gpt, "In the beginning", **kw)


def test_bad_device(folders):
    with pytest.raises(DeviceError):
        load_model(folders["gpt2"], device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA"):
            load_model(folders["gpt2"], device="cuda")


def test_encoder_decoder_needs_a_source(marian, gpt):
    with pytest.raises(PromptError, match="source"):
        Session(marian, "x")
    with pytest.raises(PromptError, match="no encoder"):
        Session(gpt, "x", source="y")


def test_trace_holds_no_model_and_is_read_only(gpt):
    tr = _session(gpt).trace
    assert not any(isinstance(v, (torch.nn.Module, torch.Tensor)) for v in vars(tr).values())
    with pytest.raises(ValueError):
        tr.logits[0, 0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        tr.tokens = ()


def test_out_of_memory_is_a_clear_error_and_loses_nothing(gpt, monkeypatch):
    from engine import OutOfMemoryError

    s = _session(gpt)
    s.step()
    before = s.trace
    real_forward = gpt.net.decoder.layers[1].forward

    def exploding(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(gpt.net.decoder.layers[1], "forward", exploding)
    with pytest.raises(OutOfMemoryError, match="ran out of memory"):
        s.step()
    monkeypatch.setattr(gpt.net.decoder.layers[1], "forward", real_forward)
    assert s.trace is before and s._cache.length == len(s.ids)  # layer 0 had appended; rolled back
    step = s.step()
    full = gpt.run(s.ids)
    np.testing.assert_allclose(s.trace.logits, full.logits, atol=1e-5)
    assert step.position == len(s.ids) - 1


def test_recorded_data_is_read_only_and_positions_are_checked(gpt):
    s = _session(gpt)
    step = s.step()
    with pytest.raises(ValueError):
        step.logits[0] = 1e9
    row = s.trace.logits_at(2)
    row[0] = 1e9  # a copy: the trace is unchanged
    assert s.trace.logits_at(2)[0] != 1e9
    with pytest.raises(CaptureError, match="outside"):
        s.trace.logits_at(-1)
    with pytest.raises(SessionError, match="outside"):
        s.distribution(-1)


def test_trace_without_capture_says_so(gpt):
    tr = Session(gpt, "In the", capture=False).trace
    with pytest.raises(CaptureError, match="capture=False"):
        tr.attention("self", 0)
    assert tr.logits.shape[0] == len(tr)


def test_gates_changed_mid_session_are_applied_before_the_next_trace(gpt):
    s = _session(gpt)
    s.step()
    plain = s.trace
    gpt.set_head_gate("self", 0, 1, 0.0)
    try:
        gated = s.trace  # recomputed with the gate, and says so
        assert gated.gates == {"decoder.0.attn": (1.0, 0.0, 1.0, 1.0)} and plain.gates == {}
        assert not np.allclose(gated.attention("self", 1), plain.attention("self", 1))
    finally:
        gpt.clear_gates()


@pytest.mark.parametrize("prompt", [5, b"hi", [5.5], [1, "a"]])
def test_prompts_that_are_not_text_or_whole_ids(gpt, prompt):
    with pytest.raises(PromptError, match="whole-number"):
        Session(gpt, prompt)


def test_forced_token_must_be_a_whole_number(gpt):
    with pytest.raises(SessionError, match="whole number"):
        _session(gpt).step(token_id=3.7)
