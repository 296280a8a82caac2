"""The explanations (engine.explain: inside a head, direct logit attribution, the residual stream, the MLP's neurons,
the logit lens) on the transformers backend, for every architecture it opens: checked against the trace, against
independent computations with head gates, and, on a Llama opened both ways, against the native engine's (already
verified) answers.

Tolerances (float32): patterns within 1e-5 of the trace's; head writes within 1e-5 relative of the difference a
head gate makes; parts summing to the logit within 1e-4 relative; the lens's last layer within 1e-5 of the
model's own probabilities; native vs transformers backend within 1e-4 (two implementations of the same sums).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import CaptureError, load_model
from engine.analysis import logit_lens
from engine.explain import attribute, inside_head, mlp_neurons, nearest_tokens, positions_view, residual_stream
from engine.hf_backend import HFModel
from engine.hf_backend.attention import active
from tests import hf_factories, modern_factories

pytest.importorskip("transformers")

PROMPT = list(range(5, 25))  # 20 tokens: past every sliding window (5)
QUERY = 13
ARCHS = ["llama", "gpt_oss", "qwen3_moe", "mixtral", "olmo3", "gemma3", "deepseek_v3", "modernbert", "qwen3_next",
         "lfm2", "granitemoehybrid", "llama4_text", "falcon_h1"]
# llama4_text: chunked attention, NoPE layers, experts returning (T, d); falcon_h1: Mamba beside attention, scaled
DECODERS = [a for a in ARCHS if a != "modernbert"]
DENSE_MLP = {"falcon_h1": 1, "llama": 1, "olmo3": 0, "gemma3": 1, "deepseek_v3": 0, "lfm2": 2, "modernbert": 1}  # a layer with one
MOE_LAYER = {"llama4_text": 0, "gpt_oss": 0, "qwen3_moe": 1, "mixtral": 0, "deepseek_v3": 1, "qwen3_next": 1, "granitemoehybrid": 0}
HYBRID = {"lfm2": (0, "short convolution"), "qwen3_next": (0, "Gated DeltaNet"), "granitemoehybrid": (0, "Mamba")}

_BUILT: dict = {}


def _model(name: str, tmp_path_factory) -> tuple[HFModel, object]:
    """(the model on the transformers backend, its trace of PROMPT), built once per architecture."""
    if name not in _BUILT:
        build = modern_factories.llama if name == "llama" else hf_factories.ARCHITECTURES[name]
        folder = build(tmp_path_factory.mktemp(name) / "ckpt")
        model = load_model(folder, device="cpu", backend="transformers")
        _BUILT[name] = (model, model.run(PROMPT), folder)
    model, trace, _ = _BUILT[name]
    return model, trace


def _native(tmp_path_factory):
    """The same Llama checkpoint on the native engine (loaded once)."""
    _model("llama", tmp_path_factory)
    if "native" not in _BUILT:
        _BUILT["native"] = load_model(_BUILT["llama"][2], device="cpu")
    return _BUILT["native"]


def _kind(model) -> str:
    return "encoder" if model.family == "encoder" else "self"


def _head_write_by_gate(model: HFModel, trace, layer: int, head: int) -> torch.Tensor:
    """The head's write at every position, independently: the attention module's output with the head's gate
    at 1 minus with it at 0 (the output projection is linear; its bias cancels)."""
    module = next(m for m in model.hf.modules() if model.attention_names.get(id(m)) == f"{model.stack}.{layer}.attn")
    outs = []
    hook = module.register_forward_hook(lambda _m, _a, out: outs.append(out[0] if isinstance(out, tuple) else out))
    ids = torch.tensor([PROMPT])
    kw = {} if model.family == "encoder" else {"use_cache": False}
    try:
        for gate in (1.0, 0.0):
            model.set_head_gate(_kind(model), layer, head, gate)
            with model.guard(), active(model._state(None)):
                model.hf(input_ids=ids, **kw)
    finally:
        hook.remove()
        model.clear_gates()
    return (outs[0] - outs[1])[0]


@pytest.mark.parametrize("name", ARCHS)
def test_inside_head_row_equals_the_trace_and_its_write_the_gate_difference(name, tmp_path_factory):
    model, trace = _model(name, tmp_path_factory)
    layer, head = model.attention_layers[-1], model.n_heads - 1  # the last key/value head under grouped queries
    ih = inside_head(model, trace, _kind(model), layer, head, QUERY)
    row = trace.attention(_kind(model), layer)[head, QUERY]
    np.testing.assert_allclose(ih.pattern, row, atol=1e-5)
    write = _head_write_by_gate(model, trace, layer, head)[QUERY]
    assert ih.output_norm == pytest.approx(float(write.norm()), rel=1e-5, abs=1e-6)
    share = trace.sink_share(_kind(model), layer)
    if share is None:
        assert ih.sink_share is None and ih.pattern.sum() == pytest.approx(1.0, abs=1e-5)
    else:  # gpt-oss: the sink took the rest of the row and, with a zero value, writes nothing
        assert ih.sink_share == pytest.approx(float(share[head, QUERY]), abs=1e-6) and ih.sink_share > 0.01
        assert ih.pattern.sum() == pytest.approx(1.0 - ih.sink_share, abs=1e-5)
        assert ih.weighted_norms.sum() == pytest.approx(float(ih.pattern @ ih.value_norms), rel=1e-5)
    if name != "qwen3_next":  # Qwen3-Next gates each head's output before its projection: the chain stops at v
        assert float(np.linalg.norm(ih.pattern @ (ih.v @ _w_o(model, layer, head)))) == pytest.approx(
            ih.output_norm, rel=1e-4)
    if ih.q_before_rotation is not None:  # where found: rotated, or (a layer without RoPE: Granite 4) the same
        assert ih.q_before_rotation.shape == ih.q.shape
        assert (ih.rotary_dims is None) == np.allclose(ih.q_before_rotation, ih.q)
    else:
        assert "before rotation" in ih.note


def _w_o(model: HFModel, layer: int, head: int) -> np.ndarray:
    """This head's slice of the output projection (hv, d), read independently: the last linear map in the
    attention module (o_proj, out_proj, Wo)."""
    module = next(m for m in model.hf.modules() if model.attention_names.get(id(m)) == f"{model.stack}.{layer}.attn")
    lin = [m for m in module.modules() if isinstance(m, torch.nn.Linear) and m.out_features == model.config.d_model][-1]
    hv = lin.in_features // model.n_heads
    return lin.weight.detach()[:, head * hv : (head + 1) * hv].t().float().numpy()


@pytest.mark.parametrize("name", DECODERS)
def test_attribution_parts_sum_to_the_logit(name, tmp_path_factory):
    model, trace = _model(name, tmp_path_factory)
    a = attribute(model, trace, QUERY)
    assert a.token_id == int(np.argmax(trace.logits[QUERY]))
    assert a.total == pytest.approx(a.logit, rel=1e-4, abs=1e-4)
    assert np.abs(a.heads).max() > 0 and np.abs(a.mlps).max() > 0
    layer, head = model.attention_layers[-1], 1
    write = _head_write_by_gate(model, trace, layer, head)[QUERY]
    assert a.head_write_norms[layer, head] == pytest.approx(float(write.norm()), rel=1e-5, abs=1e-6)
    r = residual_stream(model, trace, QUERY)
    total = r.embeddings_effect + r.attn_effects.sum() + r.mlp_effects.sum() + r.other_effect
    assert total == pytest.approx(r.logit, rel=1e-4, abs=1e-4) and r.logit == pytest.approx(a.logit)
    np.testing.assert_allclose(r.mlp_effects, a.mlps, atol=1e-5)
    if name == "falcon_h1":  # Mamba beside attention in every layer, each scaled by its multiplier: one part each
        assert all(abs(dict(a.parts)[f"L{n}.mamba"]) > 0 for n in range(model.n_layers))
    if name in HYBRID:  # a layer without attention: its whole write is one part, under its layer type
        other, kind = HYBRID[name]
        part = dict(a.parts)[f"L{other}.{kind}"]
        assert (a.heads[other] == 0).all() and r.attn_effects[other] == pytest.approx(part, abs=1e-5)
        with pytest.raises(CaptureError, match="has no attention"):
            inside_head(model, trace, "self", other, 0, QUERY)


@pytest.mark.parametrize("name", ARCHS)
def test_the_logit_lens_ends_at_the_models_own_prediction(name, tmp_path_factory):
    model, trace = _model(name, tmp_path_factory)
    lens = logit_lens(model, trace, QUERY)
    assert lens["probs"].shape == (model.n_layers, trace.logits.shape[1])
    expected = torch.softmax(torch.tensor(trace.logits[QUERY], dtype=torch.float64), -1).numpy()
    np.testing.assert_allclose(lens["probs"][-1], expected, atol=1e-5)
    assert np.abs(lens["probs"][0] - expected).max() > 1e-3, "an early layer should read differently"


@pytest.mark.parametrize("name", sorted(DENSE_MLP))
def test_mlp_neurons_sum_to_the_mlps_part(name, tmp_path_factory):
    model, trace = _model(name, tmp_path_factory)
    layer = DENSE_MLP[name]
    m = mlp_neurons(model, trace, layer, QUERY, k=5)
    assert m.d_ff == m.activations.shape[0] == m.writes.shape[0] and len(m.neurons) == 5
    top = m.neurons[0]
    np.testing.assert_allclose(top.strip[QUERY], top.activation, rtol=1e-6)
    if model.family == "encoder":
        assert m.rank_by == "activation" and np.isnan(m.writes).all()
        assert abs(top.activation) == pytest.approx(np.abs(m.activations).max())
        return
    a = attribute(model, trace, QUERY)
    assert m.mlp_effect == pytest.approx(float(a.mlps[layer]), rel=1e-4, abs=1e-5)
    assert top.write == pytest.approx(float(m.writes.max()))
    assert m.residual is not None and m.residual.mlp_effects[layer] == pytest.approx(m.mlp_effect, abs=1e-5)


@pytest.mark.parametrize("name", sorted(MOE_LAYER))
def test_mlp_neurons_of_experts_are_refused_in_place(name, tmp_path_factory):
    model, trace = _model(name, tmp_path_factory)
    with pytest.raises(CaptureError, match="mixture of experts"):
        mlp_neurons(model, trace, MOE_LAYER[name], QUERY)


def test_llama_explanations_equal_the_native_engines(tmp_path_factory):
    """The strongest check: the native engine's explanations are verified on their own; the transformers
    backend finds the same numbers from transformers' forward with hooks."""
    ours, trace = _model("llama", tmp_path_factory)
    native = _native(tmp_path_factory)
    assert not isinstance(native, HFModel)
    nt = native.run(PROMPT)
    tol = dict(atol=1e-4, rtol=1e-4)
    a, b = inside_head(native, nt, "self", 1, 3, QUERY), inside_head(ours, trace, "self", 1, 3, QUERY)
    for field in ("pattern", "q", "k", "v", "q_before_rotation", "k_before_rotation", "raw", "scores", "value_norms",
                  "weighted_norms", "what_if_unscaled", "what_if_unmasked"):
        np.testing.assert_allclose(getattr(b, field), getattr(a, field), **tol, err_msg=field)
    assert (b.kv_head, b.rotary_dims, b.scale, b.blocked_why) == (a.kv_head, a.rotary_dims, a.scale, a.blocked_why)
    assert b.output_norm == pytest.approx(a.output_norm, rel=1e-4)
    a, b = attribute(native, nt, QUERY), attribute(ours, trace, QUERY)
    assert a.token_id == b.token_id and b.logit == pytest.approx(a.logit, abs=1e-4)
    for field in ("heads", "mlps", "head_write_norms"):
        np.testing.assert_allclose(getattr(b, field), getattr(a, field), **tol, err_msg=field)
    assert dict(b.parts).keys() == dict(a.parts).keys()
    np.testing.assert_allclose(list(dict(b.parts).values()), list(dict(a.parts).values()), **tol)
    a, b = residual_stream(native, nt, QUERY), residual_stream(ours, trace, QUERY)
    for field in ("attn_norms", "attn_effects", "mlp_norms", "mlp_effects", "resid_norms"):
        np.testing.assert_allclose(getattr(b, field), getattr(a, field), **tol, err_msg=field)
    a, b = mlp_neurons(native, nt, 1, QUERY, k=8), mlp_neurons(ours, trace, 1, QUERY, k=8)
    np.testing.assert_allclose(b.activations, a.activations, **tol)
    np.testing.assert_allclose(b.writes, a.writes, **tol)
    assert [n.index for n in b.neurons] == [n.index for n in a.neurons]
    assert [t for t, _, _ in b.neurons[0].pushes_up] == [t for t, _, _ in a.neurons[0].pushes_up]
    np.testing.assert_allclose(logit_lens(ours, trace, QUERY)["probs"], logit_lens(native, nt, QUERY)["probs"], atol=1e-5)
    near_a, near_b = nearest_tokens(native, 40, k=5), nearest_tokens(ours, 40, k=5)
    assert [t[:2] for t in near_b] == [t[:2] for t in near_a]
    np.testing.assert_allclose([t[2] for t in near_b], [t[2] for t in near_a], rtol=1e-5)
    a, b = positions_view(native), positions_view(ours)
    assert a["scheme"] == b["scheme"] == "rotary"
    np.testing.assert_allclose(b["array"], a["array"], rtol=1e-6)  # Llama 3's scaled frequencies, both ways


