"""Every Trace answer over the wire equals the in-process one: the server runs the same engine and the
client mirrors the trace's blocks, so patterns, tiles, overviews and rows are compared exactly; logits,
explanations and analyses are computed by the server's model and compared exactly too (same code, same
weights, same CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Session, load_model
from engine.local import LocalEngine
from engine.trace import capture_name


@pytest.fixture(autouse=True)
def same_threads(eng):
    """CPU float results depend on torch's thread count (the order of reductions): compare like with like
    (a GUI test in this process may have changed it, see engine.device.share_cpu_with_ui)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(eng.info["torch_threads"])
    yield
    torch.set_num_threads(before)


PROMPTS = {"tiny-gpt": "In the beginning God created", "tiny-llama": "In the beginning God created the heaven",
           "tiny-bert": "In the [MASK] God created the [MASK]", "tiny-seq2seq": "the earth was without form"}


def _drive(eng, model, name: str):
    """The same session both ways: steps, back, a branch, a sampling change (prompts per family)."""
    if model.family == "encoder-decoder":
        s = eng.Session(model, None, source=PROMPTS[name])
    else:
        s = eng.Session(model, PROMPTS[name])
    if model.family == "encoder":
        s.step()
        s.mask(2)
        s.step()
        return s
    s.step()
    s.step()
    s.back()
    s.branch(7)
    s.set_sampling(temperature=0.7, greedy=False, seed=3)
    s.step()
    return s


def assert_same_trace(remote, local) -> None:
    assert remote.tokens == local.tokens and remote.token_ids == local.token_ids
    assert remote.special == local.special and remote.n_prompt == local.n_prompt
    assert remote.steps == local.steps
    assert remote.source_tokens == local.source_tokens
    assert remote.gates == local.gates
    assert remote.neuron_gates == local.neuron_gates
    assert remote.capture_names == local.capture_names
    for kind in local.kinds:
        for layer in range(local.n_layers[kind]):
            if capture_name(kind, layer) in local.no_attention:  # a hybrid's convolution / Mamba layer
                continue
            np.testing.assert_array_equal(remote.attention(kind, layer), local.attention(kind, layer))
            shape = local.attention_shape(kind, layer)
            assert remote.attention_shape(kind, layer) == shape
            q1, k1 = shape[1], shape[2]
            np.testing.assert_array_equal(remote.attention_tile(kind, layer, 1, 1, q1, 0, k1 - 1),
                                          local.attention_tile(kind, layer, 1, 1, q1, 0, k1 - 1))
            np.testing.assert_array_equal(remote.attention_overview(kind, layer, rows=3, cols=5, reduce="mean"),
                                          local.attention_overview(kind, layer, rows=3, cols=5, reduce="mean"))
            np.testing.assert_array_equal(remote.attention_row(kind, layer, q1 - 1), local.attention_row(kind, layer, q1 - 1))
            rb, lb = remote.pattern_blocks(kind, layer), local.pattern_blocks(kind, layer)
            assert [b.q_start for b in rb] == [b.q_start for b in lb]
    if local.logits is None:
        assert remote.logits is None
    else:
        np.testing.assert_array_equal(remote.logits_at(len(local) - 1), local.logits_at(len(local) - 1))
        np.testing.assert_array_equal(remote.logits, local.logits)


@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-llama", "tiny-bert", "tiny-seq2seq"])
def test_session_trace_matches_in_process(eng, name):
    rm = eng.load_model(name, device="cpu")
    lm = load_model(name, device="cpu")
    rs, ls = _drive(eng, rm, name), _drive(LocalEngine(), lm, name)
    assert rs.history == ls.history and rs.ids == ls.ids and rs.finished == ls.finished
    assert_same_trace(rs.trace, ls.trace)
    np.testing.assert_array_equal(rs.distribution(), ls.distribution())
    assert rs.reply == ls.reply


