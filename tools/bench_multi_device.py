"""A model over several devices, measured: the placement and the time of a prefill and of one decode step for the
same random checkpoint all on one device, half offloaded to the CPU, over two GPUs (where there are two), and as
`device="auto"` places it, with each split's largest logit difference from the one-device model.

    python tools/bench_multi_device.py --device cuda --json out.json     # on a GPU machine (tools/gpu_check.sh)
    python tools/bench_multi_device.py --device cpu                      # dry run: "cpu" + "cpu:1", tiny shape

A dry run on the CPU also times the one-device forward against the same model split over "cpu" and "cpu:1"
(both the CPU: the difference is only the boundary copies and bookkeeping). Figures are medians; they are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import Session, load_model  # noqa: E402
from engine.multi_device import blocks  # noqa: E402
from engine.placement import Placement  # noqa: E402
from tools.bench_cuda import save_checkpoint  # noqa: E402


def sync(devices: tuple[str, ...]) -> None:
    for d in devices:
        if d.startswith("cuda"):
            torch.cuda.synchronize(d)


def measure(model, ids: list[int], steps: int) -> dict:  # noqa: ANN001
    t0 = time.perf_counter()
    session = Session(model, ids)
    sync(model.devices)
    prefill = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        session.step()
        sync(model.devices)
        times.append(time.perf_counter() - t)
    return {"placement": model.placement, "prefill_ms": 1e3 * prefill, "step_ms": 1e3 * statistics.median(times),
            "logits": session.trace.logits[len(ids) - 1 :]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", default="llama1b", help="a tools/bench_cuda.py shape (tiny on the CPU)")
    p.add_argument("--tokens", type=int, default=None, help="prompt length (default 512 on a GPU, 64 on the CPU)")
    p.add_argument("--steps", type=int, default=None, help="decode steps timed (default 16 on a GPU, 8 on the CPU)")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    gpu = args.device != "cpu"
    first = "cuda:0" if gpu else "cpu"
    other = "cpu" if gpu else "cpu:1"  # the offload device (the dry run: a second name for the CPU)
    n_tok, steps = args.tokens or (512 if gpu else 64), args.steps or (16 if gpu else 8)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_checkpoint(args.shape, Path(tmp) / args.shape, torch.device(first), tiny=not gpu)
        whole = load_model(folder, device=first, dtype="float32" if not gpu else None)
        n = len(blocks(whole.net))
        ids = list(np.random.default_rng(0).integers(5, whole.config.vocab_size, n_tok))
        runs = {"one device": whole}
        half = tuple(first if i < n // 2 else other for i in range(n))
        runs["half offloaded"] = load_model(folder, device=Placement(half, first, first, {}),
                                            dtype="float32" if not gpu else None)
        if gpu and torch.cuda.device_count() > 1:
            two = tuple("cuda:0" if i < n // 2 else "cuda:1" for i in range(n))
            runs["two GPUs"] = load_model(folder, device=Placement(two, "cuda:0", "cuda:1", {}))
        if gpu:
            runs["auto"] = load_model(folder, device="auto")
        for name, model in runs.items():
            measure(model, ids[:32], 2)  # warm-up
            results[name] = measure(model, ids, steps)
            del model
        base = results["one device"]["logits"]
        for name, r in results.items():
            r["max_logit_diff"] = float(np.abs(r.pop("logits") - base).max())
            print(f"{name:16s} {r['placement']:60s} prefill {r['prefill_ms']:8.1f} ms  step {r['step_ms']:7.2f} ms  "
                  f"max |logit diff| {r['max_logit_diff']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "shape": args.shape, "tokens": n_tok,
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
