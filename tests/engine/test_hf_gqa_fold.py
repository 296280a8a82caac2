"""The transformers backend's decode step folds the query heads sharing a key/value head into rows of the CPU's
fused kernel instead of copying the keys per query head: the same outputs and log-sum-exps as the float32 row
chunks that rebuild patterns (and as the copying path)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")


@pytest.mark.parametrize(("T", "S"), [(1, 37), (5, 5)])
def test_folded_gqa_equals_the_row_chunks(T, S):
    from engine.hf_backend import attention as A

    if A._FLASH_CPU is None:
        pytest.skip("this torch has no fused CPU attention with log-sum-exps")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 8, T, 16, generator=g)
    k, v = torch.randn(1, 2, S, 16, generator=g), torch.randn(1, 2, S, 16, generator=g)
    y, lse = A._attend_fused(q, k, v, 0.25, False)  # not causal: folded
    y_ref, lse_ref = A._attend_chunked(q, k, v, None, 0.25, None, None)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_ref, atol=1e-5, rtol=1e-5)
    kr, vr = k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1)  # the copying path
    y_copy, lse_copy = A._FLASH_CPU(q, kr, vr, 0.0, False, attn_mask=None, scale=0.25)
    torch.testing.assert_close(y, y_copy, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse, lse_copy.float(), atol=1e-6, rtol=1e-6)