def test_step_answers_match_and_bring_top_candidates(eng):
    rm, lm = eng.load_model("tiny-gpt"), load_model("tiny-gpt", device="cpu")
    rs, ls = eng.Session(rm, "In the beginning"), Session(lm, "In the beginning")
    for _ in range(3):
        r, loc = rs.step(), ls.step()
        assert (r.position, r.token_id, r.token, r.how) == (loc.position, loc.token_id, loc.token, loc.how)
        np.testing.assert_array_equal(r.logits, loc.logits)
        np.testing.assert_array_equal(r.probs, loc.probs)
        assert r.prob == loc.prob
    rs.step(), ls.step()
    top_ids, top_logits = rs.steps and rs.trace.logit_rows[-2].top
    order = np.argsort(-ls.trace.logits_at(len(ls.ids) - 2), kind="stable")[: len(top_ids)]
    np.testing.assert_array_equal(top_ids, order)


def test_explanations_and_analyses_match(eng):
    rm, lm = eng.load_model("tiny-llama"), load_model("tiny-llama", device="cpu")
    rs, ls = eng.Session(rm, PROMPTS["tiny-llama"]), Session(lm, PROMPTS["tiny-llama"])
    rs.step(), ls.step()
    rt, lt = rs.trace, ls.trace
    local = LocalEngine()
    lens_r, lens_l = eng.logit_lens(rm, rt, 3, top=4), local.logit_lens(lm, lt, 3, top=4)
    for key in ("probs", "top_ids", "top_probs"):
        np.testing.assert_array_equal(lens_r[key], lens_l[key])
    ind_r, ind_l = eng.induction_scores(rm), local.induction_scores(lm)
    np.testing.assert_array_equal(ind_r, ind_l)
    assert eng.head_statistics(rm, rt, ind_r) == local.head_statistics(lm, lt, ind_l)
    inside_r, inside_l = eng.inside_head(rm, rt, "self", 1, 2, 4), local.inside_head(lm, lt, "self", 1, 2, 4)
    for f in ("q", "k", "v", "scores", "pattern", "weighted_norms"):
        np.testing.assert_array_equal(getattr(inside_r, f), getattr(inside_l, f))
    assert inside_r.blocked_why == inside_l.blocked_why
    att_r, att_l = eng.attribute(rm, rt, 3), local.attribute(lm, lt, 3)
    assert att_r.parts == att_l.parts and att_r.token_id == att_l.token_id
    np.testing.assert_array_equal(att_r.heads, att_l.heads)
    assert eng.nearest_tokens(rm, 40, 5) == local.nearest_tokens(lm, 40, 5)
    pos_r, pos_l = eng.positions_view(rm), local.positions_view(lm)
    assert sorted(pos_r) == sorted(pos_l)


def test_head_gates_recompute_on_the_server(eng):
    rm, lm = eng.load_model("tiny-gpt"), load_model("tiny-gpt", device="cpu")
    rs, ls = eng.Session(rm, "In the beginning"), Session(lm, "In the beginning")
    rs.step(), ls.step()
    rm.set_head_gate("self", 0, 1, 0.0)
    lm.set_head_gate("self", 0, 1, 0.0)
    assert rm.gates() == lm.gates()
    assert_same_trace(rs.trace, ls.trace)
    assert rs.trace.gates == {"decoder.0.attn": ls.trace.gates["decoder.0.attn"]}


