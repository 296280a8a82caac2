"""Head statistics on patterns with known answers; rollout, logit lens, export round trip, command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import Session
from engine.analysis import (
    head_statistics,
    induction_pattern_score,
    logit_lens,
    pattern_statistics,
    rollout,
)
from engine.export import save_npz

ROOT = Path(__file__).resolve().parents[2]


def _previous_token_head(n: int) -> np.ndarray:
    p = np.zeros((1, n, n))
    p[0, 0, 0] = 1
    for i in range(1, n):
        p[0, i, i - 1] = 1
    return p


def test_pure_previous_token_head_scores_one():
    s = pattern_statistics(_previous_token_head(8))
    assert s["prev_token"][0] == pytest.approx(1.0)
    assert s["entropy"][0] == pytest.approx(0.0)
    assert s["distance"][0] == pytest.approx(7 / 8)


def test_uniform_head_has_maximal_entropy():
    n = 6
    p = np.tril(np.ones((n, n)))
    p = (p / p.sum(-1, keepdims=True))[None]
    s = pattern_statistics(p)
    assert s["entropy_norm"][0] == pytest.approx(1.0)
    full = np.full((1, n, n), 1 / n)
    assert pattern_statistics(full, causal=False)["entropy"][0] == pytest.approx(np.log2(n))


def test_sink_head():
    p = np.zeros((1, 5, 5))
    p[0, :, 0] = 1
    assert pattern_statistics(p)["sink"][0] == pytest.approx(1.0)


def test_perfect_induction_pattern_scores_one():
    period, n = 4, 9  # one prefix token, then R R
    p = np.zeros((1, n, n))
    for i in range(n):
        p[0, i, i] = 1
    for i in range(1 + period, n):
        p[0, i, i] = 0
        p[0, i, i - period + 1] = 1
    assert induction_pattern_score(p, period, offset=1)[0] == pytest.approx(1.0)


def test_head_statistics_cover_every_head(gpt, marian):
    for model in (gpt, marian):
        trace = model.run([1, 2, 3, 4, 5]) if model.family == "decoder" else model.run([0, 5, 6], source=[7, 8, 9, 1])
        stats = head_statistics(model, trace)
        expected = sum(trace.n_layers[k] for k in trace.kinds) * trace.n_heads
        assert len(stats) == expected
        assert all(0 <= s.prev_token <= 1 and 0 <= s.sink <= 1 for s in stats)


def test_rollout_rows_are_distributions(gpt, bert):
    for model, kind in ((gpt, "self"), (bert, "encoder")):
        r = rollout(model.run("In the beginning God created"), kind)
        np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-5)
        assert np.all(r >= 0)


def test_logit_lens_last_layer_equals_model_logits(gpt, bert, marian):
    for model, trace in ((gpt, Session(gpt, "In the beginning").trace), (bert, bert.run("In the [MASK] God")),
                         (marian, Session(marian, None, source="And God said").trace)):
        pos = len(trace) - 1
        lens = logit_lens(model, trace, pos)
        assert lens["probs"].shape == (model.n_layers, model.config.vocab_size)
        z = trace.logits[pos].astype(np.float64)
        expected = np.exp(z - z.max())
        expected /= expected.sum()
        np.testing.assert_allclose(lens["probs"][-1], expected, atol=1e-5)
        assert lens["top_ids"][-1, 0] == int(np.argmax(z))


def test_export_round_trip(marian, tmp_path):
    s = Session(marian, None, source="And God said")
    s.step()
    s.step()
    trace = s.trace
    path = save_npz(trace, tmp_path / "t.npz")
    with np.load(path) as data:
        for name in trace.capture_names:
            kind = "cross" if name.endswith("cross_attn") else ("encoder" if name.startswith("encoder") else "self")
            np.testing.assert_array_equal(data[name], trace.attention(kind, int(name.split(".")[1])))
        np.testing.assert_array_equal(data["logits"], trace.logits)
        assert list(data["tokens"]) == list(trace.tokens)
        assert json.loads(str(data["summary_json"]))["family"] == "encoder-decoder"


def test_command_line_export_and_heads(folders, tmp_path):
    out = tmp_path / "gpt.npz"
    cmd = [sys.executable, str(ROOT / "main.py"), "export", "--model", str(folders["gpt2"]), "--prompt", "In the",
           "--steps", "3", "--device", "cpu", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True)
    with np.load(out) as data:
        assert data["decoder.1.attn"].shape[1] == data["tokens"].shape[0] == data["logits"].shape[0]
    res = subprocess.run([sys.executable, str(ROOT / "main.py"), "heads", "--model", str(folders["gpt2"]), "--json",
                          "--device", "cpu"], check=True, cwd=tmp_path, capture_output=True, text=True)
    rows = json.loads(res.stdout)
    assert len(rows) == 8 and {"layer", "head", "entropy", "prev_token", "induction", "sink"} <= set(rows[0])
    bad = subprocess.run([sys.executable, str(ROOT / "main.py"), "export", "--model", str(tmp_path / "missing"),
                          "--out", str(tmp_path / "x.npz")], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "no model called" in bad.stderr


def test_session_saved_and_reopened_gives_identical_traces(folders, tmp_path):
    from engine import load_model
    from engine.session_file import load_session, save_session

    for name, prompt, source in (("gpt2", "In the", None), ("marian", None, "And God said"), ("bert", "In the [MASK] God", None)):
        model = load_model(folders[name], device="cpu")
        s = Session(model, prompt, source=source, greedy=False, temperature=1.3, seed=3)
        model.set_head_gate(model.kinds[-1], 0, 1, 0.0)
        s.recompute()  # the prompt's patterns now reflect the ablation too
        if model.family == "encoder":
            s.step()
            s.mask(2)
            s.step(token_id=7)
        else:
            s.step()
            s.step()
            s.branch(5)
            s.set_sampling(greedy=True)
            s.step()
        path = save_session(s, tmp_path / f"{name}.json", view={"layer": 1})
        before = s.trace
        model.clear_gates()
        again, view = load_session(path, loader=lambda ref: load_model(ref, device="cpu"))
        after = again.trace
        assert view == {"layer": 1}
        assert after.token_ids == before.token_ids and after.steps == before.steps and after.gates == before.gates
        for n in before.capture_names:
            kind = "cross" if n.endswith("cross_attn") else ("encoder" if n.startswith("encoder") else "self")
            np.testing.assert_array_equal(after.attention(kind, int(n.split(".")[1])), before.attention(kind, int(n.split(".")[1])))
        np.testing.assert_allclose(after.logits, before.logits, atol=1e-6)
        model.clear_gates()


def test_recompute_after_ablation_keeps_tokens_and_changes_patterns(gpt):
    s = Session(gpt, "In the beginning")
    s.step()
    s.step()
    before = s.trace
    gpt.set_head_gate("self", 0, 0, 0.0)
    try:
        s.recompute()
        after = s.trace
        assert after.token_ids == before.token_ids and [x.how for x in after.steps] == ["greedy", "greedy"]
        assert not np.allclose(after.attention("self", 1), before.attention("self", 1))
        assert not np.allclose(after.logits, before.logits)
        s.step()  # the session keeps working
    finally:
        gpt.clear_gates()


def test_recompute_replays_only_the_steps_still_standing(gpt, monkeypatch):
    from engine.session import live_events

    s = Session(gpt, "In the beginning")
    for _ in range(3):
        s.step()
    for _ in range(3):
        s.back()
    s.step()
    s.step(5)
    history = list(s.history)
    assert live_events(history) == history[-2:]
    before = s.trace
    fed = []
    original = Session._feed
    monkeypatch.setattr(Session, "_feed", lambda self, *a: (fed.append(a), original(self, *a))[1])
    s.recompute()
    assert len(fed) == 2  # not the three undone steps
    assert s.history == history  # the record of every branch is kept (session files save it)
    assert s.trace.token_ids == before.token_ids
    np.testing.assert_allclose(s.trace.attention("self", 1), before.attention("self", 1), atol=1e-6)


def test_damaged_session_files_give_clear_errors(tmp_path):
    from engine.session_file import SessionFileError, read_session_file

    p = tmp_path / "s.json"
    p.write_text('{"format": "attention-inspector-session", "version": 1, "mod')
    with pytest.raises(SessionFileError, match="damaged"):
        read_session_file(p)
    p.write_text('{"format": "attention-inspector-session", "version": 99}')
    with pytest.raises(SessionFileError, match="version 99"):
        read_session_file(p)
    p.write_text('{"hello": 1}')
    with pytest.raises(SessionFileError, match="not an Attention Inspector session"):
        read_session_file(p)
