"""The window against a remote engine over a slow link (issue 27): step-to-screen time and event-loop stalls.

    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/bench_remote_gui.py [--latency-ms 200] [--steps 10]

A loopback server subprocess is reached directly and through a local proxy that holds every chunk
--latency-ms each way. The window (offscreen) opens tiny-gpt on each and steps --steps times; each step is
timed from the request to the new trace on screen, and a 5 ms timer in the GUI thread records the longest
gap between its ticks (an event-loop stall) while stepping. Side by side: in-process, loopback, slow link.
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


def measure(app, win, target, steps: int) -> dict:  # noqa: ANN001
    if target is not None:
        win.remote_engine.connect_to(target)
        pump_until(app, lambda: win.client.engine.remote and not win.client.busy)
    win.open_model("tiny-gpt", prompt="In the beginning God created the heaven and the earth.")
    pump_until(app, lambda: not win.client.busy and not win._chain and win.state.trace is not None)
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
        pump_until(app, lambda n=n: len(win.state.trace) == n + 1 and not win.client.busy)
        times.append(time.perf_counter() - t0)
    timer.stop()
    return {"step_to_screen_ms": round(1e3 * statistics.median(times), 1),
            "longest_stall_ms": round(1e3 * max(gaps), 1) if gaps else 0.0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    from gui.shell.app import make_app
    from gui.shell.main_window import MainWindow

    app = make_app()
    proc, address, token = spawn_server()
    host, port = address.rsplit(":", 1)
    proxy = DelayProxy((host, int(port)), args.latency_ms / 1000)
    results = {}
    try:
        for name, target in (("in-process", None), ("loopback", {"address": address, "token": token}),
                             (f"+{args.latency_ms:.0f} ms each way", {"address": f"127.0.0.1:{proxy.port}", "token": token})):
            win = MainWindow(settings=QSettings(str(Path(os.devnull)), QSettings.Format.IniFormat), devices=["cpu"])
            win.resize(1280, 800)
            win.show()
            results[name] = measure(app, win, target, args.steps)
            win.close()
            print(name, results[name], flush=True)
    finally:
        proxy.close()
        proc.terminate()
        proc.wait(10)
    base = results["in-process"]["step_to_screen_ms"]
    print(f"{'engine':>22} {'step→screen ms':>15} {'/ in-process':>12} {'longest stall ms':>17}")
    for name, r in results.items():
        print(f"{name:>22} {r['step_to_screen_ms']:>15} {r['step_to_screen_ms'] / base:>12.2f} {r['longest_stall_ms']:>17}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
