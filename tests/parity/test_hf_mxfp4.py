"""gpt-oss with MXFP4 expert weights (as gpt-oss-20b/120b ship) opens on the transformers backend, dequantised by
transformers, and the model says so. The checkpoint is a tiny synthetic one laid out as the real safetensors are
(tests/mxfp4_factory.py); the dequantised weights are checked against our own FP4 decoder, the logits against
transformers' own load of the same folder and against a plain bfloat16 checkpoint holding the decoded values."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Session, load_model

transformers = pytest.importorskip("transformers")

PROMPT = list(range(5, 25))  # 20 tokens: past the sliding window (5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tests import mxfp4_factory

    return mxfp4_factory.build(tmp_path_factory.mktemp("mxfp4"))


def _theirs(folder, dtype):
    import torch

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=dtype).eval()
    with torch.no_grad():
        return model(torch.tensor([PROMPT])).logits[0].float().numpy()


def test_our_fp4_decoder_reads_the_e2m1_codes():
    from tests.mxfp4_factory import fp4_e2m1

    assert fp4_e2m1(np.arange(16)).tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]


def test_mxfp4_opens_dequantised_to_bfloat16_and_says_so(folders):
    import torch

    mx, _reference, values = folders
    model = load_model(mx, device="cpu")
    assert model.backend == "transformers" and model.config.model_type == "gpt_oss"
    assert model.quantization == "mxfp4, dequantised to bfloat16"
    assert model.dtype == torch.bfloat16 and "mxfp4" in model.dtype_reason and "bfloat16" in model.dtype_reason
    params = dict(model.hf.named_parameters())
    for name, w in values.items():  # transformers' dequantisation = our decoder, bit for bit
        assert params[name].dtype == torch.bfloat16
        np.testing.assert_array_equal(params[name].detach().float().numpy(), w)
    assert len(values) == 4 and all(np.abs(w).max() > 0 for w in values.values())


def test_mxfp4_logits_equal_transformers_and_the_decoded_bfloat16_checkpoint(folders):
    import torch

    mx, reference, _values = folders
    ours = Session(load_model(mx, device="cpu"), PROMPT).trace
    # the same weights as a plain bfloat16 checkpoint, through the same code: the same numbers
    plain = Session(load_model(reference, device="cpu", dtype="bfloat16"), PROMPT).trace
    np.testing.assert_array_equal(ours.logits, plain.logits)
    np.testing.assert_array_equal(ours.routing(1).experts, plain.routing(1).experts)
    # transformers' eager in bfloat16 rounds elsewhere than our row-chunked attention: measured 0.16 apart here,
    # each ~0.2 from the float32 result (logits up to 5.7); float32 below is the tight comparison
    assert np.abs(ours.logits - _theirs(mx, torch.bfloat16)).max() <= 0.35


def test_mxfp4_in_float32_is_transformers_eager(folders):
    import torch

    mx, reference, _values = folders
    model = load_model(mx, device="cpu", dtype="float32")
    assert model.quantization == "mxfp4, dequantised to float32" and model.dtype == torch.float32
    session = Session(model, PROMPT)
    theirs = _theirs(mx, torch.float32)
    assert np.abs(session.trace.logits - theirs).max() <= 1e-4
    np.testing.assert_array_equal(_theirs(reference, torch.float32), theirs)  # transformers too: same weights
    plain = Session(load_model(reference, device="cpu", dtype="float32"), PROMPT)
    np.testing.assert_array_equal(session.trace.logits, plain.trace.logits)
    for _ in range(4):
        assert session.step().token_id == plain.step().token_id


def test_an_unquantised_model_says_nothing(folders):
    _mx, reference, _values = folders
    assert load_model(reference, device="cpu").quantization == ""
