"""The GPU benchmarks compare the engine with transformers on one set of weights (tools/bench_cuda.py builds
transformers' model on the device and hands its tensors to the engine through the converter table). Check, on
tiny shapes, that the two really are the same model: equal logits and patterns, and shared storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.cuda.devices import CUDA_MARKS

pytest.importorskip("transformers")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_MARKS)])
@pytest.mark.parametrize("shape", ["gpt2", "llama8b"])
def test_benchmark_pair_is_one_model(shape, device):
    from tools import bench_cuda

    fields = bench_cuda.TINY[shape]
    ref = bench_cuda.reference_model(fields, torch.device(device), torch.float32)
    model = bench_cuda.engine_model(ref, fields, shape)
    ids = list(range(3, 40))
    with torch.inference_mode():
        out = ref(torch.tensor([ids], device=device), output_attentions=True)
    trace = model.run(ids)
    assert float(np.abs(trace.logits - out.logits[0].float().cpu().numpy()).max()) <= 1e-4
    for i, a in enumerate(out.attentions):
        assert float(np.abs(trace.attention("self", i) - a[0].float().cpu().numpy()).max()) <= 1e-5
    theirs = {t.data_ptr() for t in ref.state_dict().values()}
    assert model.net.embed.weight.data_ptr() in theirs  # the very same storage, not a copy
