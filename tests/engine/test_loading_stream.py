"""Streaming loads: progress, cancellation, the dtype policy, the shared unembedding, quantised and MoE refusals."""

from __future__ import annotations

import gc
import json
import shutil
import threading
import weakref

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import engine.inference_layout as layout
from engine import CheckpointError, UnsupportedArchitectureError, load_model
from engine.checkpoints.mapping import Source, rows
from engine.checkpoints.weights import WeightFiles, fill_piece, pieces
from engine.device import choose_dtype
from engine.errors import EngineError, LoadCancelled

GB = 10**9


@pytest.fixture
def gpt_folder(folders, tmp_path):
    dst = tmp_path / "gpt"
    shutil.copytree(folders["gpt2"], dst)
    return dst


@pytest.fixture
def sharded(folders, tmp_path):
    from transformers import GPT2LMHeadModel

    dst = tmp_path / "sharded"
    GPT2LMHeadModel.from_pretrained(folders["gpt2"]).save_pretrained(dst, max_shard_size="40KB")
    shutil.copy(folders["gpt2"] / "tokenizer.json", dst)
    return dst


def _bf16_copy(src, dst):
    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}, dst / "model.safetensors")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["dtype"] = "bfloat16"
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# -- progress and cancellation ---------------------------------------------------------------------
def test_progress_runs_from_0_to_1_through_every_shard(sharded):
    calls = []
    load_model(sharded, device="cpu", progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and len(calls) > 5
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    assert all(isinstance(m, str) and m for _, m in calls)
    shards = {p.name for p in sharded.glob("model-*.safetensors")}
    assert len(shards) > 1 and all(any(s in m for _, m in calls) for s in shards)


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_raises_and_frees_what_was_allocated(sharded, monkeypatch, kind):
    allocated = []
    real = layout._allocate

    def watched(*args):
        t = real(*args)
        allocated.append(weakref.ref(t))
        return t

    monkeypatch.setattr(layout, "_allocate", watched)
    event = threading.Event()
    cancel = event if kind == "event" else event.is_set

    def progress(fraction, message):
        if fraction > 0.3:
            event.set()

    with pytest.raises(LoadCancelled, match="cancelled") as info:
        load_model(sharded, device="cpu", progress=progress, cancel=cancel)
    assert isinstance(info.value, EngineError)
    gc.collect()
    assert allocated and all(r() is None for r in allocated), "a cancelled load left tensors alive"
    assert info.value.__traceback__ is not None  # the exception is kept, yet pins nothing


def test_cancel_before_start_reads_nothing(gpt_folder, monkeypatch):
    monkeypatch.setattr(WeightFiles, "read_rows", lambda *a, **k: pytest.fail("read after cancel"))
    with pytest.raises(LoadCancelled):
        load_model(gpt_folder, cancel=lambda: True)


def test_a_failing_progress_callback_frees_too(gpt_folder, monkeypatch):
    allocated = []
    real = layout._allocate
    monkeypatch.setattr(layout, "_allocate", lambda *a: allocated.append(weakref.ref(t := real(*a))) or t)

    def progress(fraction, message):
        if fraction > 0.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_model(gpt_folder, progress=progress)
    gc.collect()
    assert allocated and all(r() is None for r in allocated)


# -- dtype policy -----------------------------------------------------------------------------------
def test_dtype_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_dtype(None, cuda, torch.bfloat16, 10**9)[0] == torch.bfloat16
    assert choose_dtype(None, cuda, torch.float16, 10**9)[0] == torch.float16
    assert choose_dtype(None, cuda, None, 10**9)[0] == torch.float32
    dtype, why = choose_dtype(None, cpu, torch.bfloat16, 10**9, available=20 * GB)
    assert dtype == torch.float32 and "4.0 GB" in why and "20.0 GB free" in why
    dtype, why = choose_dtype(None, cpu, torch.bfloat16, 8 * 10**9, available=20 * GB)
    assert dtype == torch.bfloat16 and "float32 would need 32.0 GB" in why
    dtype, why = choose_dtype("float16", cpu, torch.bfloat16, 10**9, available=1)
    assert dtype == torch.float16 and "asked" in why


def test_bfloat16_checkpoint_loads_as_float32_on_the_cpu_with_its_values(gpt_folder, tmp_path):
    from transformers import GPT2LMHeadModel

    bf = _bf16_copy(gpt_folder, tmp_path / "bf16")
    model = load_model(bf, device="cpu")
    assert model.dtype == torch.float32 and model.dtype_reason.startswith("float32 on the CPU")
    ref = GPT2LMHeadModel.from_pretrained(bf, dtype=torch.float32, attn_implementation="eager").eval()
    ids = model.tokenizer.encode("In the beginning God")
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(model.run(ids).logits, want, atol=1e-4, rtol=0)


def test_dtype_override_keeps_the_plain_layout_in_bfloat16(gpt_folder, tmp_path):
    bf = _bf16_copy(gpt_folder, tmp_path / "bf16")
    model = load_model(bf, device="cpu", dtype="bfloat16")
    net = model.net
    assert model.dtype == torch.bfloat16 and model.dtype_reason == "bfloat16, as asked"
    assert not any(isinstance(m, layout.TransposedLinear) for m in net.modules())  # oneDNN prefers [out, in]
    assert net.unembedding_t.data_ptr() == net.embed.weight.data_ptr()
    exact = load_model(bf, device="cpu")
    np.testing.assert_allclose(model.run("In the").logits, exact.run("In the").logits, atol=0.1, rtol=0.05)


def test_the_unembedding_is_never_a_second_copy(folders, tmp_path):
    gpt = load_model(folders["gpt2"], device="cpu")
    net = gpt.net
    assert net.unembedding_t.is_contiguous() and net.unembedding_t.shape == (32, 300)
    assert net.embed.weight.data_ptr() == net.unembedding_t.data_ptr()  # the embedding is its transposed view
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in net.parameters()}
    storages.update({b.untyped_storage().data_ptr(): b.untyped_storage().nbytes() for b in net.buffers() if b.numel() > 64})
    assert sum(storages.values()) == 4 * gpt.n_params
    dst = shutil.copytree(folders["t5-v1.1"], tmp_path / "t5")  # untied: the unembedding is the lm_head's weight
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(tie_word_embeddings=False)
    cfg.pop("scale_decoder_outputs", None)
    (dst / "config.json").write_text(json.dumps(cfg))
    sd = load_file(dst / "model.safetensors")
    save_file({**sd, "lm_head.weight": torch.randn_like(sd["shared.weight"])}, dst / "model.safetensors")
    t5 = load_model(dst, device="cpu").net
    assert t5.unembedding_t.data_ptr() == t5.lm_head.weight_t.data_ptr()


