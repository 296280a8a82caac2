"""GUI timings for tools/bench.py: panel updates after one step, and event-loop stalls during a run.

    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/bench_gui.py [--lengths 512,1024] [--rounds 12] \
        [--size 1920x1080] [--theme dark] [--breakdown]
    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/bench_gui.py --model llama --lengths 8192   # long contexts

Models: "gpt2" (GPT-2 small, random weights, up to 1,024 tokens) and "llama" (tools/bench_long.py's CPU-sized
Llama shape, 4 layers, 8 query / 2 key-value heads, rotary, up to 32k tokens; patterns rebuilt on demand).

An update is timed from taking the new trace until every view has drawn it, including what the display
threads (head grid, attention tiles) send back. Reported as the GUI thread's CPU time (time.thread_time:
what the event loop itself spends, which a shared, busy machine does not inflate) and as wall time.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from gui.shell.cpu_share import share_blas_with_ui  # noqa: E402

share_blas_with_ui()  # as the app does, before numpy is imported

import numpy as np  # noqa: E402

log = logging.getLogger("bench.gui")


WINDOW_SIZE = (1400, 900)


class _Breakdown:
    """GUI-thread CPU per (receiver class, event type), exclusive of nested events: where an update's time
    goes. Installed by overriding QApplication.notify, so it costs a little per event itself; use its
    shares, not its totals."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], float] = {}
        self.stack: list[float] = []  # CPU time of nested events, per level
        self.on = False
        self.turns: list[tuple[float, float, str]] | None = None  # (wall ms, CPU ms, what) of top-level events
        self.gui_thread = threading.get_ident()
        self.display: dict[str, float] = {}  # display-thread CPU per request key
        self._patch_display_threads()

    def _patch_display_threads(self) -> None:
        """Time what the display threads compute (their CPU competes with the GUI thread's on a 2-core machine)."""
        from gui.core.render_thread import RenderThread

        submit, breakdown = RenderThread.submit, self

        def timed_submit(thread, key, fn):  # noqa: ANN001, ANN202
            def timed():  # noqa: ANN202
                c0 = time.thread_time()
                try:
                    return fn()
                finally:
                    if breakdown.on:
                        name = f"{thread._thread.name}:{key}"
                        breakdown.display[name] = breakdown.display.get(name, 0.0) + time.thread_time() - c0
            return submit(thread, key, timed)

        RenderThread.submit = timed_submit

    def app_class(self):  # noqa: ANN201 - a QApplication subclass
        from PySide6.QtCore import QEvent
        from PySide6.QtWidgets import QApplication

        breakdown = self

        class TimedApplication(QApplication):
            def notify(self, receiver, event):  # noqa: ANN001, ANN201 - Qt API
                if not breakdown.on or threading.get_ident() != breakdown.gui_thread:
                    return super().notify(receiver, event)
                kind = QEvent.Type(event.type()).name
                where = type(receiver).__name__
                owner = receiver.parent() if where == "QWidget" else None  # a view's viewport: name the view
                if owner is not None:
                    owner = owner.parent() or owner
                    where = f"{type(owner).__name__}.viewport"
                breakdown.stack.append(0.0)
                t0, w0 = time.thread_time(), time.perf_counter()
                try:
                    return super().notify(receiver, event)
                finally:
                    spent = time.thread_time() - t0
                    if breakdown.turns is not None and len(breakdown.stack) == 1:
                        breakdown.turns.append((1e3 * (time.perf_counter() - w0), 1e3 * spent, f"{where} {kind}"))
                    nested = breakdown.stack.pop()
                    key = (where, kind)
                    breakdown.totals[key] = breakdown.totals.get(key, 0.0) + spent - nested
                    if breakdown.stack:
                        breakdown.stack[-1] += spent

        return TimedApplication

    def report_turns(self, top: int = 8) -> None:
        """The longest top-level events of a run: CPU near wall means the GUI thread's own work; wall far
        above CPU means it waited (for the GIL or a core)."""
        turns = sorted(self.turns or [], reverse=True)[:top]
        log.info("longest events during the run (wall ms / GUI-thread CPU ms):")
        for wall, cpu, what in turns:
            log.info("  %6.1f / %5.1f  %s", wall, cpu, what)
        self.turns = None

    def report(self, rounds: int, top: int = 18) -> None:
        rows = sorted(self.totals.items(), key=lambda kv: -kv[1])[:top]
        log.info("GUI-thread CPU per step by receiver and event (exclusive, ms):")
        for (where, kind), total in rows:
            log.info("  %7.2f  %-28s %s", 1e3 * total / rounds, where, kind)
        for name, total in sorted(self.display.items()):
            log.info("  display thread %s: %.2f ms CPU per step", name, 1e3 * total / rounds)
        self.totals.clear()
        self.display.clear()


