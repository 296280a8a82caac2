"""engine.explain.mlp_neurons and the neuron gates against transformers with forward hooks: the activations
(what the MLP's output projection reads) of a layer other than 0 at every position, gated and plain MLPs of
every family; zeroing a neuron with Model.set_neuron_gate gives the logits of a reference forward whose hook
zeroes that neuron. Tolerances: activations 1e-4 (absolute, float32), logits 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import Session, load_model
from engine.explain import attribute, mlp_neurons
from tests import factories, modern_factories

transformers = pytest.importorskip("transformers")

ACT_TOL, LOGIT_TOL = 1e-4, 1e-4
SOURCE = "And God said, Let there be light: and there was light."
# name -> (reference class, the module whose input is layer i's neuron activations)
CASES = {
    "gpt2": ("GPT2LMHeadModel", lambda m, i: m.transformer.h[i].mlp.c_proj),
    "llama": ("LlamaForCausalLM", lambda m, i: m.model.layers[i].mlp.down_proj),
    "gemma2": ("Gemma2ForCausalLM", lambda m, i: m.model.layers[i].mlp.down_proj),
    "t5-v1.1": ("T5ForConditionalGeneration", lambda m, i: m.decoder.block[i].layer[2].DenseReluDense.wo),
    "bart": ("BartForConditionalGeneration", lambda m, i: m.model.decoder.layers[i].fc2),
    "bert": ("BertForMaskedLM", lambda m, i: m.bert.encoder.layer[i].output.dense),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    name = request.param
    build = factories.ARCHITECTURES.get(name) or modern_factories.ARCHITECTURES[name]
    folder = build(tmp_path_factory.mktemp(name) / "ckpt")
    ref = getattr(transformers, CASES[name][0]).from_pretrained(folder, attn_implementation="eager").eval()
    model = load_model(folder, device="cpu")
    tok = model.tokenizer
    if model.family == "encoder":
        session = Session(model, tok.encode(SOURCE))
    elif model.family == "encoder-decoder":
        session = Session(model, None, source=tok.encode(SOURCE))
        for _ in range(5):
            session.step()
    else:
        session = Session(model, list(range(5, 19)))
        session.step()
    return name, model, ref, session.trace


def _reference(ref, trace, hook_module, hook=None):  # noqa: ANN001, ANN202
    """The reference forward over the trace's tokens -> (the hooked module's input (T, d_ff), logits (T, vocab))."""
    seen = {}

    def pre(_m, args):  # noqa: ANN001, ANN202
        seen["acts"] = args[0].detach().clone()
        if hook is not None:
            return (hook(args[0]),)
        return None

    handle = hook_module.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            ids = torch.tensor([list(trace.token_ids)])
            if trace.family == "encoder-decoder":
                out = ref(input_ids=torch.tensor([list(trace.source_ids)]), decoder_input_ids=ids)
            else:
                out = ref(input_ids=ids)
    finally:
        handle.remove()
    return seen["acts"][0].numpy(), out.logits[0].numpy()


def test_activations_match_a_hook_on_the_reference_mlp(case):
    name, model, ref, trace = case
    layer = model.n_layers - 1
    assert layer > 0
    position = len(trace) - 2
    want, _ = _reference(ref, trace, CASES[name][1](ref, layer))
    got = mlp_neurons(model, trace, layer, position, k=6, rank_by="activation")
    assert got.gated == (name in ("llama", "gemma2", "t5-v1.1"))
    np.testing.assert_allclose(got.activations, want[position], atol=ACT_TOL, err_msg=f"{name} activations")
    for n in got.neurons:  # the strip is that neuron's activation at every position
        np.testing.assert_allclose(n.strip, want[:, n.index], atol=ACT_TOL, err_msg=f"{name} neuron {n.index} strip")
    ranked = [abs(n.activation) for n in got.neurons]
    assert ranked == sorted(ranked, reverse=True) and ranked[0] == pytest.approx(np.abs(want[position]).max(), abs=ACT_TOL)


def test_writes_sum_with_the_rest_of_the_attribution_to_the_logit(case):
    name, model, ref, trace = case
    if model.family == "encoder":
        got = mlp_neurons(model, trace, 1, 2)
        assert got.rank_by == "activation" and got.residual is None and np.isnan(got.writes).all()
        return
    layer, position = model.n_layers - 1, len(trace) - 2
    token = int(trace.token_ids[position + 1])
    got = mlp_neurons(model, trace, layer, position, token_id=token, k=8)
    a = attribute(model, trace, position, token)
    assert got.mlp_effect == pytest.approx(float(a.mlps[layer]), rel=1e-4, abs=1e-4), name
    assert got.neurons_effect + got.bias_effect == pytest.approx(got.mlp_effect, abs=1e-6)
    writes = [n.write for n in got.neurons]
    assert writes == sorted(writes, reverse=True) and writes[0] == pytest.approx(got.writes.max())
    r = got.residual
    total = r.embeddings_effect + r.attn_effects.sum() + r.mlp_effects.sum() + r.other_effect
    total += r.cross_effects.sum() if r.cross_effects is not None else 0
    assert total == pytest.approx(a.logit, rel=1e-4, abs=1e-3), name
    np.testing.assert_allclose(r.mlp_effects, a.mlps, rtol=1e-4, atol=1e-4)
    heads_and_biases = float(a.heads.sum()) + dict(a.parts).get("attention output biases", 0.0)
    attention = float(r.attn_effects.sum())
    if a.cross_heads is not None:
        heads_and_biases += float(a.cross_heads.sum())
        attention += float(r.cross_effects.sum())
    assert attention == pytest.approx(heads_and_biases, abs=1e-3), name
    for n in got.neurons[:3]:  # what a neuron pushes: its write through the unembedding, toward the token too
        assert n.pushes_up[0][2] >= n.pushes_up[-1][2] and n.pushes_down[0][2] <= n.pushes_down[-1][2]
        assert n.pushes_up[0][2] >= n.write - 1e-4  # the candidate's change is among the changes it makes


def test_a_zeroed_neuron_matches_a_reference_forward_that_zeroes_it(case):
    name, model, ref, trace = case
    layer = model.n_layers - 1
    top = mlp_neurons(model, trace, layer, len(trace) - 2, k=2, rank_by="activation").neurons
    neurons = [n.index for n in top]

    def zero(x):  # noqa: ANN001, ANN202
        x = x.clone()
        x[..., neurons] = 0
        return x

    _, want = _reference(ref, trace, CASES[name][1](ref, layer), zero)
    _, plain = _reference(ref, trace, CASES[name][1](ref, layer))
    try:
        for j in neurons:
            model.set_neuron_gate(layer, j, 0.0)
        assert model.neuron_gates() == {f"{model.main_stack}.{layer}.mlp": dict.fromkeys(neurons, 0.0)}
        if model.family == "encoder":
            got = model.run(list(trace.token_ids)).logits
        elif model.family == "encoder-decoder":
            got = model.run(list(trace.token_ids), source=list(trace.source_ids)).logits
        else:
            got = model.run(list(trace.token_ids)).logits
        assert np.abs(want - plain).max() > 1e-3, "zeroing the largest neurons should change the logits"
        np.testing.assert_allclose(got, want, atol=LOGIT_TOL, err_msg=f"{name} logits with neurons {neurons} zeroed")
        ablated = mlp_neurons(model, trace, layer, len(trace) - 2, k=2, rank_by="activation")
        assert all(ablated.activations[j] == 0 for j in neurons)
    finally:
        model.clear_gates()
    assert model.neuron_gates() == {} and model.mlp_module(layer).neuron_gate is None


def test_a_session_recomputes_when_a_neuron_gate_changes(case):
    name, model, _ref, _trace = case
    if model.family != "decoder":
        return
    session = Session(model, list(range(5, 15)))
    before = session.trace.logits_at(9).copy()
    top = mlp_neurons(model, session.trace, 1, 9, k=1, rank_by="activation").neurons[0].index
    try:
        model.set_neuron_gate(1, top, 0.0)
        trace = session.trace  # notices the gate and recomputes
        assert trace.neuron_gates == {"decoder.1.mlp": {top: 0.0}}
        assert np.abs(trace.logits_at(9) - before).max() > 1e-4
    finally:
        model.clear_gates()
    np.testing.assert_allclose(session.trace.logits_at(9), before, atol=1e-6)
    assert session.trace.neuron_gates == {}
