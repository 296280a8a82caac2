"""engine.patching against an independent computation: transformers (eager) with forward hooks that record a
component in the corrupt run and write it into the clean run at the aligned positions. Heads, attention
outputs, MLPs, neurons and the residual stream at layers and heads other than 0; prompts of different
lengths aligned at the end; the KV cache (the clean prompt fed in two pieces) and both capture modes give the
same patched logits; the layer x head sweep equals patching each head alone. Tolerance: logits 1e-4."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from engine import load_model
from engine.errors import CaptureError
from engine.patching import Component, align_positions, patch, patch_sweep
from tests import factories, modern_factories

transformers = pytest.importorskip("transformers")

LOGIT_TOL = 1e-4
CLEAN = list(range(5, 19))  # 14 tokens
CORRUPT = [40, 41, 42, 43, 44, 45, 46, *range(9, 19)]  # 17 tokens: another start, the same last ten


def _llama_sites(m, c):  # noqa: ANN001, ANN202 - (module, pre-hook?, slice) in the reference
    layer = m.model.layers[c.layer]
    hs = m.config.head_dim if getattr(m.config, "head_dim", None) else m.config.hidden_size // m.config.num_attention_heads
    return {"head": (layer.self_attn.o_proj, True, slice(c.index * hs, (c.index + 1) * hs) if c.index is not None else None),
            "attn": (layer.self_attn, False, None), "mlp": (layer.mlp, False, None),
            "neuron": (layer.mlp.down_proj, True, slice(c.index, (c.index or 0) + 1)), "resid": (layer, False, None)}[c.what]


def _gpt2_sites(m, c):  # noqa: ANN001, ANN202
    block = m.transformer.h[c.layer]
    hs = m.config.n_embd // m.config.n_head
    return {"head": (block.attn.c_proj, True, slice(c.index * hs, (c.index + 1) * hs) if c.index is not None else None),
            "attn": (block.attn, False, None), "mlp": (block.mlp, False, None),
            "neuron": (block.mlp.c_proj, True, slice(c.index, (c.index or 0) + 1)), "resid": (block, False, None)}[c.what]


CASES = {"llama": ("LlamaForCausalLM", _llama_sites), "gpt2": ("GPT2LMHeadModel", _gpt2_sites)}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    name = request.param
    build = factories.ARCHITECTURES.get(name) or modern_factories.ARCHITECTURES[name]
    folder = build(tmp_path_factory.mktemp(name) / "ckpt")
    ref = getattr(transformers, CASES[name][0]).from_pretrained(folder, attn_implementation="eager").eval()
    return name, load_model(folder, device="cpu"), ref


def _reference_patch(ref, sites, c: Component, clean, corrupt, pairs):  # noqa: ANN001, ANN202
    """The reference: record the site in the corrupt run, write it at the paired clean positions."""
    module, pre, sl = sites(ref, c)
    sl = sl if sl is not None else slice(None)
    seen = {}

    def first(x):  # noqa: ANN001, ANN202 - some modules return (output, weights)
        return x[0] if isinstance(x, tuple) else x

    def record_pre(_m, args):  # noqa: ANN001, ANN202
        seen["v"] = args[0][0, :, sl].clone()

    def record_post(_m, _a, out):  # noqa: ANN001, ANN202
        seen["v"] = first(out)[0, :, sl].clone()

    def swap(t):  # noqa: ANN001, ANN202
        t = t.clone()
        for p, q in pairs:
            t[0, p, sl] = seen["v"][q]
        return t

    def patch_pre(_m, args):  # noqa: ANN001, ANN202
        return (swap(args[0]), *args[1:])

    def patch_post(_m, _a, out):  # noqa: ANN001, ANN202
        return (swap(out[0]), *out[1:]) if isinstance(out, tuple) else swap(out)

    with torch.no_grad():
        h = module.register_forward_pre_hook(record_pre) if pre else module.register_forward_hook(record_post)
        ref(torch.tensor([corrupt]))
        h.remove()
        h = module.register_forward_pre_hook(patch_pre) if pre else module.register_forward_hook(patch_post)
        out = ref(torch.tensor([clean])).logits[0, -1].numpy()
        h.remove()
    return out


@pytest.mark.parametrize("component", ["L1.H3", "L1.H1", "L1.attn", "L1.MLP", "L1.N7", "L0.resid", "L1.resid"])
def test_patch_matches_transformers_with_hooks(pair, component):
    name, model, ref = pair
    c = Component.parse(component)
    r = patch(model, CLEAN, CORRUPT, c)
    assert r.pairs == tuple(align_positions(len(CLEAN), len(CORRUPT), "end"))
    assert r.pairs[-1] == (13, 16) and r.pairs[0] == (0, 3)
    want = _reference_patch(ref, CASES[name][1], c, CLEAN, CORRUPT, r.pairs)
    np.testing.assert_allclose(r.after_logits, want, atol=LOGIT_TOL, err_msg=f"{name} {component}")
    assert np.abs(r.after_logits - r.before_logits).max() > 1e-3, "the patch should change something"
    # at only some positions: the reference agrees there too
    some = patch(model, CLEAN, CORRUPT, c, positions=[9, 13])
    want = _reference_patch(ref, CASES[name][1], c, CLEAN, CORRUPT, [(9, 12), (13, 16)])
    np.testing.assert_allclose(some.after_logits, want, atol=LOGIT_TOL)
    assert some.movers[0][3] - some.movers[0][2] == pytest.approx(float((some.after - some.before)[some.movers[0][0]]))


def test_start_alignment_and_positions_without_a_partner(pair):
    name, model, ref = pair
    c = Component.parse("L1.H2")
    r = patch(model, CLEAN, CORRUPT, c, align="start")
    assert r.pairs == tuple((p, p) for p in range(14))
    want = _reference_patch(ref, CASES[name][1], c, CLEAN, CORRUPT[:14], r.pairs)
    # the corrupt run read at position 13 (aligned at the start) sees only its first 14 tokens (causal)
    np.testing.assert_allclose(r.after_logits, want, atol=LOGIT_TOL)
    with pytest.raises(CaptureError, match="no aligned corrupt position"):
        patch(model, CORRUPT, CLEAN, c, positions=[1])


def test_kv_cache_and_both_capture_modes_give_the_same_patch(pair):
    _name, model, _ref = pair
    c = Component.parse("L1.H3")
    whole = patch(model, CLEAN, CORRUPT, c)
    pieces = patch(model, CLEAN, CORRUPT, c, split=6)  # prefill 6 tokens, then the rest through the cache
    np.testing.assert_allclose(pieces.after_logits, whole.after_logits, atol=LOGIT_TOL)
    old = model.capture_mode
    try:
        for mode in ("patterns", "rebuild"):
            model.capture_mode = mode
            r = patch(model, CLEAN, CORRUPT, c, split=9)
            np.testing.assert_allclose(r.after_logits, whole.after_logits, atol=LOGIT_TOL, err_msg=mode)
            np.testing.assert_allclose(r.trace.logits_at(13), r.after_logits, atol=LOGIT_TOL)
            assert r.trace.attention("self", 1).shape == (model.n_heads, 14, 14)
    finally:
        model.capture_mode = old
    # layer 1's patterns are its own (the patch is on its output); a later layer's would move
    unpatched = model.run(CLEAN)
    np.testing.assert_allclose(whole.trace.attention("self", 1), unpatched.attention("self", 1), atol=1e-5)
    np.testing.assert_allclose(whole.trace.attention("self", 0), unpatched.attention("self", 0), atol=1e-5)


def test_sweep_equals_patching_each_head_alone(pair):
    _name, model, _ref = pair
    a, b = 60, 70
    calls = []
    s = patch_sweep(model, CLEAN, CORRUPT, a, b, progress=lambda d, n: calls.append((d, n)), batch=3)
    assert s.patched.shape == (model.n_layers, model.n_heads) and not s.cancelled
    per_layer = -(-model.n_heads // 3)
    assert calls[-1] == (model.n_layers * per_layer, model.n_layers * per_layer)
    for layer, head in ((1, 3), (1, 1), (0, 2)):
        r = patch(model, CLEAN, CORRUPT, Component("head", layer, head))
        want = float(r.after_logits[a] - r.after_logits[b])
        assert s.patched[layer, head] == pytest.approx(want, abs=LOGIT_TOL)
    clean = patch(model, CLEAN, CORRUPT, "L1.H0")
    assert s.clean_metric == pytest.approx(float(clean.before_logits[a] - clean.before_logits[b]), abs=LOGIT_TOL)
    np.testing.assert_allclose(s.effect, s.patched - s.clean_metric, atol=1e-6)

    stop = threading.Event()
    partial = patch_sweep(model, CLEAN, CORRUPT, a, b, progress=lambda d, n: stop.set(), cancel=stop, batch=2)
    assert partial.cancelled and np.isfinite(partial.patched).sum() == 2 and np.isnan(partial.patched[-1]).all()


def test_bad_components_say_what_to_write(pair):
    _name, model, _ref = pair
    for text, match in (("L9.H0", "layer 9"), ("L1.H99", "head 99"), ("L1.N100000", "neuron 100000"),
                        ("layer one", "not a component"), ("L1.X0", "no 'cross'")):
        with pytest.raises(CaptureError, match=match):
            patch(model, CLEAN, CORRUPT, text)


@pytest.mark.parametrize("build", ["bart", "t5-v1.1", "bert"])
def test_other_families_patch_and_an_identical_prompt_changes_nothing(build, tmp_path):
    model = load_model(factories.ARCHITECTURES[build](tmp_path / "ckpt"), device="cpu")
    tok = model.tokenizer
    src, other = "And God said, Let there be light", "In the beginning God created the heaven"
    comps = ["E1.H2", "E1.MLP", "E0.N5", "E1.resid"] + (["L1.X2", "L1.cross", "L1.H1"] if model.family != "encoder" else [])
    if model.family == "encoder":
        mask = tok.token_strings([model.config.mask_token_id])[0]
        src, other = f"And God said, Let there be {mask}", f"In the beginning God created the {mask}"
    for comp in comps:
        same = patch(model, src, src, comp)
        np.testing.assert_allclose(same.after_logits, same.before_logits, atol=1e-5, err_msg=comp)
        moved = patch(model, src, other, comp)
        assert np.abs(moved.after_logits - moved.before_logits).max() > 1e-4, f"{build} {comp}"
    if model.family == "encoder":
        assert same.position == tok.encode(src).index(model.config.mask_token_id)


def test_several_components_at_once_match_the_reference(pair):
    name, model, ref = pair
    both = patch(model, CLEAN, CORRUPT, "L1.H3, L1.H1")
    assert [c.label for c in both.components] == ["L1.H3", "L1.H1"] and both.label == "L1.H3, L1.H1"
    # heads 1 and 3 of layer 1 are one slice pair of W_O's input: the reference patches them one hook at a time
    sites = CASES[name][1]

    def two_heads(m, c):  # noqa: ANN001, ANN202
        module, pre, _sl = sites(m, Component("head", 1, 0))
        return module, pre, None

    want_single = _reference_patch(ref, two_heads, Component("head", 1, None), CLEAN, CORRUPT, both.pairs)
    every = patch(model, CLEAN, CORRUPT, ", ".join(f"L1.H{h}" for h in range(model.n_heads)))
    np.testing.assert_allclose(every.after_logits, want_single, atol=LOGIT_TOL)  # all heads = the whole W_O input
    one = patch(model, CLEAN, CORRUPT, "L1.H3")
    assert np.abs(both.after_logits - one.after_logits).max() > 1e-4
    with pytest.raises(CaptureError, match="at least one"):
        patch(model, CLEAN, CORRUPT, " , ")


def test_component_names_round_trip_and_positions_align():
    for text in ("L3.H7", "L0.attn", "L2.MLP", "L1.N120", "L4.resid", "L1.X2", "L1.cross", "E0.H1", "E2.MLP"):
        assert Component.parse(text, "encoder-decoder").label == text
    assert Component.parse("L1.H0", "encoder").kind == "encoder"  # an encoder-only model's layers are the encoder's
    assert align_positions(3, 5, "end") == [(0, 2), (1, 3), (2, 4)]
    assert align_positions(5, 3, "end") == [(2, 0), (3, 1), (4, 2)]
    assert align_positions(5, 3, "start") == [(0, 0), (1, 1), (2, 2)]
