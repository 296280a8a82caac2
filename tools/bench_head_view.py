"""How long the head view takes at 1,000 tokens: a new trace, and a query change (the lines, then the paint).

    .venv/bin/python tools/bench_head_view.py        # offscreen; needs the test extra (transformers) for the checkpoint

A random 2-layer, 4-head GPT-2 with a 1,024-token context is built in a temporary folder; a 1,000-token
trace is shown in a HeadView of 420x800, then 40 random queries are selected at each threshold. "lines" is
state.select(query=…) -> HeadView.redraw_lines (one Trace.attention_row, no widget moved), "paint" a
synchronous repaint of the canvas's viewport."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main() -> None:
    from engine import load_model
    from gui.core.state import InspectorState
    from gui.core.worker import ModelInfo
    from gui.panels.head_view import HeadView
    from gui.shell.app import make_app
    from tests.gui.conftest import long_gpt2

    folder = long_gpt2(Path(tempfile.mkdtemp()) / "gpt2-long")
    model = load_model(str(folder), device="cpu")
    ids = (model.tokenizer.encode(" ".join(["In the beginning God created the heaven and the earth."] * 120)) * 2)[:1000]
    trace = model.run(ids)
    app = make_app()
    state = InspectorState()
    info = ModelInfo(name="bench", folder=None, family="decoder", kinds=("self",), layers_by_kind={"self": 2},
                     n_heads=trace.n_heads, n_params=0, device="cpu", dtype="float32", load_seconds=0.0, vocab=(),
                     mask_token=None, max_positions=1024, has_logits=True)
    view = HeadView(state)
    view.resize(420, 800)
    view.show()
    app.processEvents()
    state.set_model(info)
    t0 = time.perf_counter()
    state.set_trace(trace)
    app.processEvents()
    print(f"{len(trace)} tokens, new trace: {1000 * (time.perf_counter() - t0):.1f} ms")
    for threshold in (0.01, 0.002, 0.0):
        view.set_threshold(threshold)
        lines, paint = [], []
        for q in np.random.default_rng(0).integers(0, len(trace), 40):
            t0 = time.perf_counter()
            state.select(query=int(q))
            t1 = time.perf_counter()
            view.canvas.viewport().repaint()
            t2 = time.perf_counter()
            lines.append(t1 - t0)
            paint.append(t2 - t1)
        lines_ms = 1000 * np.array(lines)
        print(f"threshold {threshold:g}: lines median {np.median(lines_ms):.2f} ms (max {lines_ms.max():.2f}), "
              f"paint median {1000 * np.median(paint):.2f} ms (max {1000 * max(paint):.2f}), "
              f"{view.line_count()} lines, {len(view.canvas.scene().items())} scene items")


if __name__ == "__main__":
    main()
