"""Inside the MLP and patching through a loopback engine server vs in-process (issue 29 over issue 27's wire).

    .venv/bin/python tools/bench_remote_mlp.py                       # tiny-llama, a 200-token prompt, CPU
    .venv/bin/python tools/bench_remote_mlp.py --model tiny-gpt --tokens 500 --rounds 5

The same prompt and second prompt are run in-process and on a server subprocess (127.0.0.1); then, alternating
which goes first each round, mlp_neurons (k=20, with the residual stream), one patch (a head, no capture) and the
layer x head sweep. Reported: the median seconds of each side, remote / in-process, and the bytes each remote
call moved (sent + received).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import load_model  # noqa: E402
from engine.local import LocalEngine  # noqa: E402
from engine.remote import connect  # noqa: E402
from engine.remote.launch import spawn_server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    proc, address, token = spawn_server()
    try:
        eng = connect(address, token=token)
        import torch

        torch.set_num_threads(eng.info["torch_threads"])  # the same reductions both sides
        local = LocalEngine()
        lm, rm = load_model(args.model, device="cpu"), eng.load_model(args.model, device="cpu")
        rng = np.random.default_rng(0)
        vocab = lm.config.vocab_size
        clean = [int(i) for i in rng.integers(5, vocab - 2, size=args.tokens)]
        corrupt = [int(i) for i in rng.integers(5, vocab - 2, size=args.tokens)]
        sides = {"local": (local, lm, lm.run(clean), lm.run(corrupt)), "remote": (eng, rm, rm.run(clean), rm.run(corrupt))}
        jobs = {
            "mlp_neurons": lambda e, m, a, b: e.mlp_neurons(m, a, 1, len(clean) - 1, k=20),
            "patch": lambda e, m, a, b: e.patch(m, a, b, "L1.H2", capture=False),
            "patch_sweep": lambda e, m, a, b: e.patch_sweep(m, a, b, 40, 41),
        }
        out: dict[str, dict] = {}
        for name, job in jobs.items():
            times: dict[str, list[float]] = {"local": [], "remote": []}
            moved = []
            for r in range(args.rounds):
                for side in (("local", "remote") if r % 2 == 0 else ("remote", "local")):
                    before = eng.conn.bytes_sent + eng.conn.bytes_received
                    t0 = time.perf_counter()
                    job(*sides[side])
                    times[side].append(time.perf_counter() - t0)
                    if side == "remote":
                        moved.append(eng.conn.bytes_sent + eng.conn.bytes_received - before)
            lo, re_ = statistics.median(times["local"]), statistics.median(times["remote"])
            out[name] = {"local_s": lo, "remote_s": re_, "ratio": re_ / lo, "bytes": int(statistics.median(moved))}
            print(f"{name:12s} in-process {lo * 1e3:8.1f} ms  remote {re_ * 1e3:8.1f} ms  ratio {re_ / lo:5.2f}  "
                  f"{out[name]['bytes']:>9,d} bytes")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({"model": args.model, "tokens": args.tokens, **out}, indent=1))
        eng.close()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
