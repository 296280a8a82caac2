"""A model over several devices on a GPU machine: half the blocks on cuda:0 and half offloaded to the CPU (and,
with two GPUs, half on each) give the logits, patterns, steps and explanations of the same model all on cuda:0,
within float32 tolerances (CPU and GPU kernels sum in different orders). Every parameter is where the plan said
and each layer's KV cache lives on its block's device. Native engine and transformers backend (accelerate's
device map; skipped where accelerate is not installed). Runs only on a GPU: `pytest -m cuda tests/cuda`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import Session, load_model
from engine.explain import attribute
from engine.multi_device import auto_placement, blocks, sizes
from engine.placement import Placement
from tests.cuda.devices import needs_cuda

pytestmark = [pytest.mark.cuda, needs_cuda]

ATTN_TOL, LOGIT_TOL = 2e-5, 2e-4
PROMPT = "In the beginning God created the heaven and the earth"
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="fewer than two CUDA GPUs here")


def halves(n: int, first: str, second: str, head: str) -> Placement:
    return Placement(tuple(first if i < n // 2 else second for i in range(n)), first, head, {})


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    from tests import modern_factories

    return modern_factories.llama(tmp_path_factory.mktemp("untied") / "llama", num_hidden_layers=4)


def _compare(whole, split, prompt: str, source: str | None = None) -> None:
    for mode in ("patterns", "rebuild"):
        whole.capture_mode = split.capture_mode = mode
        a, b = Session(whole, prompt, source=source), Session(split, prompt, source=source)
        for _ in range(4):
            assert a.step().token_id == b.step().token_id
        a.back(), b.back()
        a.step(), b.step()
        np.testing.assert_allclose(a.trace.logits, b.trace.logits, atol=LOGIT_TOL, rtol=1e-4)
        for kind in whole.kinds:
            for layer in range(whole.layers_by_kind[kind]):
                np.testing.assert_allclose(a.trace.attention(kind, layer), b.trace.attention(kind, layer), atol=ATTN_TOL)
        # each decoder layer's cache on its block's device
        for i, layer_cache in enumerate(b._cache.layers):
            block = split.net.decoder.layers[i]
            assert layer_cache.k.device == block.attn.out.weight.device, i
    whole.capture_mode = split.capture_mode = "auto"


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-seq2seq", "untied"])
def test_cuda_plus_cpu_offload_equals_all_on_cuda(name, untied):
    source = untied if name == "untied" else name
    whole = load_model(source, device="cuda:0", dtype="float32")
    n = len(blocks(whole.net))
    head = "cpu" if whole.net.lm_head is not None else "cuda:0"
    split = load_model(source, device=halves(n, "cuda:0", "cpu", head), dtype="float32")
    assert split.devices == ("cuda:0", "cpu")
    for i, (_, block) in enumerate(blocks(split.net)):
        want = "cuda" if i < n // 2 else "cpu"
        assert {p.device.type for p in block.parameters()} == {want} and block.attn.gate.device.type == want
    print(f"\n{name}: {split.placement}")
    src = "In the beginning God created the heaven" if name == "tiny-seq2seq" else None
    _compare(whole, split, "In the" if src else PROMPT, src)
    if name != "tiny-seq2seq":
        split.set_head_gate("self", n - 1, 0, 0.0)
        whole.set_head_gate("self", n - 1, 0, 0.0)
        ta, tb = whole.run(PROMPT), split.run(PROMPT)
        np.testing.assert_allclose(ta.logits, tb.logits, atol=LOGIT_TOL, rtol=1e-4)
        aa, ab = attribute(whole, ta, 3), attribute(split, tb, 3)
        np.testing.assert_allclose(aa.heads, ab.heads, atol=1e-3)


def test_transformers_backend_with_cpu_offload(untied):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    whole = load_model(untied, device="cuda:0", dtype="float32", backend="transformers")
    split = load_model(untied, device=halves(4, "cuda:0", "cpu", "cpu"), dtype="float32", backend="transformers")
    assert split.devices == ("cuda:0", "cpu") and split.hf.lm_head.weight.device.type == "cpu"
    assert split.hf.model.layers[0].self_attn.q_proj.weight.device.type == "cuda"
    print(f"\ntransformers: {split.placement}")
    a, b = Session(whole, PROMPT), Session(split, PROMPT)
    for _ in range(4):
        assert a.step().token_id == b.step().token_id
    np.testing.assert_allclose(a.trace.logits, b.trace.logits, atol=LOGIT_TOL, rtol=1e-4)
    for layer in range(4):
        np.testing.assert_allclose(a.trace.attention("self", layer), b.trace.attention("self", layer), atol=ATTN_TOL)


@two_gpus
def test_two_gpus(untied):
    whole = load_model(untied, device="cuda:0", dtype="float32")
    split = load_model(untied, device=halves(4, "cuda:0", "cuda:1", "cuda:1"), dtype="float32")
    assert split.devices == ("cuda:0", "cuda:1")
    _compare(whole, split, PROMPT)


@two_gpus
def test_auto_spreads_over_two_gpus_when_one_is_too_small(untied):
    whole = load_model(untied, device="cuda:0", dtype="float32")
    embed, layer, _ = sizes(whole.net, 4)
    room = int((embed + layer[0] + layer[1]) / 0.9) + 1
    plan = auto_placement(whole.net, torch.float32, {"cuda:0": room, "cuda:1": 10**11, "cpu": 10**11})
    assert plan.devices == ("cuda:0", "cuda:1")
    split = load_model(untied, device=plan, dtype="float32")
    _compare(whole, split, PROMPT)
