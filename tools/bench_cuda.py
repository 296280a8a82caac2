"""GPU benchmarks (issue 16), on random checkpoints built directly on the device; `--device cpu` is a dry run
of the same steps with tiny shapes (what tools/gpu_check.sh checks without a GPU).

    python tools/bench_cuda.py --device cuda --json out.json                # every item
    python tools/bench_cuda.py --device cuda --items bandwidth,llama8b
    python tools/bench_cuda.py --device cpu                                  # dry run, tiny shapes
    python tools/bench_cuda.py --save llama1b FOLDER                         # a random checkpoint folder (GUI screenshot)

Items (each in its own try, so one failure or out-of-memory does not sink the rest):
  bandwidth  device-to-device copy of 2 GiB, CUDA events, bytes read + written per second
  gpt2       GPT-2-small shape, float32, context 512: decode step with capture / without; ours / transformers eager
  llama1b    Llama-3.2-1B shape, bfloat16, context 8192: the same two comparisons
  llama8b    Llama-3.1-8B shape, bfloat16: decode step @512 / weight-streaming floor (bytes of the weights a step
             reads ÷ the measured copy bandwidth); prefill of 32k tokens with capture: completes? memory kept for
             inspection (device and host), the longest prefill with capture that completes, and where
             transformers eager with output_attentions runs out

Every comparison alternates its two contestants round by round after a warm-up (tools/bench.py's `compare`) and
reports the median of per-round ratios with its spread; a step is timed with the device synchronised before and
after it (a step ends on the host: sampling reads the logits), pure device work with CUDA events.

The two contestants share one set of weights: transformers builds (and randomly initialises) its model on the
device in the item's dtype, and the engine's network takes the same tensors through the architecture's converter
table (engine.checkpoints): "copy" entries are the very same storage, fused ones (q/k/v) a concatenation.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import OutOfMemoryError, Session  # noqa: E402
from engine.device import is_out_of_memory  # noqa: E402
from engine.model import Model  # noqa: E402
from tools.bench import _step_weights, compare, random_ids, sync, weight_floor  # noqa: E402

log = logging.getLogger("bench_cuda")
GiB = 1024**3

# Hugging Face config.json fields of the shapes measured (random weights; eos None so no step ends a run)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
SHAPES = {
    "gpt2": dict(model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    "llama1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=64, intermediate_size=8192, max_position_embeddings=131072,
                    tie_word_embeddings=True, rms_norm_eps=1e-5, rope_parameters=dict(LLAMA3_ROPE)),
    "llama8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=128, intermediate_size=14336, max_position_embeddings=131072,
                    tie_word_embeddings=False, rms_norm_eps=1e-5, rope_parameters=dict(LLAMA3_ROPE, factor=8.0)),
}
TINY = {  # the dry run's stand-ins: same architectures and code paths, a few MB
    "gpt2": dict(SHAPES["gpt2"], vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=256),
    "llama1b": dict(SHAPES["llama1b"], vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=4096,
                    rope_parameters=dict(LLAMA3_ROPE, original_max_position_embeddings=1024)),
    "llama8b": dict(SHAPES["llama8b"], vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=32, intermediate_size=256, max_position_embeddings=4096,
                    rope_parameters=dict(LLAMA3_ROPE, factor=8.0, original_max_position_embeddings=1024)),
}
DTYPES = {"gpt2": torch.float32, "llama1b": torch.bfloat16, "llama8b": torch.bfloat16}
PLAN = {  # context lengths: (full run on a GPU, dry run)
    "gpt2": (512, 64), "llama1b": (8192, 256), "llama8b_decode": (512, 64), "llama8b_prefill": (32768, 1024),
    "llama8b_ladder": ((4096, 8192, 16384), (256, 512)), "hf_ladder": ((2048, 4096, 8192, 16384, 32768), (256, 512, 1024)),
}


# -- building --------------------------------------------------------------------------------------
@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def hf_config(fields: dict):
    import transformers

    fields = {**fields, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    cls = {"gpt2": transformers.GPT2Config, "llama": transformers.LlamaConfig}[fields["model_type"]]
    return cls(**{k: v for k, v in fields.items() if k != "model_type"}, attn_implementation="eager")


def reference_model(fields: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """transformers' model of this shape, randomly initialised by transformers itself, directly on `device`."""
    import transformers

    torch.manual_seed(seed)
    cls = {"gpt2": transformers.GPT2LMHeadModel, "llama": transformers.LlamaForCausalLM}[fields["model_type"]]
    with torch.device(device), default_dtype(dtype):
        model = cls(hf_config(fields))
    return model.eval().requires_grad_(False)


