"""Benchmark of the transformers backend (engine.hf_backend, issue 26), ratios side by side in one run:

1. memory kept for inspection at long T on a Llama-shaped mixture-of-experts model: the trace's queries, keys
   and row statistics vs every pattern as float16 (layers x heads x T^2 x 2 bytes), at several lengths (linear?);
2. prefill and one decode step with capture / transformers sdpa without capture (same model, same threads);
3. the native engine / this backend on a native architecture (Llama), prefill and decode step.

    .venv/bin/python tools/bench_hf_backend.py                      # T 512 and 2048 for timing, 8192 for memory
    .venv/bin/python tools/bench_hf_backend.py --lengths 512 --memory-lengths 1024,4096 --rounds 2
    .venv/bin/python tools/bench_hf_backend.py --only sdpa --lengths 512 --rounds 5 --steps 16   # decode step

Timings alternate the contestants each round and report the median of per-round ratios (min..max).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import Session, load_model  # noqa: E402

log = logging.getLogger("bench_hf_backend")
SHAPE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
             intermediate_size=512, max_position_embeddings=16384, vocab_size=512)


def _init(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() >= 2 else 0.05) + (1.0 if "norm" in name else 0.0))
    return model.eval()


def build(folder: Path, kind: str) -> Path:
    """A random Llama-shaped MoE (Mixtral, 4 experts, top 2) or a dense Llama, with a byte-level tokenizer."""
    import transformers

    from tests.factories import _save, byte_level_tokenizer

    if (folder / "config.json").exists():
        return folder
    tok = byte_level_tokenizer(SHAPE["vocab_size"], ["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    common = dict(SHAPE, vocab_size=tok.get_vocab_size(), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    if kind == "moe":
        model = transformers.MixtralForCausalLM(transformers.MixtralConfig(num_local_experts=4, num_experts_per_tok=2,
                                                                            **common))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    return _save(_init(model), tok, folder)


def _median_ratio(pairs: list[tuple[float, float]]) -> str:
    ratios = [a / b for a, b in pairs]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}..{max(ratios):.2f})"


def _time(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def memory(model, lengths: list[int]) -> None:  # noqa: ANN001
    c = model.config
    print(f"\n1. memory kept for inspection ({c.model_type}, {c.n_layers} layers x {c.n_heads} heads, "
          f"{len(model.moe_layers)} MoE layers)")
    print(f"{'T':>7} {'kept MB':>9} {'fp16 patterns MB':>17} {'kept / patterns':>16} {'kept per token kB':>18}")
    for T in lengths:
        ids = [i % 400 + 1 for i in range(T)]
        trace = model.run(ids)
        kept = trace.nbytes
        patterns = c.n_layers * c.n_heads * T * T * 2
        print(f"{T:>7} {kept / 1e6:>9.1f} {patterns / 1e6:>17.1f} {kept / patterns:>16.4f} {kept / T / 1e3:>18.2f}")


def against_sdpa(model, folder: Path, lengths: list[int], rounds: int, steps: int = 1) -> None:  # noqa: ANN001
    import transformers

    sdpa = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    print("\n2. with capture (this backend) / transformers sdpa without capture, same model and threads "
          f"({torch.get_num_threads()} threads; decode: median of {steps} step(s) each way per round, alternating)")
    for T in lengths:
        ids = [i % 400 + 1 for i in range(T)]
        prefill, step = [], []
        for _ in range(rounds):
            ours_p = _time(lambda ids=ids: model.run(ids))
            with torch.inference_mode():
                theirs_p = _time(lambda ids=ids: sdpa(torch.tensor([ids]), logits_to_keep=1))
            prefill.append((ours_p, theirs_p))
            session = Session(model, ids)
            cache = transformers.DynamicCache(config=sdpa.config)
            with torch.inference_mode():
                sdpa(torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1)
            ours_s, theirs_s = [], []
            for _ in range(steps):
                if session.finished:  # end of sequence chosen: undo it (not timed), keep stepping
                    session.back()
                ours_s.append(_time(session.step))  # a whole Session.step: sampling, forward, recording
                with torch.inference_mode():
                    theirs_s.append(_time(lambda c=cache: sdpa(torch.tensor([[7]]), cache=c, use_cache=True,
                                                               logits_to_keep=1)))
            step.append((statistics.median(ours_s), statistics.median(theirs_s)))
        print(f"  T {T:>6}: prefill {_median_ratio(prefill)}  decode step {_median_ratio(step)}  "
              f"(ours {statistics.median(p[0] for p in prefill):.3f} s / {statistics.median(s[0] for s in step) * 1e3:.1f} ms; "
              f"sdpa {statistics.median(p[1] for p in prefill):.3f} s / {statistics.median(s[1] for s in step) * 1e3:.1f} ms)")


def native_vs_backend(folder: Path, lengths: list[int], rounds: int) -> None:
    native = load_model(folder, device="cpu", dtype="float32")
    ours = load_model(folder, device="cpu", dtype="float32", backend="transformers")
    print("\n3. native engine / transformers backend, same Llama checkpoint, both capturing (rebuild mode)")
    native.capture_mode = "rebuild"
    for T in lengths:
        ids = [i % 400 + 1 for i in range(T)]
        prefill, step = [], []
        for _ in range(rounds):
            a = _time(lambda ids=ids: native.run(ids))
            b = _time(lambda ids=ids: ours.run(ids))
            prefill.append((a, b))
            sa, sb = Session(native, ids), Session(ours, ids)
            step.append((_time(sa.step), _time(sb.step)))
        print(f"  T {T:>6}: prefill {_median_ratio(prefill)}  decode step {_median_ratio(step)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,2048", help="prompt lengths for the timings")
    parser.add_argument("--memory-lengths", default="2048,8192", help="prompt lengths for the memory table")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="decode steps timed each way per round (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--only", default="memory,sdpa,native", help="which parts to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.only.split(","))
    lengths = [int(x) for x in args.lengths.split(",")]
    root = Path(tempfile.gettempdir()) / "attention-inspector-bench-hf"
    moe_folder, llama_folder = build(root / "moe", "moe"), build(root / "llama", "llama")
    moe = load_model(moe_folder, device="cpu", dtype="float32")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {moe!r}")
    if "memory" in parts:
        memory(moe, [int(x) for x in args.memory_lengths.split(",")])
    if "sdpa" in parts:
        against_sdpa(moe, moe_folder, lengths, args.rounds, args.steps)
    if "native" in parts:
        native_vs_backend(llama_folder, lengths, args.rounds)


if __name__ == "__main__":
    main()