def test_neuron_gates_act_as_the_native_engines(tmp_path_factory):
    """A neuron gate (MLP ablation) on the transformers backend: the same logits as the native engine with the same
    gate, the neuron silent in Inside the MLP, and gates gone once cleared."""
    ours, _ = _model("llama", tmp_path_factory)
    native = _native(tmp_path_factory)
    for m in (ours, native):
        m.set_neuron_gate(1, 7, 0.0)
        m.set_neuron_gate(1, 9, 0.5)
    try:
        a, b = native.run(PROMPT), ours.run(PROMPT)
        assert ours.neuron_gates() == native.neuron_gates() == {"decoder.1.mlp": {7: 0.0, 9: 0.5}}
        assert b.neuron_gates == a.neuron_gates
        np.testing.assert_allclose(b.logits, a.logits, atol=1e-4)
        m = mlp_neurons(ours, b, 1, QUERY, k=3, include=(7, 9))
        assert m.activations[7] == 0.0 and m.activation_function == "silu"
        np.testing.assert_allclose(m.activations, mlp_neurons(native, a, 1, QUERY, k=3).activations, atol=1e-4)
    finally:
        ours.clear_neuron_gates()
        native.clear_neuron_gates()
    assert ours.neuron_gates() == {}
    np.testing.assert_allclose(ours.run(PROMPT).logits, native.run(PROMPT).logits, atol=1e-4)


def test_head_gates_reach_the_explanations(tmp_path_factory):
    """An ablated head (gate 0) writes nothing, in the chain and in the attribution alike."""
    model, _ = _model("olmo3", tmp_path_factory)
    model.set_head_gate("self", 1, 2, 0.0)
    try:
        trace = model.run(PROMPT)
        a = attribute(model, trace, QUERY)
        assert a.heads[1, 2] == 0.0 and a.total == pytest.approx(a.logit, rel=1e-4)
    finally:
        model.clear_gates()


def test_an_attribution_that_does_not_sum_to_the_logit_is_refused(tmp_path_factory):
    """A trace made under other gates than the model's now (or a head the backend misreads): parts that do not sum
    to the trace's logit are refused with the reason, never shown."""
    model, trace = _model("olmo3", tmp_path_factory)
    model.set_head_gate("self", 1, 0, 0.0)
    try:
        with pytest.raises(CaptureError, match="not the model's logit"):
            attribute(model, trace, QUERY)
    finally:
        model.clear_gates()
    assert attribute(model, trace, QUERY).total == pytest.approx(attribute(model, trace, QUERY).logit, rel=1e-4)
