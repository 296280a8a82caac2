"""The window against a remote engine over a slow link (issue 27): step-to-screen time and event-loop stalls.

    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/bench_remote_gui.py [--latency-ms 200] [--steps 10]
        [--model tiny-gpt] [--prompt-tokens N]

A loopback server subprocess is reached directly and through a local proxy that holds every chunk
--latency-ms each way; a second server (--mirror-limit 0) keeps every trace's patterns on its side, so the
window's tiles, thumbnails and rows are asked of it. The window (offscreen) opens the model on each and
steps --steps times; each step is timed from the request to the new trace on screen with the attention
view's tile and the head grid's thumbnails drawn, and a 5 ms timer in the GUI thread records the longest
gap between its ticks (an event-loop stall) while stepping. Side by side: in-process, loopback (mirrored;
patterns on the server), slow link (the same two).

--look: after stepping, a second scenario per engine ("look around", timed the same way): another layer (and
its sink column on a model with sinks), the row plot of another query, a hovered cell, rollout on and off, each waited for until drawn;
its longest stall is what a read of a pattern kept on the server costs the GUI thread (a round trip when it
waits for the answer there; nothing when Trace.read_now fetches it in the background).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QEventLoop, QSettings, QTimer  # noqa: E402

from engine.remote.launch import spawn_server  # noqa: E402
from tests.remote.test_slow_link import DelayProxy  # noqa: E402


def pump_until(app, done, timeout: float = 120.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the window did not answer in time")
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 5)
        time.sleep(0.001)


def drawn(win) -> bool:  # noqa: ANN001 - the window
    """The new trace is on screen: no engine job, the attention tile and the head grid's thumbnails in."""
    return not win.client.busy and not win._chain and not win.attention_view.pending and not win.head_grid.pending


def settle(app, win, ms: float = 30.0) -> None:  # noqa: ANN001
    """Until drawn, then `ms` more of event loop: the 5 ms timer ticks after the last action, so a stall in it
    is measured even when the answer was there at once."""
    pump_until(app, lambda: drawn(win))
    end = time.monotonic() + ms / 1e3
    while time.monotonic() < end:
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 5)
        time.sleep(0.001)


def look_around(app, win) -> None:  # noqa: ANN001 - the window
    """Reads that are not a step's: another layer, another query's row plot, a hovered cell, rollout."""
    view, s = win.attention_view, win.state
    n = len(s.trace)
    n_layers = s.trace.n_layers.get(s.kind, 1)
    for layer, query, cell in ((1, n // 2, (n - 2, 1)), (0, n // 3, (n - 1, 2))):
        s.select(layer=layer % n_layers)
        settle(app, win)
        view.row_plot_box.setChecked(True)
        s.select(query=query)
        settle(app, win)
        if hasattr(view, "hover"):
            view.hover(*cell)
        else:  # before Trace.read_now (the same work the mouse did)
            view.readout.setText(view.describe(*cell))
        settle(app, win)
        win.analysis.rollout.set_active(True)
        settle(app, win)
        win.analysis.rollout.set_active(False)
        settle(app, win)
        view.row_plot_box.setChecked(False)


def measure(app, win, target, steps: int, model: str, prompt: str, look: bool = False) -> dict:  # noqa: ANN001
    if target is not None:
        win.remote_engine.connect_to(target)
        pump_until(app, lambda: win.client.engine.remote and not win.client.busy)
    win.open_model(model, prompt=prompt)
    pump_until(app, lambda: win.state.trace is not None and drawn(win))
    conn = getattr(win.client.engine, "conn", None)
    received = conn.bytes_received if conn is not None else 0
    on_server = bool(getattr(win.state.trace, "patterns_on_server", False))
    gaps, last = [], [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    times = []
    timer.start()
    for _ in range(steps):
        n = len(win.state.trace)
        t0 = time.perf_counter()
        win.client.step()
        pump_until(app, lambda n=n: len(win.state.trace) == n + 1 and drawn(win))
        times.append(time.perf_counter() - t0)
    per_step = (conn.bytes_received - received) / steps if conn is not None else 0
    step_stall = max(gaps) if gaps else 0.0
    looked = {}
    if look:
        gaps.clear()
        last[0] = time.perf_counter()
        t0 = time.perf_counter()
        look_around(app, win)
        looked = {"look_ms": round(1e3 * (time.perf_counter() - t0), 1),
                  "look_longest_stall_ms": round(1e3 * max(gaps), 1) if gaps else 0.0}
    timer.stop()
    return {**looked, "step_to_screen_ms": round(1e3 * statistics.median(times), 1),
            "longest_stall_ms": round(1e3 * step_stall, 1),
            "patterns_on_server": on_server, "bytes_received_per_step": int(per_step)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--model", default="tiny-gpt", help="a bundled model (both servers open it)")
    p.add_argument("--prompt-tokens", type=int, default=0,
                   help="a prompt of this many words (default: one sentence)")
    p.add_argument("--look", action="store_true",
                   help="after stepping, time another layer, row plot, hovered cell and rollout (see above)")
    args = p.parse_args()
    prompt = "In the beginning God created the heaven and the earth."
    if args.prompt_tokens:
        words = (prompt + " And the earth was without form, and void.").split()
        prompt = " ".join(words[i % len(words)] for i in range(args.prompt_tokens))
    from gui.shell.app import make_app
    from gui.shell.main_window import MainWindow

    app = make_app()
    proc, address, token = spawn_server()
    far_proc, far_address, far_token = spawn_server(extra_args=("--mirror-limit", "0"))
    proxies = []
    targets = [("in-process", None)]
    for label, addr, tok in (("", address, token), (", on server", far_address, far_token)):
        host, port = addr.rsplit(":", 1)
        proxies.append(DelayProxy((host, int(port)), args.latency_ms / 1000))
        targets += [(f"loopback{label}", {"address": addr, "token": tok}),
                    (f"+{args.latency_ms:.0f} ms{label}", {"address": f"127.0.0.1:{proxies[-1].port}", "token": tok})]
    results = {}
    try:
        for name, target in targets:
            win = MainWindow(settings=QSettings(str(Path(os.devnull)), QSettings.Format.IniFormat), devices=["cpu"])
            win.resize(1280, 800)
            win.show()
            results[name] = measure(app, win, target, args.steps, args.model, prompt, args.look)
            win.close()
            print(name, results[name], flush=True)
    finally:
        for proxy in proxies:
            proxy.close()
        for p_ in (proc, far_proc):
            p_.terminate()
            p_.wait(10)
    base = results["in-process"]["step_to_screen_ms"]
    print(f"{'engine':>22} {'step→screen ms':>15} {'/ in-process':>12} {'longest stall ms':>17} {'B received/step':>16}")
    for name, r in results.items():
        print(f"{name:>22} {r['step_to_screen_ms']:>15} {r['step_to_screen_ms'] / base:>12.2f} {r['longest_stall_ms']:>17} "
              f"{r['bytes_received_per_step']:>16}")
    if args.look:
        print(f"{'engine':>22} {'look around ms':>15} {'longest stall ms':>17}")
        for name, r in results.items():
            print(f"{name:>22} {r['look_ms']:>15} {r['look_longest_stall_ms']:>17}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