BREAKDOWN: _Breakdown | None = None
_TICK = None  # a repeating 50 ms timer (made with the window): _drawn re-checks its deadline


def _window():
    from PySide6.QtCore import QSettings

    from gui.shell.app import make_app
    from gui.shell.main_window import MainWindow

    if BREAKDOWN is not None:
        BREAKDOWN.app_class()(sys.argv[:1])
    app = make_app()
    settings = QSettings(str(Path(tempfile.mkdtemp()) / "bench.ini"), QSettings.Format.IniFormat)
    global _TICK
    from PySide6.QtCore import QTimer

    _TICK = QTimer()
    _TICK.setInterval(50)
    window = MainWindow(settings=settings)
    window.resize(*WINDOW_SIZE)
    window.show()
    app.processEvents()
    return app, window


def _drawn(app, window, timeout_s: float = 30.0) -> None:
    """Until the display threads' results for the trace on screen have arrived and been drawn. Waits as the
    app's event loop does, asleep until the next event (every pending state ends with one: a result's queued
    signal, the tile or hold timer): polling processEvents every 0.5 ms cost the GUI thread ~7 % of the
    wait, ~7 ms of CPU while an 8k tile computed, charged to the update."""
    from PySide6.QtCore import QEventLoop

    deadline = time.time() + timeout_s
    views = (window.head_grid, window.attention_view)
    app.processEvents()
    _TICK.start()
    try:
        while any(getattr(v, "pending", False) for v in views) and time.time() < deadline:
            app.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents)
    finally:
        _TICK.stop()
    app.processEvents()


class _PaintCounter:
    """Counts paint events on the views' viewports: the timed update must include their repaints."""

    def __init__(self, widgets) -> None:  # noqa: ANN001
        from PySide6.QtCore import QEvent, QObject

        class Filter(QObject):
            def eventFilter(inner, obj, event):  # noqa: ANN001, N802, N805 - Qt API
                if event.type() == QEvent.Type.Paint:
                    self.counts[obj] = self.counts.get(obj, 0) + 1
                return False

        self.counts: dict = {}
        self.filter = Filter()
        self.widgets = list(widgets)
        for w in self.widgets:
            w.installEventFilter(self.filter)

    def take(self) -> list[int]:
        out = [self.counts.get(w, 0) for w in self.widgets]
        self.counts.clear()
        return out