def test_streamed_load_matches_a_plain_state_dict(sharded):
    model = load_model(sharded, device="cpu")
    ref = {}
    with WeightFiles(sharded) as w:
        for k in w.shapes:
            ref[k] = w.read(k)
    net = model.net
    torch.testing.assert_close(net.decoder.layers[1].attn.qkv.weight_t, ref["transformer.h.1.attn.c_attn.weight"])
    torch.testing.assert_close(net.embed.weight, ref["transformer.wte.weight"])


def test_row_pieces_and_other_ops(gpt_folder):
    with WeightFiles(gpt_folder) as w:
        key = "transformer.h.0.mlp.c_fc.weight"  # (32, 128)
        full = w.read(key)
        dest = torch.empty(10, 128, dtype=torch.float64)
        for p in pieces(rows(key, 5, 15, 32), (key,), dest):
            fill_piece(w, p, lambda n, f: None)
        torch.testing.assert_close(dest, full[5:15].double())
        assert pieces(Source(((key,),), "something-new"), (key,), dest) is None


# -- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("quant, named", [
    ({"quant_method": "gptq", "bits": 4}, "gptq"),
    ({"quant_method": "awq", "bits": 4}, "awq"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes 4-bit"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "fp8"),
])
def test_quantised_configs_are_refused_by_name(gpt_folder, quant, named):
    cfg = json.loads((gpt_folder / "config.json").read_text())
    cfg["quantization_config"] = quant
    (gpt_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match=f"quantization_config \\({named}\\).*not supported"):
        load_model(gpt_folder)


