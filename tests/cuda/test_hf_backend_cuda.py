"""The transformers backend (engine.hf_backend) on CUDA in float32: patterns and logits against transformers
eager on the CPU with the CPU suite's tolerances (tests/parity/test_hf_backend.py), 16 greedy tokens equal to
`generate`, and back/branch equal to a fresh run. On CUDA every attention layer takes the float32 row chunks (the
fused kernel that returns row log-sum-exps is the CPU's), so this is the check of that path on a GPU.
Runs only on a GPU: `pytest -m cuda tests/cuda` (tools/gpu_check.sh does)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import Session, load_model
from tests.cuda.devices import needs_cuda

pytestmark = [pytest.mark.cuda, needs_cuda]
transformers = pytest.importorskip("transformers")

ATTN_TOL, LOGIT_TOL, N_GREEDY = 1e-5, 1e-4, 16
PROMPT = list(range(5, 25))


@pytest.fixture(scope="module", params=["gpt_oss", "qwen3_moe", "gemma3", "lfm2", "modernbert"])
def pair(request, tmp_path_factory):
    from tests import hf_factories
    from tests.parity.test_hf_backend import _reference

    name = request.param
    folder = hf_factories.ARCHITECTURES[name](tmp_path_factory.mktemp(name) / "ckpt")
    model = load_model(folder, device="cuda", dtype="float32")
    assert model.device.type == "cuda"
    return name, model, _reference(folder, name == "modernbert")


def test_patterns_logits_and_steps_on_cuda(pair):
    name, model, ref = pair
    kind = "encoder" if name == "modernbert" else "self"
    with torch.no_grad():
        out = ref(torch.tensor([PROMPT]), output_attentions=True)
    trace = model.run(PROMPT)
    for layer, a in zip(model.attention_layers, [a for a in out.attentions if a is not None]):
        assert np.abs(trace.attention(kind, layer) - a[0].numpy()).max() <= ATTN_TOL, f"{name} layer {layer}"
    assert np.abs(trace.logits - out.logits[0].numpy()).max() <= LOGIT_TOL
    if kind == "encoder":
        return
    eos = model.config.eos_token_id
    with torch.no_grad():
        expected = ref.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
                                max_new_tokens=N_GREEDY, do_sample=False, pad_token_id=eos)[0, len(PROMPT):]
    session = Session(model, PROMPT)
    while len(session.ids) < len(PROMPT) + N_GREEDY and not session.finished:
        session.step()
    assert session.ids[len(PROMPT):] == expected.tolist()
    session.back()
    session.branch(7)
    fresh = model.run(session.ids)
    for layer in model.attention_layers:
        assert np.abs(session.trace.attention(kind, layer) - fresh.attention(kind, layer)).max() <= ATTN_TOL
