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
