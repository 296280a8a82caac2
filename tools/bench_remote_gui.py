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


def measure(app, win, target, steps: int, model: str, prompt: str) -> dict:  # noqa: ANN001
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
    timer.stop()
    per_step = (conn.bytes_received - received) / steps if conn is not None else 0
    return {"step_to_screen_ms": round(1e3 * statistics.median(times), 1),
            "longest_stall_ms": round(1e3 * max(gaps), 1) if gaps else 0.0,
            "patterns_on_server": on_server, "bytes_received_per_step": int(per_step)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--model", default="tiny-gpt", help="a bundled model (both servers open it)")
    p.add_argument("--prompt-tokens", type=int, default=0,
                   help="a prompt of this many words (default: one sentence)")
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
            results[name] = measure(app, win, target, args.steps, args.model, prompt)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
