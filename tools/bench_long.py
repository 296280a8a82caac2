"""Long-context benchmark (issue 13): what rebuilding patterns from q, k and lse costs and saves.

    .venv/bin/python tools/bench_long.py                       # 1k, 4k, 8k on a CPU-sized Llama shape
    .venv/bin/python tools/bench_long.py --lengths 1024,2048 --rounds 2 --no-reference
    .venv/bin/python tools/bench_long.py --shape 1b --device cuda --lengths 1024,8192,32768   # on a GPU

Shapes: "cpu" (4 layers, d 512, 8 query / 2 key-value heads of 64) keeps the CPU run to minutes; "1b" is
Llama-3.2-1B's (16 layers, d 2048, 32 / 8 heads). Ratios are measured side by side in one run, alternating
the contestants each round, and reported as the median of per-round ratios (min..max). transformers eager
with output_attentions runs in a child process per length, so running out of memory is recorded, not fatal.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import Session, load_model  # noqa: E402

log = logging.getLogger("bench_long")
CACHE = Path(tempfile.gettempdir()) / "attention-inspector-bench"
SHAPES = {
    "cpu": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                intermediate_size=1376),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
               intermediate_size=8192),
    # a 1B Llama's layer (width, heads, head size) twice: per-layer bytes as the 1B's, prefill in CPU reach
    "1b-2l": dict(hidden_size=2048, num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                  intermediate_size=8192),
}


def llama_folder(shape: str) -> Path:
    """A Llama-shaped random checkpoint with a word-level tokenizer (built once, kept in the temp folder)."""
    folder = CACHE / f"llama-{shape}-random"
    if (folder / "model.safetensors").exists():
        return folder
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = 2048
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=32768, rope_theta=500000.0, tie_word_embeddings=True,
                      bos_token_id=0, eos_token_id=vocab - 1, attn_implementation="eager", **SHAPES[shape])
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # spread the weights so patterns have structure (a 0.02 init gives near-uniform rows)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.05)
    model.save_pretrained(folder, safe_serialization=True)
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t1"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ratio(a, b, rounds: int, device: torch.device) -> dict:  # noqa: ANN001 - two callables
    """Time a() and b() alternately; -> median (min..max) of a/b and the median seconds of each."""
    ta, tb = [], []
    a(), b()  # warm-up, excluded
    for r in range(rounds):
        for fn, out in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - t0)
    ratios = [x / y for x, y in zip(ta, tb)]
    return {"ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "a_s": statistics.median(ta), "b_s": statistics.median(tb)}


def step_and_back(session: Session, steps: int) -> None:
    for t in range(steps):
        session.step(token_id=1 + t)
    for _ in range(steps):
        session.back()


def stored_float16_bytes(model, n: int) -> int:  # noqa: ANN001
    """What storing every pattern in float16 would take: causal triangles, every layer and query head."""
    return model.n_layers * model.n_heads * (n * (n + 1) // 2) * 2


def reference_peak(folder: Path, n: int, device: str) -> dict:
    """transformers eager with output_attentions on n tokens, in a child process: peak memory or how it failed."""
    code = f"""
import resource, sys, time, torch
from transformers import LlamaForCausalLM
m = LlamaForCausalLM.from_pretrained({str(folder)!r}, attn_implementation="eager").to({device!r}).eval()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ids = torch.randint(1, 2000, (1, {n}), device={device!r})
t0 = time.perf_counter()
with torch.no_grad():
    out = m(ids, output_attentions=True)
gpu = torch.cuda.max_memory_allocated() if {device!r} == "cuda" else 0
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, gpu, time.perf_counter() - t0)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return {"ok": False, "error": tail[:200], "returncode": proc.returncode}
    rss, gpu, secs = proc.stdout.split()
    return {"ok": True, "rss_growth_bytes": int(rss), "gpu_peak_bytes": int(gpu), "seconds": float(secs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", default="1024,4096,8192")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=8)
    parser.add_argument("--no-reference", action="store_true", help="skip transformers eager")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a shared machine)")
    parser.add_argument("--json", type=Path, default=ROOT / "tools" / "out" / "bench_long.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    folder = llama_folder(args.shape)
    model = load_model(folder, device=args.device, dtype="float32" if device.type == "cpu" else "bfloat16")
    model.capture_mode = "rebuild"
    lengths = [int(x) for x in args.lengths.split(",")]
    results: dict = {"shape": args.shape, "device": args.device, "layers": model.n_layers, "heads": model.n_heads,
                     "kv_heads": model.config.n_kv_heads, "torch_threads": torch.get_num_threads(), "lengths": {}}
    print(f"Llama shape {args.shape!r}: {model.n_layers} layers x {model.n_heads} query heads "
          f"({model.config.n_kv_heads} key/value), {model.n_params / 1e6:.0f}M parameters, {args.device}")
    for n in lengths:
        ids = [1 + (i * 7919) % 2000 for i in range(n)]
        row: dict = {}
        s = Session(model, ids)
        row["kept_bytes"] = s.trace.nbytes
        row["float16_patterns_bytes"] = stored_float16_bytes(model, n)
        row["kept_vs_float16"] = row["kept_bytes"] / row["float16_patterns_bytes"]
        prefill = median_ratio(lambda ids=ids: Session(model, ids), lambda ids=ids: Session(model, ids, capture=False),
                               args.rounds, device)
        row["prefill_capture_ratio"] = prefill

        plain = Session(model, ids, capture=False)

        row["decode_capture_ratio"] = median_ratio(lambda s=s: step_and_back(s, args.decode_steps),
                                                   lambda p=plain: step_and_back(p, args.decode_steps), args.rounds, device)
        trace = s.trace
        head = model.n_heads - 1
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            ov = trace.attention_overview("self", model.n_layers - 1, [head], 1000, 1000)
            times.append(time.perf_counter() - t0)
        row["overview_1000px_one_head_s"] = statistics.median(times)
        row["overview_shape"] = list(ov.shape)
        if not args.no_reference:
            row["transformers_eager"] = reference_peak(folder, n, args.device)
        results["lengths"][n] = row
        ref = row.get("transformers_eager", {})
        print(f"{n:>6} tokens: kept {row['kept_bytes'] / 2**20:8.1f} MiB = 1/{1 / row['kept_vs_float16']:.0f} of float16 "
              f"patterns ({row['float16_patterns_bytes'] / 2**30:.2f} GiB); prefill capture/none "
              f"{prefill['ratio']:.2f} ({prefill['min']:.2f}..{prefill['max']:.2f}); decode capture/none "
              f"{row['decode_capture_ratio']['ratio']:.2f} ({row['decode_capture_ratio']['min']:.2f}.."
              f"{row['decode_capture_ratio']['max']:.2f}); 1000x1000 overview of one head "
              f"{row['overview_1000px_one_head_s'] * 1000:.0f} ms"
              + ("; transformers eager + output_attentions: " + (f"+{ref['rss_growth_bytes'] / 2**30:.1f} GiB RSS"
                 if ref.get("ok") else f"failed ({ref.get('error')})") if ref else ""))
    results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
