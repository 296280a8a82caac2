"""Parity of the modern decoders with transformers (eager attention) on tiny random checkpoints.

Tolerances as for the classic families: every pattern within 1e-5, logits within 1e-4 (float32), 32 greedy
tokens identical to `generate`; the KV cache gives what a full forward gives. Prompts are longer than every
sliding window (5 tokens) and every model has fewer key/value heads than query heads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine import Session, load_model
from engine.errors import CheckpointError, UnsupportedArchitectureError
from tests import modern_factories

transformers = pytest.importorskip("transformers")

ATTN_TOL, LOGIT_TOL, N_GREEDY = 1e-5, 1e-4, 32
PROMPT = list(range(5, 25))  # 20 tokens: four sliding windows


@pytest.fixture(scope="module", params=list(modern_factories.ARCHITECTURES))
def pair(request, tmp_path_factory):
    name = request.param
    folder = modern_factories.ARCHITECTURES[name](tmp_path_factory.mktemp(name) / "ckpt")
    ref = getattr(transformers, modern_factories.REFERENCE[name]).from_pretrained(folder, attn_implementation="eager")
    return name, load_model(folder, device="cpu"), ref.eval()


def _max_err(ours: np.ndarray, theirs: torch.Tensor) -> float:
    theirs = theirs.detach().float().numpy()
    assert ours.shape == theirs.shape, f"shape {ours.shape} != reference {theirs.shape}"
    return float(np.abs(ours - theirs).max())


def test_patterns_and_logits(pair):
    name, model, ref = pair
    assert model.config.n_kv_heads < model.n_heads
    with torch.no_grad():
        out = ref(torch.tensor([PROMPT]), output_attentions=True)
    trace = model.run(PROMPT)
    assert len(out.attentions) == model.n_layers
    for i, a in enumerate(out.attentions):
        pattern = trace.attention("self", i)
        assert pattern.shape == (model.n_heads, len(PROMPT), len(PROMPT))  # one pattern per query head
        assert pattern.max(-1)[:, 5:].mean() > 0.2, "patterns should have structure, not be near-uniform"
        assert _max_err(pattern, a[0]) <= ATTN_TOL, f"{name} decoder.{i}.attn"
    assert _max_err(trace.logits, out.logits[0]) <= LOGIT_TOL, f"{name} logits"


def test_greedy_generation_matches_reference(pair):
    name, model, ref = pair
    eos = model.config.eos_token_id
    with torch.no_grad():
        expected = ref.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
                                max_new_tokens=N_GREEDY, do_sample=False, num_beams=1, pad_token_id=eos)
    expected = expected[0, len(PROMPT):].tolist()
    session = Session(model, PROMPT)
    ours = []
    while len(ours) < N_GREEDY and not session.finished:
        ours.append(session.step().token_id)
    assert ours == expected, f"{name}: {ours} != {expected}"


def test_kv_cache_steps_equal_a_full_forward(pair):
    name, model, _ = pair
    session = Session(model, PROMPT[:7])
    for token in PROMPT[7:]:
        session.step(token_id=token)
    stepped, full = session.trace, model.run(PROMPT)
    for i in range(model.n_layers):
        err = float(np.abs(stepped.attention("self", i) - full.attention("self", i)).max())
        assert err <= ATTN_TOL, f"{name} layer {i}: cached steps differ from a full forward by {err:.1e}"
    assert float(np.abs(stepped.logits - full.logits).max()) <= LOGIT_TOL


def test_grouped_heads_share_their_key_value_head(pair):
    _, model, _ = pair
    trace = model.run(PROMPT)
    assert trace.n_kv_heads == model.config.n_kv_heads


def test_bfloat16_checkpoint_loads_and_agrees(tmp_path):
    folder = modern_factories._build(tmp_path / "bf16", "LlamaConfig", "LlamaForCausalLM", 11, dtype=torch.bfloat16,
                                     rope_parameters=dict(modern_factories.LLAMA3_ROPE))
    header = json.loads((folder / "model.safetensors").read_bytes()[8:][: int.from_bytes(
        (folder / "model.safetensors").read_bytes()[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    ref = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    model = load_model(folder, device="cpu", dtype="float32")
    with torch.no_grad():
        out = ref(torch.tensor([PROMPT]), output_attentions=True)
    trace = model.run(PROMPT)
    assert _max_err(trace.logits, out.logits[0]) <= LOGIT_TOL
    assert max(_max_err(trace.attention("self", i), a[0]) for i, a in enumerate(out.attentions)) <= ATTN_TOL


def _edited(tmp_path, **changes):
    folder = modern_factories.llama(tmp_path / "llama")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("rope", [{"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0},
                                  {"rope_type": "made-up", "rope_theta": 10000.0}])
def test_unsupported_rope_scaling_is_refused_by_name(tmp_path, rope):
    folder = _edited(tmp_path, rope_parameters=rope)
    with pytest.raises(UnsupportedArchitectureError, match=rope["rope_type"]):
        load_model(folder, device="cpu")


def test_mixture_of_experts_is_refused_natively_and_checked_by_transformers(tmp_path):
    """The native engine refuses a MoE type by name; by default it goes to the transformers backend, which refuses
    Llama weights under a Qwen3-MoE config before loading them (issue 26)."""
    folder = _edited(tmp_path, model_type="qwen3_moe", num_experts=8)
    with pytest.raises(UnsupportedArchitectureError, match="qwen3_moe"):
        load_model(folder, device="cpu", backend="native")
    with pytest.raises(CheckpointError, match="missing or truncated, or config.json belongs to another model"):
        load_model(folder, device="cpu")
