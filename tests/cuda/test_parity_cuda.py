"""Every architecture on CUDA in float32, with the CPU parity tests' tolerances (tests/parity/test_parity.py,
tests/parity/test_modern.py): each pattern weight within 1e-5 and each logit within 1e-4 of transformers' float32
result on the CPU, 32 greedy tokens identical, and KV-cache steps equal to a full forward.

The CPU suite already checks all of this on the CPU, so these run only on a GPU: `pytest -m cuda tests/cuda`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import Session, load_model
from tests.cuda import cases
from tests.cuda.devices import needs_cuda

pytestmark = [pytest.mark.cuda, needs_cuda]
pytest.importorskip("transformers")

ATTN_TOL, LOGIT_TOL, N_GREEDY = 1e-5, 1e-4, 32


@pytest.fixture(scope="module", params=list(cases.BUILDERS))
def case(request, tmp_path_factory):
    return cases.build(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def model(case):
    m = load_model(case.folder, device="cuda", dtype="float32")
    assert m.device.type == "cuda" and m.dtype == torch.float32
    return m


@pytest.mark.parametrize("mode", ["patterns", "rebuild"])
def test_float32_on_cuda_matches_the_reference(case, model, mode):
    """Both capture modes: stored patterns, and patterns rebuilt from q, k and each row's lse (on CUDA the
    lse comes from the engine's explicit chunked attention, not the CPU's fused kernel)."""
    assert not torch.backends.cuda.matmul.allow_tf32, "TF32 matmuls are on: float32 parity needs them off"
    model.capture_mode = mode
    try:
        assert model.rebuilds_patterns == (mode == "rebuild")
        pattern_err, logit_err = cases.max_errors(cases.run(model, case), case)
    finally:
        model.capture_mode = "auto"
    assert pattern_err <= ATTN_TOL, f"{case.name} ({mode}): a pattern weight differs by {pattern_err:.2e} on CUDA"
    if logit_err is not None:
        assert logit_err <= LOGIT_TOL, f"{case.name}: a logit differs by {logit_err:.2e} on CUDA"


def test_greedy_generation_on_cuda_matches_the_reference(case, model):
    if case.family == "encoder":
        pytest.skip("encoders do not generate")
    expected = cases.greedy_reference(case, N_GREEDY)
    session = Session(model, case.ids if case.family == "decoder" else None, source=case.source)
    ours = []
    while len(ours) < N_GREEDY and not session.finished:
        ours.append(session.step().token_id)
    assert ours == expected[: len(ours)] and len(ours) == len(expected), f"{case.name}: {ours} != {expected}"


def test_kv_cache_steps_on_cuda_equal_a_full_forward(case, model):
    if case.family == "encoder":
        pytest.skip("encoders have no KV cache")
    start = [model.config.decoder_start_token_id] if case.family == "encoder-decoder" else []
    ids = start + cases.STEP_IDS
    session = Session(model, ids[:7], source=case.source)
    for token in ids[7:]:
        session.step(token_id=token)
    stepped = session.trace
    full = model.run(ids, source=case.source) if case.source is not None else model.run(ids)
    kinds = [k for k in ("self", "cross") if k in model.kinds]
    for kind in kinds:
        for i in range(model.layers_by_kind[kind]):
            err = float(np.abs(stepped.attention(kind, i) - full.attention(kind, i)).max())
            assert err <= ATTN_TOL, f"{case.name} {kind} layer {i}: cached steps differ from a full forward by {err:.1e}"
    assert float(np.abs(stepped.logits - full.logits).max()) <= LOGIT_TOL
