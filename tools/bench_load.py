"""Peak memory of loading a Llama-3.2-1B-shaped checkpoint: the engine's load_model next to transformers'
from_pretrained, each in a fresh subprocess, one model in memory at a time.

    .venv/bin/python tools/bench_load.py                   # build (or reuse) the checkpoint, measure, keep it in /tmp
    .venv/bin/python tools/bench_load.py --delete          # ... and delete the checkpoint afterwards
    .venv/bin/python tools/bench_load.py --speed           # also: decode-step matmuls in both weight layouts
    .venv/bin/python tools/bench_load.py --arch gpt2       # a GPT-2-shaped ~1.1B checkpoint instead

The checkpoint: random weights, bfloat16, sharded into two files (model.safetensors.index.json), built by
transformers offline from a config object: 16 layers, d 2048, 32 query / 8 key-value heads, d_ff 8192,
vocab 128256, tied embeddings (1.24B parameters: 2.47 GB on disk, 4.94 GB in float32).

Peak RSS is the child's VmHWM (/proc/self/status). It is reset to the current RSS just before the load
(clear_refs 5), so the peak includes what the process held already (python, torch, the libraries:
"baseline"). "+forward" is the peak after one 4-token forward, when every weight has been read
(transformers keeps same-dtype weights as mmapped file pages, resident only once touched). Ratios are to
the loaded model's own bytes (every distinct storage of its parameters and buffers). Pages in the OS page
cache are not the process's memory; an mmapped reader's touched pages are (they count in its RSS).
CPU seconds (user + system) are steadier than wall seconds on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(tempfile.gettempdir()) / "attention-inspector-bench-load"
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
                rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
GPT2_1B = dict(vocab_size=128256, n_embd=2048, n_layer=16, n_head=32, n_positions=2048, tie_word_embeddings=True)


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmHWM, VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _cpu_seconds() -> float:
    """User + system CPU time of this process (steadier than wall time on a shared machine)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _storage_bytes(module) -> int:  # noqa: ANN001 - torch.nn.Module
    seen = {}
    for t in [*module.parameters(), *module.buffers()]:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


