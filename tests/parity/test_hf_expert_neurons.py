"""Inside the experts of a mixture-of-experts layer (engine.hf_backend.experts, model.explainer.expert_neurons): for
each expert the token was routed to, its neurons and their writes weighted by the router's weight. Checked against
an independent computation: an expert's weighted write equals the difference its expert gate (0 against 1) makes to
transformers' own experts output at that position, for the common layouts (Qwen3-MoE: gate and up concatenated;
gpt-oss: interleaved, transposed, with biases and a clamped gate; DeepSeek-V3: a shared expert beside, a dense
first layer). Tolerance: 1e-5 absolute on writes of size ~10 (float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import CaptureError, load_model
from engine.hf_backend.attention import active
from engine.hf_backend.experts import experts_module
from tests import hf_factories

pytest.importorskip("transformers")

PROMPT = list(range(5, 25))
POSITION = 13


def _experts_output(model, layer: int, gate: tuple[int, float] | None) -> torch.Tensor:
    """transformers' experts module output at POSITION, with one expert gated (or none)."""
    mod = experts_module(model.explainer.layers[layer], layer)
    outs = []
    hook = mod.register_forward_hook(lambda _m, _a, o: outs.append((o[0] if isinstance(o, tuple) else o).clone()))
    try:
        if gate is not None:
            model.set_expert_gate(layer, *gate)
        with model.guard(), active(model._state(None)):
            model.hf(input_ids=torch.tensor([PROMPT]), use_cache=False)
    finally:
        hook.remove()
        model.clear_expert_gates()
    return outs[0].reshape(-1, outs[0].shape[-1])[POSITION].float()


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss", "deepseek_v3"])
def test_each_experts_write_is_what_its_gate_takes_away(name, tmp_path):
    model = load_model(hf_factories.ARCHITECTURES[name](tmp_path / name), device="cpu", backend="transformers")
    trace = model.run(PROMPT)
    layer = model.moe_layers[-1]
    got = model.explainer.expert_neurons(trace, layer, POSITION, k=5)
    routing = trace.routing(layer)
    assert [e.expert for e in got.experts] == routing.experts[POSITION].tolist()
    np.testing.assert_allclose([e.weight for e in got.experts], routing.weights[POSITION], rtol=1e-6)
    full = _experts_output(model, layer, None)
    np.testing.assert_allclose(got.block_output, full.numpy(), atol=1e-6)
    for e in got.experts:
        without = _experts_output(model, layer, (e.expert, 0.0))
        np.testing.assert_allclose(e.output, (full - without).numpy(), atol=1e-5)
        assert np.abs(e.output).max() > 0.1 and len(e.top) == 5
        assert e.write_norms[e.top[0]] == e.write_norms.max()
    if name == "deepseek_v3":  # layer 0 is dense: Inside the MLP shows it
        with pytest.raises(CaptureError, match="not a mixture-of-experts layer"):
            model.explainer.expert_neurons(trace, 0, POSITION)


def test_a_layout_not_known_is_refused(tmp_path):
    model = load_model(hf_factories.ARCHITECTURES["llama4_text"](tmp_path / "l4"), device="cpu", backend="transformers")
    with pytest.raises(CaptureError, match="layout the backend reads"):
        model.explainer.expert_neurons(model.run(PROMPT), model.moe_layers[0], POSITION)


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss"])
def test_each_experts_neurons_add_to_its_direct_effect(name, tmp_path):
    """Each neuron's direct effect on the top token, summed over an expert's neurons (+ its down bias), equals the
    expert's own weighted write (checked above against its gate) through the final RMSNorm frozen at the forward's
    scale and the unembedding, computed here from transformers' own modules; the chosen experts add to
    attribute()'s MLP part of that layer. The last layer is the MoE layer, so nothing lies between it and the norm.
    Tolerance: 1e-4 relative on effects of size ~1 (float32)."""
    model = load_model(hf_factories.ARCHITECTURES[name](tmp_path / name), device="cpu", backend="transformers")
    trace = model.run(PROMPT)
    layer = model.moe_layers[-1]
    assert layer == model.n_layers - 1
    got = model.explainer.expert_neurons(trace, layer, POSITION, k=5)
    token = int(np.argmax(trace.logits_at(POSITION)))
    assert got.token_id == token
    seen = []
    norm = model.hf.model.norm
    hook = norm.register_forward_hook(lambda _m, a, _o: seen.append(a[0][0, POSITION].float().clone()))
    try:
        with model.guard(), active(model._state(None)):
            model.hf(input_ids=torch.tensor([PROMPT]), use_cache=False)
    finally:
        hook.remove()
    x = seen[0]
    scale = norm.weight.detach().float() / torch.sqrt((x * x).mean() + norm.variance_epsilon)
    column = model.hf.lm_head.weight[token].detach().float()
    for e in got.experts:
        expected = float((torch.from_numpy(e.output) * scale) @ column)
        assert e.effects is not None and e.effects.shape == e.activations.shape
        np.testing.assert_allclose(float(e.effects.astype(np.float64).sum()) + e.bias_effect, expected, rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(e.effect, expected, rtol=1e-4, atol=1e-5)
        assert abs(e.effect) > 1e-3
    attribution = model.explainer.attribute(trace, POSITION)
    np.testing.assert_allclose(sum(e.effect for e in got.experts), float(attribution.mlps[layer]), rtol=1e-4)
    np.testing.assert_allclose(got.mlp_effect, float(attribution.mlps[layer]), rtol=1e-5)