@pytest.mark.parametrize("dtype, named", [(torch.int8, "8-bit integer \\(I8\\)"), (torch.uint8, "\\(U8\\)"),
                                          (torch.float8_e4m3fn, "FP8 \\(e4m3\\) \\(F8_E4M3\\)")])
def test_quantised_tensors_are_refused_by_name(gpt_folder, dtype, named):
    sd = load_file(gpt_folder / "model.safetensors")
    key = "transformer.h.0.attn.c_attn.weight"
    sd[key] = sd[key].clamp(-1, 1).to(dtype)
    save_file(sd, gpt_folder / "model.safetensors")
    with pytest.raises(UnsupportedArchitectureError, match=f"{named} where floats are expected: {key}") as info:
        load_model(gpt_folder)
    assert "Quantised weights are not supported" in str(info.value)


@pytest.mark.parametrize("model_type", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_mixture_of_experts_goes_to_transformers_which_checks_the_weights(gpt_folder, model_type):
    """A MoE model_type now opens through transformers; GPT-2 weights under a MoE config are refused before
    anything is allocated (what the config describes does not fit in what the files hold)."""
    cfg = json.loads((gpt_folder / "config.json").read_text())
    cfg.update(model_type=model_type, num_local_experts=8)
    (gpt_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="describes .*M parameters.*missing or truncated, or config.json belongs"):
        load_model(gpt_folder)
    with pytest.raises(UnsupportedArchitectureError, match="mixture-of-experts is not supported"):
        load_model(gpt_folder, backend="native")


def test_cpu_float32_layout_transposes_only_widening_linears(folders):
    """[in, out] where it was measured faster (out >= in), plain [out, in] for k/v- and down-like ones."""
    ffn = load_model(folders["gpt2"], device="cpu").net.decoder.layers[0].ffn
    assert isinstance(ffn.up, layout.TransposedLinear) and isinstance(ffn.down, torch.nn.Linear)
    torch.testing.assert_close(ffn.up.weight, ffn.up.weight_t.t())  # nn.Linear's view, no copy
    assert ffn.up.weight.data_ptr() == ffn.up.weight_t.data_ptr()


_PEAK_CHILD = """
import sys
from pathlib import Path
import engine.checkpoints
from engine import load_model

def vm(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

load_model(sys.argv[2], device="cpu")  # a tiny one first: imports and one-time set-up are not the load's
before = vm("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
model = load_model(sys.argv[1], device="cpu")
print(vm("VmHWM") - before, 4 * model.n_params, model.dtype)
"""


def test_peak_memory_while_loading_stays_near_the_model(folders, tmp_path):
    """A 12M-parameter bf16 sharded checkpoint loaded as float32 in a fresh process: it grows by the model
    plus a little (no state dict, no second copy of the unembedding). tools/bench_load.py measures a 1B model."""
    import subprocess
    import sys
    from pathlib import Path

    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.factories import byte_level_tokenizer

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak")
    folder = tmp_path / "mid"
    cfg = GPT2Config(vocab_size=32000, n_embd=256, n_layer=4, n_head=4, n_positions=128)
    GPT2LMHeadModel(cfg).to(torch.bfloat16).save_pretrained(folder, max_shard_size="10MB")
    byte_level_tokenizer(300, ["<|endoftext|>"]).save(str(folder / "tokenizer.json"))
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(folder), str(folders["gpt2"])], capture_output=True, text=True, cwd=root,
                         check=True).stdout.split()
    grown, model_bytes = int(out[0]), int(out[1])
    assert out[2] == "torch.float32" and model_bytes > 40e6
    assert grown <= 1.3 * model_bytes, f"loading grew the process by {grown / 1e6:.0f} MB for {model_bytes / 1e6:.0f} MB"


def test_a_model_larger_than_free_ram_is_refused_before_allocating(gpt_folder, monkeypatch):
    import engine.device
    from engine import OutOfMemoryError

    monkeypatch.setattr(engine.device, "available_memory", lambda: 1000)  # the loader asks engine.device at load time
    monkeypatch.setattr(layout, "_allocate", lambda *a: pytest.fail("allocated although it cannot fit"))
    with pytest.raises(OutOfMemoryError, match="needs .* in float32 but only .* free.*bfloat16"):
        load_model(gpt_folder, dtype="float32")