def word_tokenizer(vocab_size: int):
    """A tokenizers.Tokenizer with one word per id ("t0", "t1", ...): the benchmarks feed ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def engine_model(ref, fields: dict, name: str) -> Model:
    """Our Model over the very tensors of `ref` (a transformers model), through the converter table."""
    from torch import nn

    from engine.checkpoints.mapping import plan
    from engine.checkpoints.registry import CONVERTERS
    from engine.inference_layout import to_inference_layout
    from engine.network import Transformer
    from engine.tokenizer import Tokenizer

    conv = CONVERTERS[fields["model_type"]]
    state = ref.state_dict()
    hf = {**ref.config.to_dict(), "model_type": fields["model_type"]}
    cfg = conv.config(hf, set(state))
    with torch.device("meta"):
        net = Transformer(cfg)
    wanted = {k for s in conv.keys(cfg).values() for alt in s.alternatives for k in alt}
    available = {k: list(v.shape) for k, v in state.items() if k in wanted}
    dtype, device = next(ref.parameters()).dtype, next(ref.parameters()).device
    for ours, (source, keys) in plan(conv, cfg, {k: list(v.shape) for k, v in net.state_dict().items()}, available).items():
        tensor = source.to_ours([state[k] for k in keys]).detach()
        module_name, _, attr = ours.rpartition(".")
        module = net.get_submodule(module_name) if module_name else net
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
        else:
            module._buffers[attr] = tensor
    net.init_buffers(device)
    for module in net.modules():
        for key, b in list(module._buffers.items()):
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                module._buffers[key] = b.to(dtype)
    to_inference_layout(net, transposed=False)  # the layout load_model gives on CUDA (and for bfloat16)
    return Model(net, Tokenizer(word_tokenizer(cfg.vocab_size)), name=name)


def build(shape: str, device: torch.device, tiny: bool) -> tuple[Model, object, dict]:
    fields = (TINY if tiny else SHAPES)[shape]
    t0 = time.perf_counter()
    ref = reference_model(fields, device, DTYPES[shape])
    model = engine_model(ref, fields, shape)
    sync(device)
    info = {"shape": shape, "tiny": tiny, "dtype": str(DTYPES[shape]).removeprefix("torch."),
            "parameters": model.n_params, "weight_bytes": sum(p.numel() * p.element_size() for p in ref.parameters()),
            "build_seconds": time.perf_counter() - t0, "capture_mode": capture_mode(model)}
    log.info("%s: %.2fB parameters (%s) built on %s in %.1fs; capture mode %s", shape, model.n_params / 1e9, info["dtype"],
             device, info["build_seconds"], info["capture_mode"])
    return model, ref, info


def capture_mode(model: Model) -> str:
    rebuild = getattr(model, "rebuilds_patterns", None)  # engines that rebuild patterns from q, k and row lse
    if rebuild is None:
        return f"patterns ({np.dtype(model.pattern_dtype).name})"
    return "rebuild (q, k, lse)" if rebuild else f"patterns ({np.dtype(model.pattern_dtype).name})"


def save_checkpoint(shape: str, folder: Path, device: torch.device, tiny: bool) -> Path:
    """A random checkpoint folder of `shape` (config.json, model.safetensors, tokenizer.json) for load_model / the GUI."""
    fields = (TINY if tiny else SHAPES)[shape]
    ref = reference_model(fields, device, DTYPES[shape])
    ref.config.dtype = DTYPES[shape]
    ref.save_pretrained(folder, safe_serialization=True)
    word_tokenizer(fields["vocab_size"]).save(str(folder / "tokenizer.json"))
    return folder


# -- measuring -------------------------------------------------------------------------------------
class Memory:
    """Device memory (CUDA) around a region: peak while it ran, and what it left allocated."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.start = self.peak = self.kept = 0

    def __enter__(self) -> Memory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
            self.kept = torch.cuda.memory_allocated() - self.start

    def report(self) -> dict:
        return {"device_peak_bytes": self.peak, "device_kept_bytes": self.kept} if self.cuda else {}


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> dict:
    """Device-to-device copy: bytes read + bytes written per second (CUDA events; median of `repeats` after 3)."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for i in range(3 + repeats):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src)
            b.record()
            b.synchronize()
            t = a.elapsed_time(b) / 1e3
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            t = time.perf_counter() - t0
        if i >= 3:
            times.append(t)
    assert torch.equal(dst[:4096], src[:4096])
    t = statistics.median(times)
    return {"bytes": nbytes, "seconds": t, "copy_GBps": 2 * nbytes / t / 1e9, "spread_seconds": [min(times), max(times)]}


def our_step(session: Session) -> Callable[[], None]:
    def run() -> None:
        session.step()
        session.back()
    return run


PREFILL_CAPTURE_LIMIT = 4 * GiB


def stepping_sessions(model: Model, n: int) -> tuple[Session, Session]:
    """Two sessions at context n-1 whose next step captures everything / nothing. The "on" session's prompt is
    captured too where that keeps at most PREFILL_CAPTURE_LIMIT on the host (always, where the engine rebuilds
    patterns from q, k and lse); beyond, it is fed without capture and capture switched on for the steps (a
    per-forward switch: each step records every layer's and head's row as in a session captured throughout)."""
    ids = random_ids(n - 1, model.config.vocab_size)
    whole = capture_host_bytes(model, n) <= PREFILL_CAPTURE_LIMIT
    on, off = Session(model, ids, capture=whole), Session(model, ids, capture=False)
    on.capture = True
    return on, off


def reference_step(ref, ids: list[int], device: torch.device) -> Callable[[], None]:
    """transformers eager: one decode step with output_attentions after len(ids) cached tokens, then crop.
    (Its prompt is fed without output_attentions, as ours is fed without capture.)"""
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache(config=ref.config)
        out = ref(torch.tensor([ids], device=device), past_key_values=cache, use_cache=True)
        nxt = int(out.logits[0, -1].argmax())
        del out

    def run() -> None:
        with torch.inference_mode():
            o = ref(torch.tensor([[nxt]], device=device), past_key_values=cache, use_cache=True, output_attentions=True)
            _ = [a.cpu() for a in o.attentions], int(o.logits[0, -1].argmax())
            cache.crop(-1)
    return run


def decode_pair(shape: str, device: torch.device, tiny: bool, rounds: int) -> dict:
    """Capture on / off and ours / transformers eager, one decode step at the plan's context length."""
    model, ref, info = build(shape, device, tiny)
    n = PLAN[shape][1 if tiny else 0]
    on, off = stepping_sessions(model, n)
    out = {**info, "context": n, "capture_on_vs_off": compare(our_step(on), our_step(off), rounds, device, warmup=3)}
    del off
    free(device)
    ids = random_ids(n - 1, model.config.vocab_size)
    out["ours_vs_reference"] = compare(our_step(on), reference_step(ref, ids, device), rounds, device, warmup=3)
    for key in ("capture_on_vs_off", "ours_vs_reference"):
        r = out[key]
        log.info("%s @%d %s: %.2f (%.2f..%.2f), %.2f / %.2f ms", shape, n, key, r["ratio"], r["ratio_min"], r["ratio_max"],
                 r["a_ms"], r["b_ms"])
    return out


