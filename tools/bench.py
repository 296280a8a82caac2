"""Benchmarks for Attention Inspector (issue 6). Builds GPT-2-small-shaped random checkpoints itself.

    .venv/bin/python tools/bench.py                      # full suite, CPU (and CUDA when present)
    .venv/bin/python tools/bench.py --quick              # fewer repeats and lengths
    .venv/bin/python tools/bench.py --json out.json
    python tools/bench.py --devices cuda                 # the GPU suite (tools/bench_cuda.py): shapes up to 8B, built on the GPU

Every comparison is measured side by side in one run, alternating the two contestants, and reported as
the median of per-round ratios with its spread (min..max), so a noisy machine still gives stable figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import Session, load_model  # noqa: E402

log = logging.getLogger("bench")
CACHE = Path(tempfile.gettempdir()) / "attention-inspector-bench"


# -- setup -------------------------------------------------------------------------------------
def gpt2_small_folder() -> Path:
    """A GPT-2-small-shaped checkpoint with random weights (built once, kept in the temp folder)."""
    folder = CACHE / "gpt2-small-random"
    if (folder / "model.safetensors").exists():
        return folder
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(attn_implementation="eager"))
    model.save_pretrained(folder, safe_serialization=True)
    vocab = {f"t{i}": i for i in range(model.config.vocab_size - 1)}
    vocab["<|endoftext|>"] = model.config.vocab_size - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(folder / "tokenizer.json"))
    return folder


def reference_model(folder: Path, device: torch.device):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = time.perf_counter  # --clock process: CPU time of this process, steadier when other work shares the cores


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = CLOCK()
    fn()
    sync(device)
    return CLOCK() - t0


def compare(a: Callable[[], object], b: Callable[[], object], rounds: int, device: torch.device, warmup: int = 2) -> dict:
    """Alternate a and b; return medians (ms), the median ratio a/b and its spread."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for r in range(rounds):
        first, second = (a, b) if r % 2 == 0 else (b, a)
        t1, t2 = timed(first, device), timed(second, device)
        ta.append(t1 if first is a else t2)
        tb.append(t2 if first is a else t1)
    ratios = [x / y for x, y in zip(ta, tb)]
    return {"a_ms": 1e3 * statistics.median(ta), "b_ms": 1e3 * statistics.median(tb),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


# -- contestants -------------------------------------------------------------------------------
def our_step(session: Session) -> Callable[[], None]:
    def run() -> None:
        session.step()
        session.back()
    return run


def reference_step(ref, ids: list[int], device: torch.device) -> Callable[[], None]:
    """transformers eager, output_attentions, KV cache: one decode step after len(ids) tokens, then crop."""
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache(config=ref.config)
        out = ref(torch.tensor([ids], device=device), past_key_values=cache, use_cache=True, output_attentions=True)
        nxt = int(out.logits[0, -1].argmax())

    def run() -> None:
        with torch.inference_mode():
            o = ref(torch.tensor([[nxt]], device=device), past_key_values=cache, use_cache=True, output_attentions=True)
            _ = [a.cpu() for a in o.attentions], int(o.logits[0, -1].argmax())
            cache.crop(-1)  # drop the step just taken
    return run


def _step_weights(model) -> list[torch.Tensor]:
    """Every weight matrix a decode step reads in full: the projections and the unembedding
    (of the embedding and position tables it reads one row each)."""
    net = model.net
    mats = [p for name, p in net.named_parameters() if p.dim() == 2 and not name.startswith(("embed.", "decoder.positions"))]
    mats.append(net.unembedding_t)
    return list({m.data_ptr(): m for m in mats}.values())  # an untied lm_head is also the unembedding: count it once


def weight_floor(model, device: torch.device) -> Callable[[], None]:
    """The weight-streaming floor of a decode step: one vector-matrix product through every weight matrix
    it reads, in the layout the engine stores them (the least arithmetic a step can do)."""
    mats = _step_weights(model)
    xs = {d: torch.randn(1, d, device=device, dtype=model.dtype) for d in {m.shape[0] for m in mats}}

    def run() -> None:
        with torch.inference_mode():
            for m in mats:
                xs[m.shape[0]] @ m
    return run


def read_floor(model, device: torch.device) -> Callable[[], None]:
    """Reading the same weights with no arithmetic at all (a sum): the memory system's limit."""
    mats = _step_weights(model)

    def run() -> None:
        with torch.inference_mode():
            for m in mats:
                m.sum()
    return run


def our_prefill(model, ids: list[int]) -> Callable[[], None]:
    def run() -> None:
        Session(model, ids).trace  # noqa: B018 - building the trace is part of the work
    return run


def reference_prefill(ref, ids: list[int], device: torch.device) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            out = ref(torch.tensor([ids], device=device), use_cache=True, output_attentions=True)
            _ = [a.cpu() for a in out.attentions], out.logits.cpu()
    return run


def random_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab - 1, size=n).tolist()


