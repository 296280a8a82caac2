"""Parity of the transformers backend (engine.hf_backend) with transformers eager, on tiny random checkpoints of
architectures the native engine does not open: mixture of experts (gpt_oss, qwen3_moe, mixtral, qwen3_next),
attention sinks (gpt_oss), hybrids with convolution / linear-attention layers (lfm2, qwen3_next), a multimodal
class fed text (gemma3), an encoder (ModernBERT, alternating local/global bidirectional attention); and one native
architecture (llama) opened both ways.

Tolerances (float32): every pattern within 1e-5 of eager `output_attentions`, logits within 1e-4, 16 greedy tokens
equal `generate`. Prompts (20 tokens) run past every sliding window (5) and, with the row chunk forced small,
through several chunks of query rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import CaptureError, Session, load_model
from engine.hf_backend import HFModel, attention
from engine.hf_backend import cache as hf_cache
from tests import hf_factories, modern_factories

transformers = pytest.importorskip("transformers")

ATTN_TOL, LOGIT_TOL, N_GREEDY = 1e-5, 1e-4, 16
PROMPT = list(range(5, 25))  # 20 tokens: four sliding windows
SINGLE_STACK = [a for a in hf_factories.ARCHITECTURES if a != "t5gemma"]  # t5gemma: its own tests at the end
DECODERS = [a for a in SINGLE_STACK if a != "modernbert"]
MOE = ["gpt_oss", "qwen3_moe", "mixtral", "qwen3_next", "olmoe", "deepseek_v3", "granitemoehybrid", "llama4_text"]
RECURRENT = ["lfm2", "qwen3_next", "granitemoehybrid", "falcon_h1"]  # layers with state that cannot be cropped
NO_ATTENTION = {"lfm2": "short convolution", "qwen3_next": "Gated DeltaNet", "granitemoehybrid": "Mamba"}  # falcon_h1: in parallel


def _reference(folder, encoder: bool = False):
    if encoder:
        return transformers.AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="eager").eval()
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    except ValueError:  # gemma3: the multimodal class
        return transformers.AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager").eval()


_BUILT: dict = {}


def _pair(name: str, tmp_path_factory):
    """(ours, eager reference, folder), built once per architecture for the whole module."""
    if name not in _BUILT:
        folder = hf_factories.ARCHITECTURES[name](tmp_path_factory.mktemp(name) / "ckpt")
        _BUILT[name] = (load_model(folder, device="cpu"), _reference(folder, name == "modernbert"), folder)
    return _BUILT[name]


@pytest.fixture
def small_chunks(monkeypatch):
    """Two or three query rows per chunk, so every prompt crosses several chunks."""
    monkeypatch.setattr(attention, "SCORE_CHUNK_BYTES", 4 * 4 * 24 * 3)


def _err(ours: np.ndarray, theirs: torch.Tensor) -> float:
    theirs = theirs.detach().float().numpy()
    assert ours.shape == theirs.shape, f"shape {ours.shape} != reference {theirs.shape}"
    return float(np.abs(ours - theirs).max())


@pytest.mark.parametrize("name", SINGLE_STACK)
def test_patterns_and_logits_equal_eager(name, tmp_path_factory, small_chunks):
    model, ref, _ = _pair(name, tmp_path_factory)
    assert isinstance(model, HFModel) and model.config.model_type == name
    kind = "encoder" if name == "modernbert" else "self"
    with torch.no_grad():
        out = ref(torch.tensor([PROMPT]), output_attentions=True)
    trace = model.run(PROMPT)
    theirs = [a for a in out.attentions if a is not None]
    assert len(theirs) == len(model.attention_layers) >= 1
    for layer, a in zip(model.attention_layers, theirs):
        pattern = trace.attention(kind, layer)
        assert pattern.shape == (model.n_heads, len(PROMPT), len(PROMPT))
        assert pattern.max(-1).mean() > 0.2, "patterns should have structure, not be near-uniform"
        assert _err(pattern, a[0]) <= ATTN_TOL, f"{name} layer {layer}"
    assert _err(trace.logits, out.logits[0]) <= LOGIT_TOL, f"{name} logits"
    # memory linear in T: queries, keys and row statistics, not layers x heads x T^2 patterns
    assert all(not hasattr(b, "rows") for n in trace.capture_names if n in trace.blocks for b in trace.blocks[n])


@pytest.mark.parametrize("name", DECODERS)
def test_greedy_steps_equal_generate(name, tmp_path_factory):
    model, ref, _ = _pair(name, tmp_path_factory)
    eos = model.config.eos_token_id
    with torch.no_grad():
        expected = ref.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
                                max_new_tokens=N_GREEDY, do_sample=False, num_beams=1, pad_token_id=eos)[0, len(PROMPT):]
    session = Session(model, PROMPT)
    while len(session.ids) < len(PROMPT) + N_GREEDY and not session.finished:
        session.step()
    assert session.ids[len(PROMPT):] == expected.tolist()


def _assert_same_trace(a, b, tol: float = ATTN_TOL) -> None:
    assert a.token_ids == b.token_ids
    for name in a.capture_names:
        if name in a.blocks:
            kind, layer = ("encoder" if name.startswith("encoder") else "self"), int(name.split(".")[1])
            assert np.abs(a.attention(kind, layer) - b.attention(kind, layer)).max() <= tol, name
    assert np.abs(a.logits - b.logits).max() <= LOGIT_TOL


@pytest.mark.parametrize("name", DECODERS)
def test_back_and_branch_equal_a_fresh_session(name, tmp_path_factory):
    model, _, _ = _pair(name, tmp_path_factory)
    session = Session(model, PROMPT)
    for _ in range(4):
        session.step()
    session.back()
    session.back()
    session.branch(7)
    session.step()
    fresh = model.run(session.ids)
    _assert_same_trace(session.trace, fresh)
    assert [s.token_id for s in session.steps][-2] == 7


@pytest.mark.parametrize("name", RECURRENT)
def test_back_without_a_snapshot_recomputes_the_recurrent_state(name, tmp_path_factory, monkeypatch):
    """Snapshots dropped (no budget): back() reaches the earlier state by recomputing the prefix, still exact."""
    monkeypatch.setattr(hf_cache, "SNAPSHOT_BUDGET", 0)
    model, _, _ = _pair(name, tmp_path_factory)
    session = Session(model, PROMPT)
    session.step()
    session.step()
    assert len(session._cache._snapshots) == 1
    session.back()
    session.branch(9)
    session.step()
    _assert_same_trace(session.trace, model.run(session.ids))


def _router_choices(ref, ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """layer -> (experts, weights) as the reference's routers returned them on `ids`."""
    seen, hooks = {}, []
    for qualname, module in ref.named_modules():
        if type(module).__name__.endswith("Router"):
            layer = int(qualname.split("layers.")[1].split(".")[0])

            def hook(_m, _i, out, layer=layer):
                if len(out) == 3:  # (logits, weights of the chosen, their indices)
                    seen[layer] = (out[2].numpy(), out[1].float().numpy())
                else:  # Llama 4: (dense scores, logits): the top-k of the logits, weighted by their scores
                    idx = torch.topk(out[1], ref.config.num_experts_per_tok, dim=-1).indices
                    seen[layer] = (idx.numpy(), out[0].gather(1, idx).float().numpy())
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        ref(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("name", MOE)
def test_routing_equals_the_routers_top_k(name, tmp_path_factory):
    model, ref, _ = _pair(name, tmp_path_factory)
    session = Session(model, PROMPT)
    for _ in range(3):
        session.step()
    trace = session.trace
    expected = _router_choices(ref, session.ids)
    assert trace.moe_layers == sorted(expected) == model.moe_layers
    for layer, (experts, weights) in expected.items():
        r = trace.routing(layer)
        k = model.hf.config.num_experts_per_tok
        assert r.experts.shape == (len(session.ids), k) and r.weights.shape == r.experts.shape
        np.testing.assert_array_equal(r.experts, experts)
        np.testing.assert_allclose(r.weights, weights, atol=1e-5)
        assert r.load().sum() == k * len(session.ids) and r.n_experts == 4
    session.back()
    assert session.trace.routing(model.moe_layers[0]).experts.shape[0] == len(session.ids)


def test_sink_share_is_one_minus_each_row_sum(tmp_path_factory):
    model, _, _ = _pair("gpt_oss", tmp_path_factory)
    session = Session(model, PROMPT)
    session.step()
    trace = session.trace
    for layer in model.attention_layers:
        share = trace.sink_share("self", layer)
        rows = trace.attention("self", layer).sum(-1)
        assert share.shape == rows.shape == (model.n_heads, len(session.ids))
        np.testing.assert_allclose(share, 1.0 - rows, atol=1e-5)
        assert share.mean() > 0.01 and share.min() >= 0, "the sinks were set to take a visible share"
    qwen, _, _ = _pair("qwen3_moe", tmp_path_factory)
    assert qwen.run(PROMPT).sink_share("self", 0) is None


def test_neuron_ablation_of_experts_is_refused_by_name_and_heads_still_step(tmp_path_factory):
    """Neuron gates act on dense MLPs (tests/parity/test_hf_explain.py): an expert layer has none, and asking for
    one says why (a Session reads them on every step, so their absence must not break stepping)."""
    model, _, _ = _pair("qwen3_moe", tmp_path_factory)
    assert model.neuron_gates() == {}
    with pytest.raises(CaptureError, match="mixture of experts"):
        model.set_neuron_gate(1, 0, 0.0)
    model.clear_gates()
    session = Session(model, PROMPT)
    session.step()
    model.set_head_gate("self", 1, 2, 0.0)
    try:
        assert session.trace.gates == {"decoder.1.attn": (1.0, 1.0, 0.0) + (1.0,) * (model.n_heads - 3)}
    finally:
        model.clear_gates()


def test_modernbert_fills_masks_as_eager_predicts(tmp_path_factory):
    model, ref, _ = _pair("modernbert", tmp_path_factory)
    mask = model.config.mask_token_id
    assert model.family == "encoder" and mask is not None
    ids = PROMPT[:8] + [mask] + PROMPT[9:]
    session = Session(model, ids)
    step = session.step()
    with torch.no_grad():
        logits = ref(torch.tensor([ids])).logits[0, 8].numpy()
    assert step.position == 8 and step.token_id == int(np.argmax(logits))
    assert np.abs(step.logits - logits).max() <= LOGIT_TOL


def test_a_native_architecture_gives_the_same_trace_both_ways(tmp_path_factory):
    folder = modern_factories.llama(tmp_path_factory.mktemp("llama") / "ckpt")
    native, ours = load_model(folder, device="cpu"), load_model(folder, device="cpu", backend="transformers")
    assert not isinstance(native, HFModel) and isinstance(ours, HFModel)
    a, b = Session(native, PROMPT), Session(ours, PROMPT)
    for _ in range(4):
        a.step()
        b.step()
    assert a.ids == b.ids
    _assert_same_trace(a.trace, b.trace)
    # head gates (ablation) act the same way in both
    for m in (native, ours):
        m.set_head_gate("self", 1, 2, 0.0)
    _assert_same_trace(native.run(a.ids), ours.run(a.ids))
    assert ours.gates() == native.gates() == {"decoder.1.attn": (1.0, 1.0, 0.0, 1.0)}
    ours.clear_gates()
    native.clear_gates()


@pytest.mark.parametrize("name", list(NO_ATTENTION))
def test_hybrid_layers_keep_their_numbers_and_say_they_have_no_attention(name, tmp_path_factory):
    model, _, _ = _pair(name, tmp_path_factory)
    trace = model.run(PROMPT)
    assert trace.n_layers["self"] == model.n_layers > len(model.attention_layers)
    other = next(i for i in range(model.n_layers) if i not in model.attention_layers)
    kind = NO_ATTENTION[name]
    assert trace.no_attention[f"decoder.{other}.attn"] == kind
    with pytest.raises(CaptureError, match=f"layer {other} has no attention \\(a {kind} layer\\)"):
        trace.attention("self", other)
    with pytest.raises(CaptureError, match="has no attention"):
        model.set_head_gate("self", other, 0, 0.0)


@pytest.mark.parametrize("name, layer, expected", [
    ("gpt_oss", 0, dict(causal=True, window=5, window_ahead=None, chunk=None)),
    ("gpt_oss", 1, dict(causal=True, window=None, window_ahead=None, chunk=None)),
    ("llama4_text", 0, dict(causal=True, window=None, window_ahead=None, chunk=8)),
    ("modernbert", 0, dict(causal=False, window=None, window_ahead=None, chunk=None)),  # global every 2nd layer
    ("modernbert", 1, dict(causal=False, window=4, window_ahead=4, chunk=None)),  # |q - k| <= 3 (local_attention 6)
])
def test_each_mask_rule_is_described_for_rebuilding(name, layer, expected, tmp_path_factory):
    model, _, _ = _pair(name, tmp_path_factory)
    trace = model.run(PROMPT)
    rule = trace.rules[f"{'encoder' if name == 'modernbert' else 'decoder'}.{layer}.attn"]
    assert {k: getattr(rule, k) for k in expected} == expected


def test_logits_the_output_head_post_processes_unknowingly_are_kept_whole(tmp_path_factory, monkeypatch):
    """When unembedding the final hidden states does not give the model's own logits (a post-processing the
    backend does not know), the first forward notices and keeps every position's logits from transformers."""
    _, ref, folder = _pair("olmo3", tmp_path_factory)
    model = load_model(folder, device="cpu")
    w, bias, _scale, cap = model.unembedding_arrays()
    model._unembedding = (w, bias, 3.0, cap)  # a scale the model does not apply
    trace = model.run(PROMPT)
    assert model.lazy_logits_ok is False
    with torch.no_grad():
        expected = ref(torch.tensor([PROMPT])).logits[0]
    assert _err(trace.logits, expected) <= LOGIT_TOL


def test_head_statistics_and_rollout_skip_layers_without_attention(tmp_path_factory):
    from engine.analysis import head_statistics, rollout

    model, _, _ = _pair("lfm2", tmp_path_factory)
    trace = model.run(PROMPT)
    stats = head_statistics(model, trace)
    assert {s.layer for s in stats} == set(model.attention_layers) and len(stats) == model.n_heads * len(model.attention_layers)
    r = rollout(trace, "self")
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(CaptureError, match="no attention to roll out"):
        rollout(trace, "self", upto=0)


@pytest.mark.parametrize("name", ["gpt_oss", "qwen3_next"])
def test_bfloat16_stays_within_its_rounding(name, tmp_path_factory):
    """bfloat16 weights (what real checkpoints hold): patterns within 0.06 and logits within 0.25 of eager in
    bfloat16, the final hidden states still unembedded lazily, back/step working on bfloat16 caches."""
    _, _, folder = _pair(name, tmp_path_factory)
    model = load_model(folder, device="cpu", dtype="bfloat16")
    ref = _reference(folder).to(torch.bfloat16)
    with torch.no_grad():
        out = ref(torch.tensor([PROMPT]), output_attentions=True)
    session = Session(model, PROMPT)
    trace = session.trace
    for layer, a in zip(model.attention_layers, [a for a in out.attentions if a is not None]):
        assert _err(trace.attention("self", layer), a[0]) <= 0.06
    assert _err(trace.logits, out.logits[0]) <= 0.25 and model.lazy_logits_ok
    session.step()
    session.back()
    assert session.ids == PROMPT


def test_a_session_file_reopens_on_the_same_backend(tmp_path_factory, tmp_path):
    from engine.session_file import load_session, save_session

    folder = modern_factories.llama(tmp_path_factory.mktemp("llama-file") / "ckpt")
    for backend in ("transformers", "native"):
        model = load_model(folder, device="cpu", backend=backend)
        session = Session(model, PROMPT)
        session.step()
        path = save_session(session, tmp_path / f"{backend}.json")
        again, _view = load_session(path)
        assert again.model.backend == backend and again.ids == session.ids


def test_capture_of_chosen_layers_only(tmp_path_factory):
    model, _, _ = _pair("gpt_oss", tmp_path_factory)
    session = Session(model, PROMPT, capture={"decoder.1.attn"})
    session.step()
    trace = session.trace
    assert [n for n in trace.capture_names if n in trace.blocks] == ["decoder.1.attn"]
    np.testing.assert_allclose(trace.attention("self", 1), model.run(session.ids).attention("self", 1), atol=ATTN_TOL)
    with pytest.raises(CaptureError, match="not recorded"):
        trace.attention("self", 0)


# -- an encoder-decoder (T5Gemma): encoder, decoder self- and cross-attention ---------------------------------------
T5_TOL, T5_LOGIT_TOL = 3e-5, 2e-4  # two soft-capped stacks deep: float32 rounding reaches 1.6e-5 / 8e-5 here


def _t5(tmp_path_factory):
    if "t5gemma" not in _BUILT:
        folder = hf_factories.ARCHITECTURES["t5gemma"](tmp_path_factory.mktemp("t5gemma") / "ckpt")
        ref = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager").eval()
        _BUILT["t5gemma"] = (load_model(folder, device="cpu"), ref, folder)
    return _BUILT["t5gemma"]


def test_encoder_decoder_patterns_and_logits_equal_eager(tmp_path_factory):
    model, ref, _ = _t5(tmp_path_factory)
    assert model.family == "encoder-decoder" and model.kinds == ("encoder", "self", "cross")
    start = model.config.decoder_start_token_id
    dec = [start, *range(30, 42)]
    with torch.no_grad():
        out = ref(input_ids=torch.tensor([PROMPT]), decoder_input_ids=torch.tensor([dec]), output_attentions=True)
    trace = model.run(dec, source=PROMPT)
    for kind, theirs in (("encoder", out.encoder_attentions), ("self", out.decoder_attentions),
                         ("cross", out.cross_attentions)):
        for layer, a in enumerate(theirs):
            assert _err(trace.attention(kind, layer), a[0]) <= T5_TOL, f"{kind} {layer}"
    assert trace.rules["encoder.0.attn"].window_ahead is not None  # the encoder's sliding window looks both ways
    assert _err(trace.logits, out.logits[0]) <= T5_LOGIT_TOL


def test_encoder_decoders_logit_lens_reads_its_decoder_as_transformers_does(tmp_path_factory):
    """T5Gemma's logit lens: each decoder layer's output (transformers' own decoder_hidden_states, eager) through the
    decoder's final norm, the output head and the final soft-cap, computed here from the reference model's modules;
    the last layer is the trace's logits. (The decoder's dropout after its norm passes its input on in eval: the
    lens must find the norm, not the dropout, as the module whose output is the last hidden state.)"""
    from engine.analysis import logit_lens

    model, ref, _ = _t5(tmp_path_factory)
    start = model.config.decoder_start_token_id
    dec = [start, *range(30, 42)]
    trace = model.run(dec, source=PROMPT)
    with torch.no_grad():
        out = ref(input_ids=torch.tensor([PROMPT]), decoder_input_ids=torch.tensor([dec]), output_hidden_states=True)
        cap = ref.config.get_text_config(decoder=True).final_logit_softcapping
        for pos in (0, 6, len(dec) - 1):
            with model.guard():
                lens = model.explainer.lens_logits(trace, pos).float().numpy()
            assert lens.shape == (model.n_layers, trace.logits.shape[-1])
            np.testing.assert_allclose(lens[-1], trace.logits_at(pos), atol=T5_LOGIT_TOL)
            for layer in range(model.n_layers - 1):
                h = out.decoder_hidden_states[layer + 1][0, pos]
                want = ref.lm_head(ref.model.decoder.norm(h))
                if cap is not None:
                    want = torch.tanh(want / cap) * cap
                np.testing.assert_allclose(lens[layer], want.numpy(), atol=T5_LOGIT_TOL)
                assert np.abs(lens[layer] - lens[-1]).max() > 1e-3  # a layer's own reading, not the last one's
    probs = logit_lens(model, trace, 6)["probs"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_encoder_decoder_steps_equal_generate_and_branch_equals_a_fresh_run(tmp_path_factory):
    model, ref, _ = _t5(tmp_path_factory)
    prefix = [model.config.decoder_start_token_id, 40, 41]
    with torch.no_grad():
        expected = ref.generate(input_ids=torch.tensor([PROMPT]), decoder_input_ids=torch.tensor([prefix]),
                                max_new_tokens=N_GREEDY, do_sample=False, num_beams=1)[0, len(prefix):]
    session = Session(model, prefix, source=PROMPT)
    while len(session.ids) < len(prefix) + N_GREEDY and not session.finished:
        session.step()
    assert session.ids[len(prefix):] == expected.tolist()
    session.back()
    session.back()
    session.branch(7)
    session.step()
    fresh = model.run(session.ids, source=PROMPT)
    for kind in model.kinds:
        for layer in range(2):
            assert np.abs(session.trace.attention(kind, layer) - fresh.attention(kind, layer)).max() <= ATTN_TOL
    assert np.abs(session.trace.logits - fresh.logits).max() <= LOGIT_TOL
