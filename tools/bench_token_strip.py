"""GUI-thread CPU per step of the token strip alone (issue 20: at most 16 ms for the whole window).

    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/bench_token_strip.py [--lengths 1024,4096] [--rounds 10]

A GPT-2-small-shaped checkpoint with random weights (tools/bench.py's, with a context of 4,096 so that the
longer lengths fit) and a Session of n random tokens; each round takes one step (not timed), then times
on the GUI thread (time.thread_time) the strip taking the new trace: state.set_trace, then the event loop
until the layout and the paint are done. Only the strip is shown (1400 × 200, about its dock's size in a
1400 × 900 window), so nothing else listens to the state.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def gpt2_small_long_folder(n_positions: int = 4096) -> Path:
    """tools/bench.py's random GPT-2 small, with a longer learned position table."""
    import json
    import shutil

    from tools.bench import CACHE, gpt2_small_folder

    folder = CACHE / f"gpt2-small-random-{n_positions}"
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    from safetensors.torch import load_file, save_file

    base = gpt2_small_folder()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((base / "config.json").read_text())
    cfg["n_positions"] = cfg["n_ctx"] = n_positions
    (folder / "config.json").write_text(json.dumps(cfg))
    shutil.copy(base / "tokenizer.json", folder / "tokenizer.json")
    weights = load_file(base / "model.safetensors")
    wpe = weights["transformer.wpe.weight"]
    weights["transformer.wpe.weight"] = torch.cat([wpe] * (n_positions // wpe.shape[0])).contiguous()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def strip_times(app, strip, state, model, n: int, rounds: int) -> list[float]:
    from engine import Session
    from gui.core.worker import model_info

    state.set_model(model_info(model))
    ids = np.random.default_rng(n).integers(0, model.config.vocab_size - 1, n - rounds - 1).tolist()
    s = Session(model, ids)
    state.set_trace(s.trace)
    for _ in range(3):
        app.processEvents()
    cpu = []
    for _ in range(rounds):
        s.step()
        trace = s.trace  # the engine's work, not timed
        c0 = time.thread_time()
        state.set_trace(trace)
        for _ in range(3):  # the layout request, the scroll, the paint
            app.processEvents()
        cpu.append(1e3 * (time.thread_time() - c0))
    return cpu


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--rounds", type=int, default=10)
    cli = parser.parse_args()

    from engine import load_model
    from gui.core.state import InspectorState
    from gui.core.worker import EngineClient
    from gui.panels.tokens import TokenStrip
    from gui.shell.app import make_app

    app = make_app()
    state, client = InspectorState(), EngineClient()
    strip = TokenStrip(state, client)
    strip.resize(1400, 200)
    strip.show()
    app.processEvents()
    model = load_model(gpt2_small_long_folder(), device="cpu")
    for n in (int(x) for x in cli.lengths.split(",")):
        t0 = time.perf_counter()
        cpu = strip_times(app, strip, state, model, n, cli.rounds)
        sys.stdout.write(f"token strip @{n}: GUI-thread CPU per step median {statistics.median(cpu):.2f} ms, "
                         f"max {max(cpu):.2f} ms over {len(cpu)} steps ({time.perf_counter() - t0:.0f} s)\n")
        sys.stdout.flush()
    client.shutdown()


if __name__ == "__main__":
    main()
