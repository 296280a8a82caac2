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
    assert all(st.sink_share is None for st in q_stats)


def _reference_without(folder, layer: int, expert: int, factor: float):
    """transformers' eager model with `expert`'s contribution in `layer` scaled by `factor` through its own weights.
    Routers that weight the expert's output (gpt-oss, Qwen3-MoE, Mixtral): the down projection (and its bias)
    multiplied, so the expert's output is factor × what it was. Llama 4 multiplies the expert's *input* by the
    router's score: its gate/up projection multiplied (no biases: the same as an input factor × what it was; at 0 the
    expert's output is 0, as with the down projection zeroed)."""
    import torch

    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    experts = next(m for name, m in ref.named_modules() if name.endswith(f"layers.{layer}.mlp.experts")
                   or name.endswith(f"layers.{layer}.feed_forward.experts"))
    with torch.no_grad():
        if ref.config.model_type.startswith("llama4") and factor != 0:
            experts.gate_up_proj[expert] *= factor
        else:
            experts.down_proj[expert] *= factor
        bias = getattr(experts, "down_proj_bias", None)
        if bias is not None:
            bias[expert] *= factor
    return ref


@pytest.mark.parametrize(("name", "factor"), [("gpt_oss", 0.0), ("qwen3_moe", 0.0), ("qwen3_moe", 0.5),
                                              ("mixtral", 0.0), ("llama4_text", 0.0), ("llama4_text", 0.5)])
def test_an_expert_gate_equals_scaling_that_experts_weights_in_transformers(name, factor, tmp_path_factory):
    import torch

    model, folder = _model(name, tmp_path_factory)
    layer = model.moe_layers[-1]
    session = Session(model, PROMPT)
    before = session.trace.logits.copy()
    expert = int(np.bincount(session.trace.routing(layer).experts.ravel()).argmax())  # the busiest expert
    try:
        model.set_expert_gate(layer, expert, factor)
        session.step()  # the session sees the new gate and recomputes before it steps
        trace = session.trace
        assert trace.expert_gates == {layer: {expert: factor}}
        ids = session.ids
        with torch.no_grad():
            theirs = _reference_without(folder, layer, expert, factor)(torch.tensor([ids])).logits[0].numpy()
        assert np.abs(trace.logits - theirs).max() <= 1e-4
        assert np.abs(trace.logits[: len(PROMPT)] - before).max() > 1e-3, "the expert mattered"
        r = trace.routing(layer)
        chosen = r.experts == expert
        assert chosen.any() and (factor != 0 or np.all(r.weights[chosen] == 0))
    finally:
        model.set_expert_gate(layer, expert, 1.0)
    assert model.expert_gates() == {}
    np.testing.assert_allclose(Session(model, PROMPT).trace.logits, before, atol=1e-5)  # restored


def test_expert_gates_refuse_what_does_not_exist(tmp_path_factory):
    from engine import CaptureError

    model, _ = _model("qwen3_moe", tmp_path_factory)
    with pytest.raises(CaptureError, match="experts are 0"):
        model.set_expert_gate(model.moe_layers[0], 99, 0.0)
    with pytest.raises(CaptureError, match="has no experts"):
        model.set_expert_gate(99, 0, 0.0)


def test_a_session_file_keeps_the_expert_gates(tmp_path_factory, tmp_path):
    from engine.session_file import load_session, save_session

    model, _ = _model("qwen3_moe", tmp_path_factory)
    layer = model.moe_layers[0]
    try:
        model.set_expert_gate(layer, 1, 0.0)
        session = Session(model, PROMPT)
        session.step()
        path = save_session(session, tmp_path / "s.json")
        model.clear_expert_gates()
        restored, _view = load_session(path, loader=lambda _folder: model)
        assert model.expert_gates() == {layer: {1: 0.0}} == restored.trace.expert_gates
        np.testing.assert_allclose(restored.trace.logits, session.trace.logits, atol=1e-6)
    finally:
        model.clear_expert_gates()
