"""Parity with the reference implementation (transformers, eager attention) on random checkpoints.

Tolerances: every attention pattern within 1e-5 (absolute), logits within 1e-4, 32 greedy tokens identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import Session, load_model
from tests import factories

transformers = pytest.importorskip("transformers")

ATTN_TOL, LOGIT_TOL, N_GREEDY = 1e-5, 1e-4, 32
REFERENCE = {
    "gpt2": "GPT2LMHeadModel", "bert": "BertForMaskedLM", "bert-no-head": "BertModel", "roberta": "RobertaForMaskedLM",
    "roberta-gelu-new": "RobertaForMaskedLM",
    "t5-v1.0": "T5ForConditionalGeneration", "t5-v1.1": "T5ForConditionalGeneration",
    "bart": "BartForConditionalGeneration", "marian": "MarianMTModel", "transformer": "MarianMTModel",
}
SOURCE = "And God said, Let there be light: and there was light."
PROMPT = "In the beginning God"


@pytest.fixture(scope="module", params=list(factories.ARCHITECTURES))
def pair(request, tmp_path_factory):
    name = request.param
    folder = factories.ARCHITECTURES[name](tmp_path_factory.mktemp(name) / "ckpt")
    ref = getattr(transformers, REFERENCE[name]).from_pretrained(folder, attn_implementation="eager").eval()
    return name, load_model(folder, device="cpu"), ref


def _close(ours: np.ndarray, theirs: torch.Tensor, tol: float, what: str) -> None:
    theirs = theirs.detach().float().numpy()
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != reference {theirs.shape}"
    err = float(np.abs(ours - theirs).max())
    assert err <= tol, f"{what}: max abs difference {err:.2e} > {tol:.0e}"


def test_patterns_and_logits(pair):
    name, model, ref = pair
    tok = model.tokenizer
    with torch.no_grad():
        if model.family == "decoder":
            ids = tok.encode(PROMPT)
            out = ref(torch.tensor([ids]), output_attentions=True)
            trace = model.run(ids)
            for i, a in enumerate(out.attentions):
                _close(trace.attention("self", i), a[0], ATTN_TOL, f"{name} decoder.{i}.attn")
            _close(trace.logits, out.logits[0], LOGIT_TOL, f"{name} logits")
        elif model.family == "encoder":
            ids = tok.encode(SOURCE)
            out = ref(torch.tensor([ids]), output_attentions=True)
            trace = model.run(ids)
            for i, a in enumerate(out.attentions):
                _close(trace.attention("encoder", i), a[0], ATTN_TOL, f"{name} encoder.{i}.attn")
            if name == "bert-no-head":
                assert trace.logits is None and trace.no_logits_reason
            else:
                _close(trace.logits, out.logits[0], LOGIT_TOL, f"{name} logits")
        else:
            src = tok.encode(SOURCE)
            dec = [model.config.decoder_start_token_id] + tok.encode(PROMPT, special_tokens=False)
            out = ref(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec]), output_attentions=True)
            trace = model.run(dec, source=src)
            assert trace.attention("cross", 0).shape == (model.n_heads, len(dec), len(src))
            for kind, atts in (("encoder", out.encoder_attentions), ("self", out.decoder_attentions),
                               ("cross", out.cross_attentions)):
                for i, a in enumerate(atts):
                    _close(trace.attention(kind, i), a[0], ATTN_TOL, f"{name} {kind} layer {i}")
            _close(trace.logits, out.logits[0], LOGIT_TOL, f"{name} logits")


def test_greedy_generation_matches_reference(pair):
    name, model, ref = pair
    if model.family == "encoder":
        pytest.skip("encoders do not generate")
    tok = model.tokenizer
    kw = dict(max_new_tokens=N_GREEDY, do_sample=False, num_beams=1, pad_token_id=model.config.pad_token_id or 0)
    with torch.no_grad():
        if model.family == "decoder":
            ids = tok.encode(PROMPT)
            expected = ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), **kw)
            expected = expected[0, len(ids):].tolist()
            session = Session(model, ids)
        else:
            src = tok.encode(SOURCE)
            expected = ref.generate(torch.tensor([src]), decoder_start_token_id=model.config.decoder_start_token_id, **kw)
            expected = expected[0, 1:].tolist()
            session = Session(model, None, source=src)
    ours = []
    while len(ours) < N_GREEDY and not session.finished:
        ours.append(session.step().token_id)
    assert ours == expected[: len(ours)] and len(ours) == len(expected), f"{name}: {ours} != {expected}"