def median_ms(fn: Callable[[], None], device: torch.device, rounds: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def step_weight_bytes(model: Model) -> int:
    """Bytes of the weight matrices one decode step reads in full (each tensor once, tied or not)."""
    seen = {m.data_ptr(): m.numel() * m.element_size() for m in _step_weights(model)}
    return sum(seen.values())


def capture_host_bytes(model: Model, n: int) -> int:
    """What a prefill of n tokens with capture keeps on the host (estimate): every pattern, or q, k and the row
    log-sum-exps where the engine rebuilds patterns; plus the lazily unembedded rows (hidden states, and the
    unembedding's float32 copy on the host)."""
    c = model.config
    layers, heads, kv, hs = c.n_decoder_layers, c.n_heads, c.n_kv_heads, c.d_head
    if getattr(model, "rebuilds_patterns", False):
        kept = layers * n * (heads * hs * model.net.embed.weight.element_size() + kv * hs * 4 + heads * 4)  # q, keys, lse
    else:
        kept = layers * heads * n * (n + 1) // 2 * np.dtype(model.pattern_dtype).itemsize
    return kept + n * c.d_model * 4 + c.vocab_size * c.d_model * 4


def prefill(model: Model, n: int, device: torch.device, capture: bool, host_budget: int) -> dict:
    """One prompt of n tokens into a fresh session: completes or runs out of memory; what it keeps."""
    need = capture_host_bytes(model, n) if capture else n * model.config.d_model * 4
    row: dict = {"tokens": n, "capture": capture, "host_bytes_estimate": need}
    # an engine that keeps every layer's float32 pattern on the device until the forward ends runs out of device
    # memory before it copies anything to the host: trying is safe then, whatever the host estimate says
    device_first = (capture and device.type == "cuda" and not getattr(model, "rebuilds_patterns", False) and
                    model.n_layers * model.n_heads * n * n * 4 > torch.cuda.get_device_properties(device).total_memory)
    if need > host_budget and not device_first:
        row.update(status="skipped", why=f"would keep ~{need / GiB:.0f} GiB on the host (budget {host_budget / GiB:.0f} GiB)")
        return row
    ids = random_ids(n, model.config.vocab_size, seed=n)
    session = None
    mem = Memory(device)
    t0 = time.perf_counter()
    try:
        with mem:
            session = Session(model, ids, capture=capture)
            sync(device)
        row.update(status="completed", seconds=time.perf_counter() - t0, **mem.report())
        if capture:
            row["host_kept_bytes"] = kept_on_host(session)
    except OutOfMemoryError as exc:
        row.update(status="out of memory", seconds=time.perf_counter() - t0, error=str(exc).splitlines()[0], **mem.report())
    except Exception as exc:  # noqa: BLE001 - recorded; the next measurement still runs
        row.update(status="failed", seconds=time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        del session
        free(device)
    log.info("prefill %d (capture %s): %s%s", n, capture, row["status"],
             f" in {row['seconds']:.2f}s" if "seconds" in row else "")
    return row


def kept_on_host(session: Session) -> int | None:
    """Bytes of numpy the session's trace holds for its patterns (whatever kind of blocks the engine keeps)."""
    try:
        return int(session.trace.nbytes)
    except Exception:  # noqa: BLE001 - an engine whose blocks count differently: add up their arrays
        try:
            blocks = session.trace.blocks.values()
            return sum(v.nbytes for bs in blocks for b in bs for v in vars(b).values() if isinstance(v, np.ndarray))
        except Exception:  # noqa: BLE001
            return None


def reference_prefill(ref, n: int, device: torch.device, vocab: int) -> dict:
    """transformers eager with output_attentions: every layer's pattern at once, kept on the device."""
    row: dict = {"tokens": n}
    mem = Memory(device)
    t0 = time.perf_counter()
    try:
        with mem, torch.inference_mode():
            out = ref(torch.tensor([random_ids(n, vocab, seed=n)], device=device), use_cache=True, output_attentions=True)
            sync(device)
            row["attention_bytes"] = sum(a.numel() * a.element_size() for a in out.attentions)
            del out
        row.update(status="completed", seconds=time.perf_counter() - t0, **mem.report())
    except Exception as exc:  # noqa: BLE001 - out of memory is the expected end of the ladder; anything else is recorded
        status = "out of memory" if is_out_of_memory(exc) else "failed"
        row.update(status=status, seconds=time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                   **mem.report())
    finally:
        free(device)
    log.info("transformers eager prefill %d with output_attentions: %s", n, row["status"])
    return row


def decode_vs_floor(model: Model, device: torch.device, n: int, rounds: int, bandwidth: dict) -> dict:
    """A decode step at context n, with and without capture, against the weight-streaming floor."""
    on, off = stepping_sessions(model, n)
    c = model.config
    weight_bytes = step_weight_bytes(model)
    kv_bytes = 2 * c.n_decoder_layers * c.n_kv_heads * n * c.d_head * model.net.embed.weight.element_size()
    floor_ms = 1e3 * weight_bytes / (bandwidth["copy_GBps"] * 1e9)
    step_off = median_ms(our_step(off), device, rounds)
    step_on = median_ms(our_step(on), device, rounds)
    gemv = median_ms(weight_floor(model, device), device, rounds)
    out = {"context": n, "step_bytes": weight_bytes, "kv_bytes": kv_bytes, "floor_ms": floor_ms,
           "copy_GBps": bandwidth["copy_GBps"], "step_without_capture": step_off, "step_with_capture": step_on,
           "one_gemv_per_matrix": gemv, "ratio_without_capture": step_off["median_ms"] / floor_ms,
           "ratio_with_capture": step_on["median_ms"] / floor_ms}
    log.info("llama8b decode @%d: %.2f ms without capture, %.2f with; floor %.2f ms (%.1f GB at %.0f GB/s): %.2f / %.2f",
             n, step_off["median_ms"], step_on["median_ms"], floor_ms, weight_bytes / 1e9, bandwidth["copy_GBps"],
             out["ratio_without_capture"], out["ratio_with_capture"])
    return out


def llama8b(device: torch.device, tiny: bool, rounds: int, bandwidth: dict, host_budget: int) -> dict:
    model, ref, info = build("llama8b", device, tiny)
    out: dict = {**info}
    i = 1 if tiny else 0
    c = model.config
    try:
        out["decode"] = decode_vs_floor(model, device, PLAN["llama8b_decode"][i], rounds, bandwidth)
    except Exception as exc:  # noqa: BLE001 - recorded; the prefill measurements still run
        log.error("llama8b decode failed: %s", exc)
        out["decode"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    free(device)
    # prefill at the long context: with capture (the item), without (for contrast); then the ladders
    long = PLAN["llama8b_prefill"][i]
    first = prefill(model, long, device, True, host_budget)
    out["prefill_long"] = first
    if first["status"] != "completed":  # the session machinery must keep working after the failure
        s = Session(model, random_ids(16, c.vocab_size), capture=True)
        s.step()
        out["works_after_failure"] = len(s.ids) == 17
        del s
        free(device)
    out["prefill_long_without_capture"] = prefill(model, long, device, False, host_budget)
    ladder = []  # where the long prefill did not complete: the longest that does
    for m in PLAN["llama8b_ladder"][i] if first["status"] != "completed" else ():
        ladder.append(prefill(model, m, device, True, host_budget))
        if ladder[-1]["status"] != "completed":
            break
    out["prefill_ladder"] = ladder
    done = [r["tokens"] for r in [first, *ladder] if r["status"] == "completed"]
    out["longest_captured_prefill"] = max(done) if done else None
    del model
    free(device)
    hf = []
    for m in PLAN["hf_ladder"][i]:
        hf.append(reference_prefill(ref, m, device, c.vocab_size))
        if hf[-1]["status"] != "completed":
            break
    out["reference_ladder"] = hf
    ok = [r["tokens"] for r in hf if r["status"] == "completed"]
    out["reference_longest"] = max(ok) if ok else None
    out["reference_runs_out_at"] = hf[-1]["tokens"] if hf and hf[-1]["status"] != "completed" else None
    return out


# -- suite ------------------------------------------------------------------------------------------
ITEMS = ("bandwidth", "gpt2", "llama1b", "llama8b")


def run_items(items: list[str], device: torch.device, tiny: bool, rounds: int, host_budget: int) -> dict:
    results: dict = {}
    bandwidth = None
    for item in items:
        t0 = time.perf_counter()
        try:
            if item == "bandwidth" or (item == "llama8b" and bandwidth is None):
                bandwidth = copy_bandwidth(device, (64 if tiny else 2048) * 1024 * 1024)
                results["bandwidth"] = bandwidth
                log.info("copy bandwidth: %.0f GB/s (read + write)", bandwidth["copy_GBps"])
                if item == "bandwidth":
                    continue
            if item in ("gpt2", "llama1b"):
                results[item] = decode_pair(item, device, tiny, rounds)
            elif item == "llama8b":
                results[item] = llama8b(device, tiny, rounds, bandwidth, host_budget)
            else:
                raise ValueError(f"unknown item {item!r}; items are {', '.join(ITEMS)}")
        except Exception as exc:  # one item's failure must not sink the others
            log.error("%s failed: %s", item, exc)
            results[item] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        finally:
            free(device)
        results.setdefault(item, {})["item_seconds"] = time.perf_counter() - t0
    return results


def meta(device: torch.device) -> dict:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": str(device), "cores": os.cpu_count(),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out.update(gpu=p.name, gpu_memory_gb=p.total_memory / 1e9, capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return out


def _r(r: dict) -> str:
    return f"{r['ratio']:.2f} ({r['ratio_min']:.2f}..{r['ratio_max']:.2f})  {r['a_ms']:.2f} / {r['b_ms']:.2f} ms"


def summary(results: dict) -> str:
    """The table printed last (the goals are issue 16's)."""
    lines = []
    if "copy_GBps" in results.get("bandwidth", {}):
        lines.append(f"copy bandwidth (read + write)            {results['bandwidth']['copy_GBps']:.0f} GB/s")
    for item in ("gpt2", "llama1b"):
        r = results.get(item, {})
        if "error" in r:
            lines.append(f"{item}: FAILED {r['error']}")
        elif r:
            lines.append(f"{item} @{r['context']} capture on / off (goal <= 1.10)   {_r(r['capture_on_vs_off'])}")
            lines.append(f"{item} @{r['context']} ours / transformers (goal <= 0.50) {_r(r['ours_vs_reference'])}")
    r = results.get("llama8b", {})
    if "error" in r:
        lines.append(f"llama8b: FAILED {r['error']}")
    elif r:
        d = r["decode"]
        if "error" in d:
            lines.append(f"llama8b decode: FAILED {d['error']}")
        else:
            lines.append(f"llama8b @{d['context']} step / floor (goal <= 1.30)       {d['ratio_without_capture']:.2f} without "
                         f"capture, {d['ratio_with_capture']:.2f} with ({d['step_without_capture']['median_ms']:.2f} / "
                         f"{d['step_with_capture']['median_ms']:.2f} ms; floor {d['floor_ms']:.2f} ms)")
        p = r["prefill_long"]
        took = f" in {p['seconds']:.1f} s" if "seconds" in p else ""
        mem = (f", device peak {p['device_peak_bytes'] / GiB:.1f} GiB, kept {p['device_kept_bytes'] / GiB:.2f} GiB"
               if "device_peak_bytes" in p else "")
        host = f", host {p['host_kept_bytes'] / GiB:.2f} GiB" if p.get("host_kept_bytes") is not None else ""
        why = f" ({p.get('why') or p.get('error')})" if p["status"] != "completed" else ""
        lines.append(f"llama8b prefill {p['tokens']} with capture: {p['status']}{took}{mem}{host}{why}")
        lines.append(f"llama8b longest prefill with capture that completed: {r['longest_captured_prefill']}; "
                     f"transformers eager (output_attentions) longest {r['reference_longest']}, "
                     f"runs out at {r['reference_runs_out_at']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--items", default=",".join(ITEMS), help=f"comma-separated, of {', '.join(ITEMS)}")
    p.add_argument("--tiny", action="store_true", default=None, help="tiny shapes (default on the CPU)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per comparison (default 20 on a GPU, 3 tiny)")
    p.add_argument("--host-budget-gb", type=float, default=64.0,
                   help="skip a captured prefill whose trace would keep more host memory than this (default %(default)s)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--save", nargs=2, metavar=("SHAPE", "FOLDER"), help="write a random checkpoint folder and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' notes on renamed arguments
    device = torch.device(args.device)
    tiny = args.tiny if args.tiny is not None else device.type == "cpu"
    if args.save:
        folder = save_checkpoint(args.save[0], Path(args.save[1]), device, tiny)
        log.info("saved a random %s%s checkpoint to %s", args.save[0], " (tiny)" if tiny else "", folder)
        return 0
    rounds = args.rounds or (3 if tiny else 20)
    items = [s for s in args.items.split(",") if s]
    results = run_items(items, device, tiny, rounds, int(args.host_budget_gb * GiB))
    report = {"meta": {**meta(device), "tiny": tiny, "rounds": rounds, "items": items}, "results": results}
    sys.stdout.write("\n" + summary(results) + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