def update_times(app, window, model, n: int, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """(GUI-thread CPU ms, wall ms, CPU ms in the trace_changed slots alone) to take one new trace into
    the window until every view has repainted it, display-thread results included.

    The window repaints as it does in use: the slots mark what changed and the event loop paints each
    dirty widget once (earlier versions of this script also grab()bed the grid and the attention view
    twice per step, which painted them two extra times into pixmaps the app never makes)."""
    from engine import Session
    from gui.core.worker import model_info

    window.state.set_model(model_info(model))
    s = Session(model, np.random.default_rng(n).integers(0, model.config.vocab_size - 1, n - rounds - 1).tolist())
    window.state.set_trace(s.trace)
    _drawn(app, window)
    counter = _PaintCounter((window.head_grid.graphics.viewport(), window.attention_view.graphics.viewport()))
    cpu, wall, slots = [], [], []
    if BREAKDOWN is not None:
        BREAKDOWN.on = True
    for _ in range(rounds):
        s.step()
        trace = s.trace  # the engine's work, not timed here
        t0, c0 = time.perf_counter(), time.thread_time()
        window.state.set_trace(trace)
        c1 = time.thread_time()
        _drawn(app, window)
        cpu.append(1e3 * (time.thread_time() - c0))
        wall.append(1e3 * (time.perf_counter() - t0))
        slots.append(1e3 * (c1 - c0))
        painted = counter.take()
        if not all(painted):  # a view that did not repaint would make the figure meaningless
            raise RuntimeError(f"a view did not repaint after the step (paint events {painted})")
    if BREAKDOWN is not None:
        BREAKDOWN.on = False
        BREAKDOWN.report(rounds)
    return cpu, wall, slots


def longest_stall(app, window, folder: Path, n_prompt: int, steps: int, vocab: int = 50000) -> float:
    """Run `steps` generation steps through the worker thread and record the longest gap between
    event-loop turns (a 1 ms timer) on the GUI thread, in ms."""
    from PySide6.QtCore import QElapsedTimer, QTimer

    done = {"loading": True}
    window.client.model_loaded.connect(lambda _info: done.update(loading=False))
    prompt = " ".join(f"t{i}" for i in np.random.default_rng(0).integers(2, vocab - 1, n_prompt))
    window.open_model(str(folder), device="cpu", prompt=prompt, steps=0)
    deadline = time.time() + 300
    while (done["loading"] or window.state.trace is None) and time.time() < deadline:
        app.processEvents()
        time.sleep(0.005)
    clock, gaps, last = QElapsedTimer(), [], [0]
    clock.start()

    def tick() -> None:
        now = clock.elapsed()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(1)
    start_len = len(window.state.trace)
    if BREAKDOWN is not None:
        BREAKDOWN.turns, BREAKDOWN.on = [], True
    window.client.run(steps)
    deadline = time.time() + 600
    while len(window.state.trace) < start_len + steps and time.time() < deadline:
        app.processEvents()
    timer.stop()
    if BREAKDOWN is not None:
        BREAKDOWN.on = False
        BREAKDOWN.report_turns()
        BREAKDOWN.totals.clear()
    return float(max(gaps[1:] or [0]))


def model_folder(name: str) -> Path:
    if name == "llama":
        from tools.bench_long import llama_folder

        return llama_folder("cpu")
    from tools.bench import gpt2_small_folder

    return gpt2_small_folder()


def gui_timings(lengths=(512, 1024), rounds: int = 12, steps: int = 100, model_name: str = "gpt2") -> dict:
    from engine import load_model

    folder = model_folder(model_name)
    model = load_model(folder, device="cpu")
    app, window = _window()
    out = {}
    for n in lengths:
        cpu, t, slots = update_times(app, window, model, n, rounds)
        out[f"update_cpu_ms_median@{n}"] = statistics.median(cpu)
        out[f"update_cpu_ms_max@{n}"] = max(cpu)
        out[f"update_ms_median@{n}"] = statistics.median(t)
        out[f"update_ms_max@{n}"] = max(t)
        out[f"update_slots_cpu_ms_median@{n}"] = statistics.median(slots)
        log.info("gui update @%d: GUI-thread CPU median %.1f ms (max %.1f; slots alone %.1f), wall median %.1f ms "
                 "(max %.1f)", n, statistics.median(cpu), max(cpu), statistics.median(slots), statistics.median(t), max(t))
    out[f"longest_stall_ms_{steps}_steps"] = longest_stall(app, window, folder, 256, steps, model.config.vocab_size)
    log.info("longest stall over %d steps: %.1f ms", steps, out[f"longest_stall_ms_{steps}_steps"])
    window.client.shutdown()
    window.close()
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,1024", help="context lengths for the update timings")
    parser.add_argument("--rounds", type=int, default=12, help="steps timed at each length")
    parser.add_argument("--steps", type=int, default=100, help="steps of the run whose longest stall is measured")
    parser.add_argument("--size", default="1400x900", help="window size (default %(default)s)")
    parser.add_argument("--theme", choices=["light", "dark"], default=None, help="force the palette")
    parser.add_argument("--model", choices=["gpt2", "llama"], default="gpt2", help="what to time (default %(default)s)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also log where the GUI thread's time per update goes (receiver and event type)")
    cli = parser.parse_args()
    if cli.breakdown:
        BREAKDOWN = _Breakdown()
    WINDOW_SIZE = tuple(int(v) for v in cli.size.lower().split("x"))
    if cli.theme:
        os.environ["ATTENTION_INSPECTOR_THEME"] = cli.theme
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for k, v in gui_timings(tuple(int(x) for x in cli.lengths.split(",")), cli.rounds, cli.steps, cli.model).items():
        sys.stdout.write(f"{k:32s} {v:8.1f}\n")
