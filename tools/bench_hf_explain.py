"""Benchmark of the explanations on the transformers backend (engine.hf_backend.explain) against the native
engine's, side by side in one run on the same random Llama checkpoint: the time of each explanation (inside one
head, direct logit attribution, the residual stream, one MLP's neurons, the logit lens) as native / transformers.

    .venv/bin/python tools/bench_hf_explain.py                   # T 256, 3 rounds
    .venv/bin/python tools/bench_hf_explain.py --length 1024 --rounds 5

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
from engine.analysis import logit_lens  # noqa: E402
from engine.explain import attribute, inside_head, mlp_neurons, residual_stream  # noqa: E402

SHAPE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
             intermediate_size=512, max_position_embeddings=4096)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=256, help="tokens in the trace")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from tests.modern_factories import llama

    with tempfile.TemporaryDirectory() as tmp:
        folder = llama(Path(tmp) / "llama", **SHAPE)
        models = {"native": load_model(folder, device="cpu"),
                  "transformers": load_model(folder, device="cpu", backend="transformers")}
        ids = [5 + (i * 7) % 250 for i in range(args.length)]
        traces = {k: m.run(ids) for k, m in models.items()}
        q = args.length - 1
        jobs = {
            "inside_head": lambda m, t: inside_head(m, t, "self", 2, 3, q),
            "attribute": lambda m, t: attribute(m, t, q),
            "residual_stream": lambda m, t: residual_stream(m, t, q),
            "mlp_neurons": lambda m, t: mlp_neurons(m, t, 2, q),
            "logit_lens": lambda m, t: logit_lens(m, t, q),
        }
        print(f"random Llama {SHAPE['num_hidden_layers']} layers, d {SHAPE['hidden_size']}, T {args.length}, "
              f"{args.rounds} rounds")
        print(f"{'explanation':<16} {'native s':>9} {'transformers s':>15} {'native / transformers':>24}")
        for name, job in jobs.items():
            ratios, times = [], {"native": [], "transformers": []}
            for k in models:  # one untimed call each: first-call costs (lazy imports, probing norms) left out
                job(models[k], traces[k])
            for r in range(args.rounds):
                order = ("native", "transformers") if r % 2 == 0 else ("transformers", "native")
                took = {}
                for k in order:
                    start = time.perf_counter()
                    job(models[k], traces[k])
                    took[k] = time.perf_counter() - start
                    times[k].append(took[k])
                ratios.append(took["native"] / took["transformers"])
            print(f"{name:<16} {statistics.median(times['native']):>9.3f} {statistics.median(times['transformers']):>15.3f}"
                  f" {statistics.median(ratios):>10.2f} ({min(ratios):.2f}..{max(ratios):.2f})")


if __name__ == "__main__":
    main()