def test_rebuild_mode_long_prompt(eng):
    """A longer prompt with patterns rebuilt from q, k and lse on both sides (Gemma 2: soft-cap, window, GQA),
    from a --models-dir folder."""
    folder = str(eng.model_folders()[0])
    rm = eng.load_model(folder, capture_mode="rebuild")
    lm = load_model(folder, device="cpu")
    lm.capture_mode = "rebuild"
    prompt = "In the beginning God created the heaven and the earth. " * 2
    rs, ls = eng.Session(rm, prompt), Session(lm, prompt)
    for _ in range(3):
        rs.step(), ls.step()
    rs.back(), ls.back()
    rs.step(5), ls.step(5)
    rt, lt = rs.trace, ls.trace
    assert rm.rebuilds_patterns and not hasattr(rt.blocks["decoder.0.attn"][0], "rows")
    assert_same_trace(rt, lt)
    n = len(lt)
    np.testing.assert_array_equal(rt.attention_overview("self", 2, heads=[0, 3], rows=7, cols=9, q_range=(5, n)),
                                  lt.attention_overview("self", 2, heads=[0, 3], rows=7, cols=9, q_range=(5, n)))
    np.testing.assert_array_equal(rt.attention_tiles("self", 1, 10, n, 3, n), lt.attention_tiles("self", 1, 10, n, 3, n))
    assert eng.head_statistics(rm, rt, np.zeros((3, 4))) == LocalEngine().head_statistics(lm, lt, np.zeros((3, 4)))


def test_one_off_run_matches(eng):
    rm, lm = eng.load_model("tiny-seq2seq"), load_model("tiny-seq2seq", device="cpu")
    assert_same_trace(rm.run("the earth", source="In the beginning"), lm.run("the earth", source="In the beginning"))


def test_model_description_and_listings(eng):
    rm, lm = eng.load_model("tiny-llama"), load_model("tiny-llama", device="cpu")
    assert (rm.name, rm.family, rm.n_heads, rm.layers_by_kind, rm.n_params, rm.max_positions) == \
        (lm.name, lm.family, lm.n_heads, lm.layers_by_kind, lm.n_params, lm.max_positions)
    assert rm.tokenizer.encode("In the beginning") == lm.tokenizer.encode("In the beginning")
    assert [rm.tokenizer.display(i) for i in range(50)] == [lm.tokenizer.display(i) for i in range(50)]
    assert rm.tokenizer.decode([40, 41, 42]) == lm.tokenizer.decode([40, 41, 42])
    assert "tiny-gpt" in eng.bundled_models()
    assert "cpu" in eng.available_devices()
    assert eng.where().startswith(eng.info["host"])


def test_bytes_per_step_do_not_grow_with_the_context_when_patterns_are_rebuilt(eng):
    """Only the new token's blocks cross: a step after a 600-token prompt costs what one after 20 tokens does
    (give or take the digits of larger positions)."""
    model = eng.load_model("tiny-llama", capture_mode="rebuild")
    eng.prefetch_logits = False
    try:
        costs = []
        for n in (20, 600):
            session = eng.Session(model, list(range(10, 10 + n)))
            session.step()
            before = eng.conn.bytes_sent + eng.conn.bytes_received
            session.step()
            costs.append(eng.conn.bytes_sent + eng.conn.bytes_received - before)
        assert abs(costs[1] - costs[0]) < 300, costs
        assert costs[0] < 4 * 4096, costs  # less than a vocabulary-wide logits row (4096 floats) per layer
    finally:
        eng.prefetch_logits = True


def test_a_session_file_is_written_here_and_restored_on_the_server(eng, tmp_path):
    from engine.session_file import read_session_file, save_session

    model = eng.load_model("tiny-gpt")
    model.set_head_gate("self", 0, 2, 0.5)
    session = eng.Session(model, "In the beginning", temperature=0.9, greedy=False, seed=2)
    session.step(), session.step(), session.back(), session.step(11)
    path = save_session(session, tmp_path / "s.aisession", view={"layer": 1})
    model.clear_gates()
    restored = eng.restore_session(read_session_file(path), model)
    assert restored.history == session.history and restored.settings == session.settings
    gates = model.gates()
    assert set(gates) == {"decoder.0.attn"} and gates["decoder.0.attn"][2] == 0.5 and sum(gates["decoder.0.attn"]) == \
        len(gates["decoder.0.attn"]) - 0.5
    assert_same_trace(restored.trace, session.trace)
