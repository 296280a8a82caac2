"""Activation patching (engine.patching) on the transformers backend. The strongest check: a Llama opened both ways
gives the native engine's (verified against transformers eager in test_patching.py) patched logits and sweep, for
every component kind. For a mixture of experts (Qwen3-MoE), attention sinks (gpt-oss) and a hybrid (LFM2): the
attention, MLP (the whole expert block) and residual stream patched equal a reference written here from the
modules' names in transformers' classes (hooks on layers[n].self_attn / .mlp / the layer, one uncached forward),
while the backend finds its sites from the forward and feeds the clean prompt through the cache in two pieces.
Identities that need no reference: a component patched with the clean prompt's own value changes nothing; every
head of a layer patched equals the layer's attention patched (the output projection is linear and its bias the
same in both runs); with prompts of one length, the residual stream after any layer patched gives the corrupt
prompt's own prediction.

Tolerances (float32): logits 1e-4 between implementations and against the reference, 1e-5 for the identities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import CaptureError, load_model
from engine.hf_backend import HFModel
from engine.hf_backend.attention import active
from engine.patching import align_positions, patch, patch_sweep
from tests import hf_factories, modern_factories

pytest.importorskip("transformers")

CLEAN = list(range(5, 19))  # 14 tokens
CORRUPT = [40, 41, 42, 43, 44, 45, 46, *range(9, 19)]  # 17 tokens: another start, the same last ten
SAME_LENGTH = [60 + (7 * i) % 50 for i in range(14)]  # another prompt as long as CLEAN
TOL, ID_TOL = 1e-4, 1e-5
_BUILT: dict = {}


def _model(name: str, tmp_path_factory) -> HFModel:
    if name not in _BUILT:
        build = modern_factories.llama if name == "llama" else hf_factories.ARCHITECTURES[name]
        folder = build(tmp_path_factory.mktemp(name) / "ckpt")
        _BUILT[name] = (load_model(folder, device="cpu", backend="transformers"), folder)
    return _BUILT[name][0]


def _native(tmp_path_factory):
    _model("llama", tmp_path_factory)
    if "native" not in _BUILT:
        _BUILT["native"] = load_model(_BUILT["llama"][1], device="cpu")
    return _BUILT["native"]


def test_llama_patches_equal_the_native_engines(tmp_path_factory):
    ours, native = _model("llama", tmp_path_factory), _native(tmp_path_factory)
    assert isinstance(ours, HFModel) and not isinstance(native, HFModel)
    for comp in ("L1.H3", "L0.attn", "L1.MLP", "L1.N7", "L0.resid", "L0.H1, L1.N2, L1.attn"):
        a = patch(native, CLEAN, CORRUPT, comp, capture=False)
        b = patch(ours, CLEAN, CORRUPT, comp, capture=False, split=6)  # the clean prompt through the cache in pieces
        assert b.pairs == a.pairs == tuple(align_positions(14, 17)) and b.label == a.label
        assert np.abs(a.after_logits - a.before_logits).max() > 0.01, comp  # not vacuous: the patch moves logits
        np.testing.assert_allclose(b.after_logits, a.after_logits, atol=TOL, err_msg=comp)
        np.testing.assert_allclose(b.before_logits, a.before_logits, atol=TOL, err_msg=comp)
        np.testing.assert_allclose(b.after, a.after, atol=TOL, err_msg=comp)
    a = patch(native, CLEAN, CORRUPT, "L1.H0", positions=[3, 10], align="start", position=12, capture=False)
    b = patch(ours, CLEAN, CORRUPT, "L1.H0", positions=[3, 10], align="start", position=12)
    assert b.pairs == a.pairs == ((3, 3), (10, 10)) and b.trace is not None
    np.testing.assert_allclose(b.after_logits, a.after_logits, atol=TOL)


def test_llama_sweep_equals_the_native_engines_batched_and_one_by_one(tmp_path_factory):
    ours, native = _model("llama", tmp_path_factory), _native(tmp_path_factory)
    a = patch_sweep(native, CLEAN, CORRUPT, 40, 41)
    b = patch_sweep(ours, CLEAN, CORRUPT, 40, 41)  # every head of a layer in one batch
    c = patch_sweep(ours, CLEAN, CORRUPT, 40, 41, batch=1)
    assert np.isfinite(b.patched).all() and np.abs(a.effect).max() > 0.01
    np.testing.assert_allclose(b.patched, a.patched, atol=TOL)
    np.testing.assert_allclose(c.patched, b.patched, atol=ID_TOL)
    assert (b.clean_metric, b.corrupt_metric) == pytest.approx((a.clean_metric, a.corrupt_metric), abs=TOL)
    one = patch(ours, CLEAN, CORRUPT, "L1.H2", capture=False)  # a cell is that head patched alone
    assert b.patched[1, 2] == pytest.approx(one.after_logits[40] - one.after_logits[41], abs=TOL)


def _reference(model: HFModel, what: str, layer: int, clean: list[int], corrupt: list[int]) -> np.ndarray:
    """Logits at the clean prompt's last position with layers[layer]'s self_attn / mlp / whole layer output taken
    from the corrupt run at the positions aligned at the end: hooks by module name, uncached forwards."""
    text = model.hf.model
    block = text.layers[layer]
    module = {"attn": lambda: block.self_attn, "mlp": lambda: getattr(block, "mlp", None) or block.feed_forward,
              "resid": lambda: block}[what]()
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    seen = []
    pairs = align_positions(len(clean), len(corrupt))

    def write(_m, _a, out):  # noqa: ANN001, ANN202
        t = first(out).clone()
        for p, q in pairs:
            t[:, p] = seen[0][:, q]
        return (t, *out[1:]) if isinstance(out, tuple) else t

    with torch.inference_mode(), active(model._state(None)):
        h = module.register_forward_hook(lambda _m, _a, out: seen.append(first(out).clone()))
        try:
            model.hf(input_ids=torch.tensor([corrupt]), use_cache=False)
        finally:
            h.remove()
        h = module.register_forward_hook(write)
        try:
            logits = model.hf(input_ids=torch.tensor([clean]), use_cache=False).logits[0, -1]
        finally:
            h.remove()
    return logits.float().numpy()


CASES = {"qwen3_moe": (1, 1), "gpt_oss": (0, 1), "lfm2": (1, 2)}  # (an attention layer, an MLP layer)


@pytest.mark.parametrize("name", list(CASES))
def test_experts_sinks_and_hybrids_patch_attention_mlp_and_stream(name, tmp_path_factory):
    model = _model(name, tmp_path_factory)
    attn_layer, mlp_layer = CASES[name]
    last = model.n_layers - 1
    for what, layer in (("attn", attn_layer), ("mlp", mlp_layer), ("resid", 0)):
        comp = f"L{layer}.{'MLP' if what == 'mlp' else what}"
        got = patch(model, CLEAN, CORRUPT, comp, capture=False, split=5)
        assert np.abs(got.after_logits - got.before_logits).max() > 0.01, comp
        np.testing.assert_allclose(got.after_logits, _reference(model, what, layer, CLEAN, CORRUPT), atol=TOL,
                                   err_msg=comp)
        same = patch(model, CLEAN, CLEAN, comp, capture=False)
        np.testing.assert_allclose(same.after_logits, same.before_logits, atol=ID_TOL, err_msg=comp)
    heads = ", ".join(f"L{attn_layer}.H{h}" for h in range(model.n_heads))
    every = patch(model, CLEAN, CORRUPT, heads, capture=False)
    attn = patch(model, CLEAN, CORRUPT, f"L{attn_layer}.attn", capture=False)
    np.testing.assert_allclose(every.after_logits, attn.after_logits, atol=ID_TOL)
    whole = patch(model, CLEAN, SAME_LENGTH, f"L{last - 1}.resid", capture=False)  # every position: the corrupt's own
    np.testing.assert_allclose(whole.after_logits, _logits(model, SAME_LENGTH), atol=ID_TOL)
    np.testing.assert_allclose(whole.after, whole.corrupt, atol=ID_TOL)


def _logits(model: HFModel, ids: list[int]) -> np.ndarray:
    with torch.inference_mode(), active(model._state(None)):
        return model.hf(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float().numpy()


def test_refusals_say_what_the_layer_is(tmp_path_factory):
    moe, hybrid = _model("qwen3_moe", tmp_path_factory), _model("lfm2", tmp_path_factory)
    with pytest.raises(CaptureError, match="mixture of experts"):
        patch(moe, CLEAN, CORRUPT, "L1.N3")
    for comp in ("L0.H1", "L0.attn"):
        with pytest.raises(CaptureError, match="no attention \\(short convolution\\)"):
            patch(hybrid, CLEAN, CORRUPT, comp)
    with pytest.raises(CaptureError, match="layers are 0..2"):
        patch(hybrid, CLEAN, CORRUPT, "L3.MLP")
    assert float(np.abs(patch(hybrid, CLEAN, CORRUPT, "L0.N3", capture=False).after_logits).max()) > 0  # dense: fine
    sweep = patch_sweep(hybrid, CLEAN, CORRUPT, 40, 41)  # layers without attention: nan, said in the note
    assert np.isnan(sweep.patched[[0, 2]]).all() and np.isfinite(sweep.patched[1]).all()
    assert "layers 0, 2 have no heads" in sweep.note and "short convolution" in sweep.note


def test_an_encoder_only_model_patches_its_encoder(tmp_path_factory):
    """ModernBERT (bidirectional, alternating local windows): every head of a layer equals its attention, a
    component patched with its own value changes nothing, the sweep cell is that head patched alone."""
    model = _model("modernbert", tmp_path_factory)
    heads = patch(model, CLEAN, CORRUPT, ", ".join(f"E1.H{h}" for h in range(model.n_heads)), capture=False)
    attn = patch(model, CLEAN, CORRUPT, "E1.attn", capture=False)
    assert np.abs(attn.after_logits - attn.before_logits).max() > 0.01
    np.testing.assert_allclose(heads.after_logits, attn.after_logits, atol=ID_TOL)
    same = patch(model, CLEAN, CLEAN, "E2.MLP", capture=False)
    np.testing.assert_allclose(same.after_logits, same.before_logits, atol=ID_TOL)
    sweep = patch_sweep(model, CLEAN, CORRUPT, 40, 41, kind="encoder")
    assert np.isfinite(sweep.patched).all()
    assert sweep.patched[1, 2] == pytest.approx(float(np.subtract(*patch(model, CLEAN, CORRUPT, "E1.H2", capture=False)
                                                                  .after_logits[[40, 41]])), abs=TOL)