# -- suite -------------------------------------------------------------------------------------
def run_device(device: torch.device, lengths: list[int], rounds: int) -> dict:
    folder = gpt2_small_folder()
    model = load_model(folder, device=device)
    ref = reference_model(folder, device)
    vocab = model.config.vocab_size
    results: dict = {"device": str(device), "decode": {}, "prefill": {}}
    floor, read = weight_floor(model, device), read_floor(model, device)
    for n in lengths:
        ids = random_ids(n - 1, vocab)
        on, off = Session(model, ids), Session(model, ids, capture=False)
        row = {
            "capture_on_vs_off": compare(our_step(on), our_step(off), rounds, device),
            "ours_vs_reference": compare(our_step(on), reference_step(ref, ids, device), rounds, device),
            "ours_vs_floor": compare(our_step(on), floor, rounds, device),
            "ours_vs_read": compare(our_step(on), read, rounds, device),
        }
        results["decode"][n] = row
        log.info("decode @%d: capture on/off %.2f, ours/reference %.2f, ours/floor %.2f", n,
                 row["capture_on_vs_off"]["ratio"], row["ours_vs_reference"]["ratio"], row["ours_vs_floor"]["ratio"])
        del on, off
        gc.collect()
    ids = random_ids(512, vocab, 1)
    results["prefill"][512] = compare(our_prefill(model, ids), reference_prefill(ref, ids, device), max(3, rounds // 4), device, 1)
    log.info("prefill 512: ours/reference %.2f", results["prefill"][512]["ratio"])
    results["memory"] = memory(model, vocab)
    return results


def memory(model, vocab: int) -> dict:
    """Bytes held for attention after 1024 tokens: one prefill, and 512 prompt tokens + 512 steps."""
    s = Session(model, random_ids(1024, vocab, 2))
    prefill = s.trace.nbytes
    del s
    gc.collect()
    s = Session(model, random_ids(512, vocab, 3))
    for _ in range(512):
        s.step()
    stepped = s.trace.nbytes
    ref_bytes = model.n_layers * model.n_heads * 1024 * 1024 * 4  # what fp32 dense [L][1,H,T,T] holds
    return {"attention_bytes_prefill_1024": prefill, "attention_bytes_stepped_1024": stepped,
            "reference_fp32_dense_bytes": ref_bytes}


def print_table(all_results: list[dict], goals: dict) -> None:
    out = sys.stdout
    for res in all_results:
        if "gpu" in res:  # printed by tools/bench_cuda.summary
            continue
        out.write(f"\n== {res['device']} ==\n")
        out.write(f"{'measure':44s} {'median':>8s} {'spread':>15s} {'goal':>8s}  ms (a / b)\n")
        for n, row in res["decode"].items():
            for key, goal in (("capture_on_vs_off", goals["capture"]), ("ours_vs_reference", goals["reference"]),
                              ("ours_vs_floor", goals["floor"]), ("ours_vs_read", None)):
                r = row[key]
                out.write(f"{'decode @' + str(n) + ' ' + key:44s} {r['ratio']:8.2f} {r['ratio_min']:7.2f}..{r['ratio_max']:<6.2f}"
                          f" {'<= ' + str(goal) if goal else '-':>8s}  {r['a_ms']:.1f} / {r['b_ms']:.1f}\n")
        r = res["prefill"][512]
        out.write(f"{'prefill 512 ours_vs_reference':44s} {r['ratio']:8.2f} {r['ratio_min']:7.2f}..{r['ratio_max']:<6.2f}"
                  f" {'<= ' + str(goals['prefill']):>8s}  {r['a_ms']:.1f} / {r['b_ms']:.1f}\n")
        m = res["memory"]
        out.write(f"attention held after 1024 tokens: prefill {m['attention_bytes_prefill_1024'] / 1e6:.1f} MB, "
                  f"stepped {m['attention_bytes_stepped_1024'] / 1e6:.1f} MB (goal <= 160 MB; fp32 dense "
                  f"{m['reference_fp32_dense_bytes'] / 1e6:.0f} MB)\n")
        if "gui" in res:
            for k, v in res["gui"].items():
                out.write(f"gui {k:40s} {v:8.1f}\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and lengths")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--lengths", default=None, help="comma-separated context lengths (default 128,512,1024)")
    p.add_argument("--devices", default=None, help="comma-separated (default: cpu, plus cuda when present)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="wall time (default) or process CPU time (steadier on a shared machine; use with --threads 1)")
    p.add_argument("--no-gui", action="store_true", help="skip the GUI timings")
    p.add_argument("--json", default="tools/out/bench.json", help="where to write the results")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    if args.clock == "process":
        CLOCK = time.process_time
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else ([128, 512] if args.quick else [128, 512, 1024])
    rounds = args.rounds or (6 if args.quick else 20)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    goals = {"capture": 1.10, "reference": 0.90, "floor": 1.25, "prefill": 0.85}
    results = []
    for d in devices:
        if torch.device(d).type == "cuda":  # issue 16's GPU items, on shapes built directly on the GPU
            from tools.bench_cuda import run_items, summary

            gpu = run_items(["bandwidth", "gpt2", "llama1b", "llama8b"], torch.device(d), False, args.rounds or 20, 64 * 1024**3)
            sys.stdout.write(f"\n== {d} ==\n{summary(gpu)}\n")
            results.append({"device": d, "gpu": gpu})
            continue
        res = run_device(torch.device(d), lengths, rounds)
        if not args.no_gui and d == devices[0]:
            try:
                from tools.bench_gui import gui_timings

                threads = torch.get_num_threads()
                res["gui"] = gui_timings()  # the window leaves a core to its event loop (share_cpu_with_ui) ...
                torch.set_num_threads(threads)  # ... which must not change what the rest of this run reports
            except ImportError as exc:
                log.warning("GUI timings skipped: %s", exc)
        results.append(res)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rounds": rounds}
    print_table(results, goals)
    sys.stdout.write(f"\npeak RSS {meta['peak_rss_mb']:.0f} MB; torch {meta['torch']}, {meta['threads']} threads\n")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "goals": goals, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
