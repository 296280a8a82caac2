"""Benchmark of activation patching on the transformers backend (engine.hf_backend.patching) against the native
engine's, side by side in one run on the same random Llama checkpoint: one patch of a head, one of an MLP, and
the layer × head sweep (batched: every head of a layer in one forward; and one head per forward), each as
native / transformers; and the sweep's one-head-per-forward / batched on the transformers backend.

    .venv/bin/python tools/bench_hf_patching.py                   # T 256, 3 rounds
    .venv/bin/python tools/bench_hf_patching.py --length 512 --rounds 5

Each round times both backends back to back (alternating which goes first); the ratio is the median of the
per-round ratios (min..max), after one untimed call each. Ratios below 1: the transformers backend is slower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import load_model  # noqa: E402
from engine.patching import patch, patch_sweep  # noqa: E402

SHAPE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
             intermediate_size=512, max_position_embeddings=4096)


def _ratio_line(name: str, times: dict, ratios: list[float]) -> str:
    a, b = (statistics.median(v) for v in times.values())
    return f"{name:<22} {a:>10.3f} {b:>10.3f} {statistics.median(ratios):>8.2f} ({min(ratios):.2f}..{max(ratios):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=256, help="tokens in each prompt")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from tests.modern_factories import llama

    with tempfile.TemporaryDirectory() as tmp:
        folder = llama(Path(tmp) / "llama", **SHAPE)
        models = {"native": load_model(folder, device="cpu"),
                  "transformers": load_model(folder, device="cpu", backend="transformers")}
        clean = [5 + (i * 7) % 250 for i in range(args.length)]
        corrupt = [5 + (i * 11) % 250 for i in range(args.length)]
        jobs = {
            "patch L2.H3": lambda m: patch(m, clean, corrupt, "L2.H3", capture=False),
            "patch L2.MLP": lambda m: patch(m, clean, corrupt, "L2.MLP", capture=False),
            "sweep, batched": lambda m: patch_sweep(m, clean, corrupt, 40, 41),
            "sweep, one head each": lambda m: patch_sweep(m, clean, corrupt, 40, 41, batch=1),
        }
        print(f"random Llama {SHAPE['num_hidden_layers']} layers × {SHAPE['num_attention_heads']} heads, "
              f"d {SHAPE['hidden_size']}, T {args.length}, {args.rounds} rounds")
        print(f"{'job':<22} {'native s':>10} {'hf s':>10} {'native / hf':>10}")
        hf_times: dict[str, list[float]] = {}
        for name, job in jobs.items():
            ratios, times = [], {"native": [], "transformers": []}
            for k in models:  # one untimed call each: first-call costs left out
                job(models[k])
            for r in range(args.rounds):
                order = ("native", "transformers") if r % 2 == 0 else ("transformers", "native")
                took = {}
                for k in order:
                    start = time.perf_counter()
                    job(models[k])
                    took[k] = time.perf_counter() - start
                    times[k].append(took[k])
                ratios.append(took["native"] / took["transformers"])
            hf_times[name] = times["transformers"]
            print(_ratio_line(name, times, ratios))
        per_round = [a / b for a, b in zip(hf_times["sweep, one head each"], hf_times["sweep, batched"])]
        print(f"transformers backend, sweep one head each / batched: {statistics.median(per_round):.2f} "
              f"({min(per_round):.2f}..{max(per_round):.2f})")


if __name__ == "__main__":
    main()