# -- the checkpoint --------------------------------------------------------------------------------
def build(folder: Path, arch: str) -> None:
    """Random bfloat16 weights saved in two shards, plus a small byte-level tokenizer (ids < vocab)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # build straight in bfloat16: 2.5 GB, not 5
    if arch == "llama":
        cfg = transformers.LlamaConfig(**LLAMA_1B)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(**GPT2_1B)
        model = transformers.GPT2LMHeadModel(cfg)
    model = model.to(torch.bfloat16).eval()
    n_bytes = sum(p.numel() * 2 for p in model.parameters())
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size=f"{n_bytes // 2 // 10**6 + 16}MB")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["In the beginning God created the heaven and the earth."] * 8,
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False, special_tokens=["<|end_of_text|>"]))
    tok.save(str(tmp / "tokenizer.json"))
    tmp.rename(folder)


def ensure_checkpoint(arch: str) -> Path:
    folder = CACHE / f"{arch}-1b-bf16"
    if not (folder / "model.safetensors.index.json").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        print(f"building {folder} (random bfloat16 weights; a minute or two)...", flush=True)
        subprocess.run([sys.executable, __file__, "--build", str(folder), "--arch", arch], check=True)
        print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


# -- one measured load, in a child process ----------------------------------------------------------
def child(loader: str, folder: Path, dtype: str) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if loader == "ours":
        import engine.checkpoints  # noqa: F401 - imports outside the measured load
        from engine import load_model
    else:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    baseline = _status("VmRSS")
    reset = _reset_peak()
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    if loader == "ours":
        model = load_model(folder, device="cpu", dtype=None if dtype == "auto" else dtype)
        module, chosen, reason = model.net, str(model.dtype), model.dtype_reason
    else:
        module = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
        chosen, reason = str(next(module.parameters()).dtype), ""
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    peak, after = _status("VmHWM"), _status("VmRSS")
    out = dict(loader=loader, dtype=chosen.removeprefix("torch."), reason=reason, seconds=seconds, cpu_seconds=cpu,
               baseline=baseline, peak=peak, after=after, model_bytes=_storage_bytes(module), peak_reset=reset)
    # one short forward: it works, and every weight is then resident (an mmapped model's too)
    t1 = time.perf_counter()
    if loader == "ours":
        model.run([1, 2, 3, 4])
    else:
        with torch.inference_mode():
            module(torch.tensor([[1, 2, 3, 4]]))
    out.update(forward_seconds=time.perf_counter() - t1, peak_with_forward=_status("VmHWM"))
    return out


def measure(loader: str, folder: Path, dtype: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", loader, "--dtype", dtype, str(folder)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{loader} {dtype} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gb(n: float) -> str:
    return f"{n / 1e9:5.2f} GB"


def report(rows: list[dict]) -> None:
    print(f"\n{'loader':<13}{'dtype':<10}{'model':>9}{'peak RSS':>11}{'peak/model':>12}{'baseline':>10}"
          f"{'(peak-base)/model':>19}{'wall s':>8}{'CPU s':>7}{'+forward':>10}")
    for r in rows:
        print(f"{r['loader']:<13}{r['dtype']:<10}{_gb(r['model_bytes']):>9}{_gb(r['peak']):>11}"
              f"{r['peak'] / r['model_bytes']:>11.2f}x{_gb(r['baseline']):>10}"
              f"{(r['peak'] - r['baseline']) / r['model_bytes']:>18.2f}x{r['seconds']:>8.1f}{r['cpu_seconds']:>7.1f}"
              f"{_gb(r['peak_with_forward']):>10}")
    for r in rows:
        if r.get("reason"):
            print(f"  ours, dtype=None chose: {r['reason']}")
            break


# -- decode-step matmuls in both layouts ------------------------------------------------------------
def speed() -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(max(1, os.cpu_count() or 1))

    def ms(fn, n: int) -> float:  # noqa: ANN001
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e3

    def shape(dtype: torch.dtype, out_f: int, in_f: int, what: str) -> None:
        w = torch.randn(out_f, in_f).to(dtype)
        w_t = w.t().contiguous()
        x = torch.randn(1, in_f).to(dtype)
        n = 10 if out_f > 10000 else 50
        a, b = ms(lambda: x @ w.t(), n), ms(lambda: x @ w_t, n)
        print(f"  {str(dtype)[6:]:<9}{what:<12}{out_f:>6}x{in_f:<5} {a:7.3f} {b:7.3f}  [in,out] {a / b:4.2f}x as fast")
        if what == "unembedding":
            ids1, ids512 = torch.tensor([5]), torch.randint(0, out_f, (512,))
            v = w_t.t()  # the tied embedding as a view of the (d, vocab) unembedding
            print(f"  {'':<9}embedding lookup from that view: 1 token {ms(lambda: F.embedding(ids1, v), 200) * 1e3:.0f} us "
                  f"(contiguous {ms(lambda: F.embedding(ids1, w), 200) * 1e3:.0f} us), 512 tokens "
                  f"{ms(lambda: F.embedding(ids512, v), 10):.1f} ms (contiguous {ms(lambda: F.embedding(ids512, w), 10):.1f} ms)")

    print("\none decode step's matmul, [out, in] (nn.Linear) vs [in, out] (TransposedLinear), ms:")
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            for out_f, in_f, what in ((2048, 2048, "q/o"), (512, 2048, "k/v"), (8192, 2048, "gate/up"),
                                      (2048, 8192, "down"), (128256, 2048, "unembedding")):
                shape(dtype, out_f, in_f, what)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=["llama", "gpt2"], default=None, help="default: llama when the engine supports it")
    p.add_argument("--dtypes", default="float32,bfloat16", help="dtypes to compare (comma-separated)")
    p.add_argument("--delete", action="store_true", help="delete the checkpoint afterwards")
    p.add_argument("--speed", action="store_true", help="also time decode-step matmuls in both layouts")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("folder", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build:
        build(args.build, args.arch or "llama")
        return
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.dtype)))
        return
    sys.path.insert(0, str(ROOT))
    from engine.checkpoints import SUPPORTED

    arch = args.arch or ("llama" if "llama" in SUPPORTED else "gpt2")
    folder = ensure_checkpoint(arch)
    on_disk = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    print(f"{arch} checkpoint {folder}: {_gb(on_disk)} in {len(list(folder.glob('*.safetensors')))} shards; "
          f"{os.cpu_count()} CPUs")
    rows = [measure("ours", folder, "auto")]
    for dtype in args.dtypes.split(","):
        rows += [measure("ours", folder, dtype), measure("transformers", folder, dtype)]
    report(rows)
    if args.speed:
        speed()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.delete:
        shutil.rmtree(folder)
        print(f"deleted {folder}")


if __name__ == "__main__":
    main()
