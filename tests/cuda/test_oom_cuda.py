"""Out of memory on the GPU, provoked for real: every byte the caching allocator can get is taken, then a few MB
of small blocks are given back (small requests such as a step's activations still succeed, as they would when a
real model runs out). The next step must grow the KV cache (a 4 MB block), which fails; that becomes
engine.OutOfMemoryError, the session is left as it was, and once the memory is freed the same session steps on
and agrees with a full forward. (The CPU suite checks the same with a simulated error: tests/engine/test_engine.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import OutOfMemoryError, Session, load_model
from tests import factories
from tests.cuda.devices import needs_cuda

pytestmark = [pytest.mark.cuda, needs_cuda]
pytest.importorskip("transformers")

MiB = 1024 * 1024


def fill_device(give_back: int = 4 * MiB) -> list[torch.Tensor]:
    """Allocate until nothing is left: one block of almost all free memory, then ever smaller blocks down to
    the allocator's 512-byte minimum, so no cached free block and no new segment can serve another request.
    Then free `give_back` bytes of the smallest (<= 1 MB, small-pool) blocks: less than the 20 MB segment a
    large request needs, even after the allocator releases every cached segment and retries."""
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    hog: list[torch.Tensor] = []
    if free > 1024 * MiB:
        try:
            hog.append(torch.empty(free - 512 * MiB, dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError:
            pass
    size = 512 * MiB
    while size >= 512:
        try:
            while True:
                hog.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError:
            size //= 2
    freed = 0
    while hog and freed < give_back and hog[-1].numel() <= MiB:
        freed += hog.pop().numel()
    return hog


PROMPT = 2048  # the KV cache holds exactly this many: the next step doubles it, (1, 4, 4096, 64) float32 per tensor
# (a context of PROMPT + 16 keeps one context's patterns under the engine's float32 budget: stored exactly)


def wide_gpt2(folder):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = factories.byte_level_tokenizer(300, ["<|endoftext|>"])
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=256, n_layer=2, n_head=4, n_positions=PROMPT + 16,
                     bos_token_id=0, eos_token_id=None, attn_implementation="eager")
    return factories._save(factories._init(GPT2LMHeadModel(cfg), 1), tok, folder)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(wide_gpt2(tmp_path_factory.mktemp("gpt2") / "ckpt"), device="cuda", dtype="float32")


def test_out_of_memory_on_the_gpu_is_an_engine_error_and_the_session_goes_on(model):
    session = Session(model, [5 + i % 250 for i in range(PROMPT)])
    before, ids, cache_length = session.trace, session.ids, session._cache.length
    hog = fill_device()
    try:
        assert hog, "could not allocate anything to provoke the out-of-memory error"
        with pytest.raises(OutOfMemoryError, match="out of memory"):
            session.step()
        with pytest.raises(OutOfMemoryError, match="out of memory"):
            model.run(list(range(5, 255)) * 8)
        with pytest.raises(OutOfMemoryError, match="out of memory"):
            Session(model, list(range(5, 255)) * 8)
        assert session.trace is before and session.ids == ids and session._cache.length == cache_length
    finally:
        del hog
        torch.cuda.empty_cache()
    step = session.step()
    assert step.position == len(ids)
    full = model.run(session.ids)
    assert float(np.abs(session.trace.logits - full.logits).max()) <= 1e-4
    for i in range(model.n_layers):
        assert float(np.abs(session.trace.attention("self", i) - full.attention("self", i)).max()) <= 1e-5
