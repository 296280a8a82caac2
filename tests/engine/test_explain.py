"""engine.explain: the chain inside one head reproduces the recorded pattern; direct logit attribution sums to
the logit for every norm placement (pre, post, sandwich, output) and family; a one-layer model by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import Session, load_model
from engine.config import ModelConfig
from engine.errors import CaptureError
from engine.explain import attribute, inside_head, nearest_tokens, positions_view
from engine.inference_layout import to_inference_layout
from engine.model import Model
from engine.network import Transformer
from tests import factories, modern_factories

SOURCE = "And God said, Let there be light: and there was light."
NAMES = ["gpt2", "bert", "t5-v1.0", "bart", "marian", "llama", "gemma2", "qwen3", "olmo2", "phi3", "mistral"]


def _build(name, folder):
    return (factories.ARCHITECTURES.get(name) or modern_factories.ARCHITECTURES[name])(folder)


@pytest.fixture(scope="module", params=NAMES)
def trace_and_model(request, tmp_path_factory):
    model = load_model(_build(request.param, tmp_path_factory.mktemp(request.param) / "ckpt"), device="cpu")
    tok = model.tokenizer
    if model.family == "encoder":
        session = Session(model, tok.encode(SOURCE))
    elif model.family == "encoder-decoder":
        session = Session(model, None, source=tok.encode(SOURCE))
        for _ in range(4):
            session.step()
    else:
        session = Session(model, list(range(5, 17)))
        session.step()
    return request.param, model, session.trace


def test_inside_head_reproduces_the_recorded_pattern(trace_and_model):
    name, model, trace = trace_and_model
    for kind in trace.kinds:
        layer, head = trace.n_layers[kind] - 1, trace.n_heads - 1
        query = trace.attention_shape(kind, layer)[1] - 2
        inside = inside_head(model, trace, kind, layer, head, query)
        want = trace.attention_row(kind, layer, query)[head]
        np.testing.assert_allclose(inside.pattern[: want.shape[0]], want, atol=1e-5, err_msg=f"{name} {kind}")
        assert inside.kv_head == head // (trace.n_heads // trace.n_kv_heads)
        np.testing.assert_allclose(inside.raw, inside.k @ inside.q, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(inside.scaled, inside.raw * inside.scale, rtol=1e-6)
        np.testing.assert_allclose(inside.weighted_norms, inside.pattern * inside.value_norms, rtol=1e-6)
        assert inside.pattern[inside.blocked].sum() == 0 and inside.pattern.sum() == pytest.approx(1, abs=1e-5)
        assert inside.what_if_unmasked[inside.blocked].sum() > 0 or not inside.blocked.any()
        if inside.scale != 1.0:
            assert not np.allclose(inside.what_if_unscaled, inside.pattern)


def test_attributions_sum_to_the_logit(trace_and_model):
    name, model, trace = trace_and_model
    if model.family == "encoder":
        with pytest.raises(CaptureError, match="masked-LM"):
            attribute(model, trace, 1)
        return
    for position in (len(trace) - 1, 1):
        a = attribute(model, trace, position)
        assert a.token_id == int(np.argmax(trace.logits_at(position)))
        assert a.total == pytest.approx(a.logit, rel=1e-4, abs=1e-3), f"{name} @ {position}: {a.total} vs {a.logit}"
        assert a.heads.shape == (model.n_layers, model.n_heads) and a.mlps.shape == (model.n_layers,)
        assert np.abs(a.heads).sum() > 0 and (a.head_write_norms >= 0).all()
        other = attribute(model, trace, position, token_id=3)
        assert other.total == pytest.approx(other.logit, rel=1e-4, abs=1e-3)


def test_one_layer_one_head_by_hand():
    torch.manual_seed(0)
    cfg = ModelConfig(family="decoder", vocab_size=11, d_model=8, n_heads=1, d_ff=16, n_decoder_layers=1,
                      max_positions=16, norm="rmsnorm", position_scheme="learned", attn_bias=False, ffn_bias=False)
    net = Transformer(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.7)
    net.init_buffers(torch.device("cpu"))
    raw_net = net
    w = {k: v.clone() for k, v in raw_net.state_dict().items()}
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    from engine.tokenizer import Tokenizer

    tok = Tokenizer(HFTokenizer(models.WordLevel({f"t{i}": i for i in range(11)}, unk_token="t0")))
    model = Model(to_inference_layout(net.eval()), tok)
    ids = [3, 1, 4, 1, 5]
    trace = model.run(ids)
    inside = inside_head(model, trace, "self", 0, 0, 4)
    x = w["embed.weight"][ids] + w["decoder.positions.weight"][: len(ids)]  # embeddings + learned positions
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w["decoder.layers.0.attn_norm.weight"]
    q, k, v = (h @ w["decoder.layers.0.attn.qkv.weight"].t()).split(8, dim=-1)
    raw = k @ q[4]
    np.testing.assert_allclose(inside.raw, raw.numpy(), rtol=1e-5, atol=1e-5)
    p = torch.softmax(raw / np.sqrt(8), dim=-1).numpy()
    np.testing.assert_allclose(inside.pattern, p, atol=1e-6)
    norms = (v @ w["decoder.layers.0.attn.out.weight"].t()).norm(dim=-1).numpy()
    np.testing.assert_allclose(inside.value_norms, norms, rtol=1e-5)
    a = attribute(model, trace, 4, token_id=2)
    assert a.total == pytest.approx(float(trace.logits_at(4)[2]), rel=1e-5, abs=1e-4)


def test_embeddings_and_positions(tmp_path):
    gpt2 = load_model(factories.gpt2(tmp_path / "g"), device="cpu")
    near = nearest_tokens(gpt2, 10, k=5)
    assert len(near) == 5 and all(t != 10 for t, _, _ in near) and near[0][2] >= near[-1][2]
    view = positions_view(gpt2, 32)
    assert view["scheme"] == "learned" and view["array"].shape == (32, 32)
    assert np.allclose(np.diag(view["array"]), 1, atol=1e-5)
    llama = load_model(modern_factories.llama(tmp_path / "l"), device="cpu")
    rope = positions_view(llama)
    assert rope["scheme"] == "rotary" and rope["array"].shape == (1, 8) and "llama3" in rope["labels"][0]
    with pytest.raises(CaptureError):
        nearest_tokens(gpt2, 10**6)
