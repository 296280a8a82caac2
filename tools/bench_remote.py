"""Remote engine benchmark (issue 27): a step answered by a loopback server vs in-process, and bytes per step.

    .venv/bin/python tools/bench_remote.py                          # 1k and 8k tokens, CPU-sized Llama shape
    .venv/bin/python tools/bench_remote.py --lengths 1024 --steps 4 --modes rebuild,patterns
    python tools/bench_remote.py --device cuda --json-out remote.json   # on a GPU machine (tools/gpu_check.sh)
    .venv/bin/python tools/bench_remote.py --bytes --shape 1b-2l --lengths 1024,8192   # full mirror vs on server

For each context length and capture mode, the same random prompt is prefilled in-process and on a server
subprocess (127.0.0.1), then both step side by side, alternating which goes first each round. One "answer"
is what the window needs after a step: session.step(), the new Trace (mirrored on the client), the new
position's logits row (the candidates panel reads it: a vocabulary-wide row crosses the wire) and one head's
new attention row. Reported: the median time of an answer remote / in-process (ratio, and ms each), and the
bytes that crossed per step (sent + received, the step alone and with the logits row).

--bytes: what crosses with the whole record mirrored (a client asking for no limit) vs with the patterns kept
on the server (mirror limit 0), counted at the client's connection: the prefill (session opened, no logits
row), what a window draws first (a 512 × 512 overview of one head and every layer's 64 × 64 head-grid
thumbnails), and per step the step alone and with what the window then draws (one head's new row, every
layer's pooled new row, the 512 × 512 overview again). Shapes: "1b" (a 1B Llama: 16 layers; slow on a CPU),
"1b-2l" (two of its layers: its per-layer bytes exactly), "cpu" (small).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_long import CACHE, llama_folder  # noqa: E402

from engine import Session, load_model  # noqa: E402
from engine.remote import connect  # noqa: E402
from engine.remote.launch import spawn_server  # noqa: E402

log = logging.getLogger("bench_remote")


def answer(session) -> tuple[float, int]:  # noqa: ANN001 - engine.Session or RemoteSession
    t0 = time.perf_counter()
    step = session.step()
    trace = session.trace
    n = len(trace)
    trace.logits_at(n - 1)
    trace.attention_row("self", 0, n - 1)
    return time.perf_counter() - t0, step.token_id


def run(length: int, mode: str, steps: int, rounds: int, eng, folder: Path, device: str) -> dict:  # noqa: ANN001
    rng = np.random.default_rng(length)
    local_model = load_model(str(folder), device=device)
    local_model.capture_mode = mode
    remote_model = eng.load_model(str(folder), device=device, capture_mode=mode)
    vocab = local_model.config.vocab_size
    ids = [int(i) for i in rng.integers(1, vocab - 2, size=length)]
    times = {"local": [], "remote": []}
    bytes_step, bytes_answer = [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        ls = Session(local_model, ids)
        t_local_prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        rs = eng.Session(remote_model, ids)
        t_remote_prefill = time.perf_counter() - t0
        log.info("T=%d %s round %d: prefill %.2f s here, %.2f s remote", length, mode, r, t_local_prefill, t_remote_prefill)
        for i in range(steps):
            order = ("local", "remote") if (r + i) % 2 == 0 else ("remote", "local")
            for who in order:
                if who == "local":
                    dt, tok_l = answer(ls)
                    times["local"].append(dt)
                else:
                    c = eng.conn
                    before = c.bytes_sent + c.bytes_received
                    t0 = time.perf_counter()
                    rs.step()
                    step_done = c.bytes_sent + c.bytes_received
                    trace = rs.trace
                    n = len(trace)
                    trace.logits_at(n - 1)
                    trace.attention_row("self", 0, n - 1)
                    times["remote"].append(time.perf_counter() - t0)
                    bytes_step.append(step_done - before)
                    bytes_answer.append(c.bytes_sent + c.bytes_received - before)
            assert rs.ids == ls.ids, "remote and in-process sessions diverged"
    ratios = [r / loc for r, loc in zip(times["remote"], times["local"])]
    return {"tokens": length, "mode": mode, "rebuilds": bool(remote_model.rebuilds_patterns),
            "local_ms": round(1e3 * statistics.median(times["local"]), 2),
            "remote_ms": round(1e3 * statistics.median(times["remote"]), 2),
            "ratio_median": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
            "bytes_per_step": int(statistics.median(bytes_step)),
            "bytes_per_step_with_logits_row": int(statistics.median(bytes_answer))}


def drawn_bytes(trace, conn, first: bool) -> int:  # noqa: ANN001 - RemoteTrace, Connection
    """Bytes received while fetching what a window draws: at `first` the whole head grid (64 × 64 bins per
    head) and a 512 × 512 overview of head 0; after a step the new row of head 0 (the head view, the token
    strip), every layer's pooled new row (the head grid) and the overview again (the view's tile)."""
    before = conn.bytes_received
    n, layers = len(trace), trace.n_layers["self"]
    width = 1
    while -(-n // width) > 64:
        width *= 2
    if first:
        for layer in range(layers):
            trace.attention_pooled("self", layer, 0, n, n, width)
    else:
        trace.attention_row("self", 0, n - 1)
        for layer in range(layers):
            trace.attention_pooled("self", layer, n - 1, n, n, width)
    trace.attention_overview("self", 0, heads=[0], rows=512, cols=512)
    return conn.bytes_received - before


def bytes_run(length: int, steps: int, address: str, token: str, folder: Path, device: str) -> list[dict]:
    rng = np.random.default_rng(length)
    out = []
    for label, limit in (("mirrored", 2**62), ("on server", 0)):
        eng = connect(address, token, mirror_limit=limit)
        eng.prefetch_logits = False
        model = eng.load_model(str(folder), device=device, capture_mode="rebuild")
        ids = [int(i) for i in rng.integers(1, model.config.vocab_size - 2, size=length)]
        c = eng.conn
        before = c.bytes_received
        t0 = time.perf_counter()
        session = eng.Session(model, ids)
        prefill_s = time.perf_counter() - t0
        prefill = c.bytes_received - before
        step_alone, step_drawn = [], []
        for _ in range(steps):  # nothing drawn: the step alone
            before = c.bytes_sent + c.bytes_received
            session.step()
            step_alone.append(c.bytes_sent + c.bytes_received - before)
        first = drawn_bytes(session.trace, c, first=True)
        for _ in range(steps):  # then as a window steps: what its views asked comes with the step, or right after
            before = c.bytes_sent + c.bytes_received
            session.step()
            step_drawn.append(c.bytes_sent + c.bytes_received - before + drawn_bytes(session.trace, c, first=False))
        out.append({"tokens": length, "mirror": label, "on_server": bool(session.trace.patterns_on_server),
                    "prefill_bytes": prefill, "prefill_s": round(prefill_s, 2), "first_draw_bytes": first,
                    "step_bytes": int(statistics.median(step_alone)), "step_drawn_bytes": int(statistics.median(step_drawn)),
                    "client_holds_bytes": int(session.trace.nbytes)})
        log.info("%s", out[-1])
        eng.close()
        rng = np.random.default_rng(length)  # the same prompt for both
    return out


def main_bytes(args: argparse.Namespace) -> int:
    folder = llama_folder(args.shape)
    proc, address, token = spawn_server(models_dirs=(CACHE,))
    results = []
    try:
        for length in (int(x) for x in args.lengths.split(",")):
            results += bytes_run(length, args.steps, address, token, folder, args.device)
    finally:
        proc.terminate()
        proc.wait(10)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"device": args.device, "shape": args.shape, "results": results}, indent=1))
    print(f"shape {args.shape}: bytes received by the client (MB = 2^20 bytes)")
    print(f"{'tokens':>7} {'mirror':>10} {'prefill MB':>11} {'prefill s':>9} {'first draw MB':>13} {'step B':>8} "
          f"{'step+drawn B':>12} {'client holds MB':>15}")
    for r in results:
        print(f"{r['tokens']:>7} {r['mirror']:>10} {r['prefill_bytes'] / 2**20:>11.3f} {r['prefill_s']:>9} "
              f"{r['first_draw_bytes'] / 2**20:>13.3f} {r['step_bytes']:>8} {r['step_drawn_bytes']:>12} "
              f"{r['client_holds_bytes'] / 2**20:>15.1f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="1024,8192")
    p.add_argument("--modes", default="rebuild,patterns", help="capture modes (patterns only up to 2048 tokens)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--shape", default="cpu", choices=["cpu", "1b", "1b-2l"])
    p.add_argument("--bytes", action="store_true", help="bytes crossing, whole record mirrored vs kept on the server")
    p.add_argument("--device", default="cpu", help="where both engines run (the server's and this process's)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--json-out", metavar="FILE", help="also write them there (tools/gpu_check.sh)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.bytes:
        return main_bytes(args)
    folder = llama_folder(args.shape)
    proc, address, token = spawn_server(models_dirs=(CACHE,))
    results = []
    try:
        eng = connect(address, token)
        eng.prefetch_logits = False  # bytes of a step alone (top candidates), then of the row the window reads
        for length in (int(x) for x in args.lengths.split(",")):
            for mode in args.modes.split(","):
                if mode == "patterns" and length > 2048:
                    continue  # layers × heads × T² floats: the stored mode is for short contexts
                results.append(run(length, mode, args.steps, args.rounds, eng, folder, args.device))
                log.info("%s", results[-1])
        eng.close()
    finally:
        proc.terminate()
        proc.wait(10)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"device": args.device, "results": results}, indent=1))
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(f"{'tokens':>7} {'mode':>9} {'here ms':>8} {'remote ms':>9} {'remote/here':>18} {'B/step':>9} {'B/step+row':>10}")
        for r in results:
            print(f"{r['tokens']:>7} {r['mode']:>9} {r['local_ms']:>8} {r['remote_ms']:>9} "
                  f"{r['ratio_median']:>6} ({r['ratio_min']}..{r['ratio_max']}) {r['bytes_per_step']:>9} "
                  f"{r['bytes_per_step_with_logits_row']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
