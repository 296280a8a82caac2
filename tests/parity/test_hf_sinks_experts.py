"""Attention sinks in head statistics (each head's mean sink share, = the mean of 1 − its row sums) and expert
ablation on the transformers backend (`set_expert_gate`: the expert's output scaled as if the router had weighted it
by that factor), checked against transformers' own model with the expert's down projection zeroed or scaled."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Session, load_model
from tests import hf_factories

transformers = pytest.importorskip("transformers")

PROMPT = list(range(5, 25))
_BUILT: dict = {}


def _model(name: str, tmp_path_factory):
    if name not in _BUILT:
        folder = hf_factories.ARCHITECTURES[name](tmp_path_factory.mktemp(name) / "ckpt")
        _BUILT[name] = (load_model(folder, device="cpu"), folder)
    return _BUILT[name]


def test_head_statistics_give_gpt_oss_heads_their_mean_sink_share(tmp_path_factory):
    from engine.analysis import head_statistics

    model, _ = _model("gpt_oss", tmp_path_factory)
    trace = Session(model, PROMPT).trace
    stats = head_statistics(model, trace, induction=np.zeros((trace.n_layers["self"], model.n_heads)))
    assert stats
    for st in stats:
        rows = trace.attention(st.kind, st.layer)[st.head].sum(-1)
        assert st.sink_share == pytest.approx(float((1.0 - rows).mean()), abs=1e-5)
    qwen, _ = _model("qwen3_moe", tmp_path_factory)
    q_stats = head_statistics(qwen, qwen.run(PROMPT), induction=np.zeros((8, qwen.n_heads)))
    assert all(np.isnan(st.sink_share) for st in q_stats)
