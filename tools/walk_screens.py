"""A new user's walk through the app on a real X display (Xvfb), one screen size at a time, with screenshots.

    Xvfb :31 -screen 0 1366x768x24 &
    DISPLAY=:31 python tools/walk_screens.py --size 1366x768 --out tools/out

Opens the bundled models as a person would (keys and the mouse through xdotool where it matters: I for
Inside this head, a hover over the heatmap), and saves one PNG per stop: the default layout, a refused
over-long prompt, top-k 5, Inside this head, an ablation one step later, the head view, a finished seq2seq
output and tiny-bert's fill-mask. Prints what each stop found (window size, attention view size, notices).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from gui.shell.app import make_app  # noqa: E402
from gui.shell.main_window import MainWindow  # noqa: E402


def pump(ms: int) -> None:
    QTest.qWait(ms)


def idle(win: MainWindow, timeout_s: float = 120.0) -> None:
    end = time.monotonic() + timeout_s
    while (win.client.busy or win._chain) and time.monotonic() < end:
        pump(50)
    pump(300)


def xdo(*args: str) -> None:
    """An xdotool command, with the event loop running while it acts."""
    proc = subprocess.Popen(["xdotool", *args])
    while proc.poll() is None:
        pump(20)


def report(win: MainWindow, name: str, out: Path, size: str) -> None:
    path = out / f"{size}-{name}.png"
    win.grab().save(str(path))
    view = win.attention_view.size()
    print(f"{name:>14}: window {win.width()}x{win.height()}, attention view {view.width()}x{view.height()}, "
          f"stale={bool(win.state.stale)}, status={win.statusBar().currentMessage()!r} -> {path}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="1366x768")
    p.add_argument("--out", default="tools/out")
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    app = make_app()
    settings = QSettings(str(Path(tempfile.mkdtemp()) / "walk.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    win.resize(w, h)
    win.apply_default_sizes()
    win.show()
    win.activateWindow()
    pump(300)
    wid = str(int(win.winId()))

    win.open_model("tiny-gpt", steps=8)
    idle(win)
    report(win, "1-default", out, args.size)

    # hover the heatmap once (one move from outside): the readout under the view shows the cell at once
    g = win.attention_view.graphics
    c = g.mapToGlobal(g.rect().center())
    xdo("mousemove", str(c.x()), str(c.y()))
    pump(400)
    print("    first hover readout:", win.attention_view.readout.text())

    # a pasted prompt far longer than the model reads
    win.prompt_panel.prompt_edit.setPlainText(" ".join(["And the earth was without form, and void;"] * 400))
    idle(win)
    pump(600)
    win.token_strip.step()
    idle(win)
    report(win, "2-refused", out, args.size)
    win.prompt_panel.keep_last_tokens() if win.prompt_panel.keep_button.isVisible() else None
    idle(win)
    print("    kept:", win.state.trace.n_prompt, "prompt tokens; stale:", bool(win.state.stale))
    win.prompt_panel.restore_session_texts()
    win.prompt_panel.set_texts("In the beginning God created the heaven and the earth. And God said,", None)
    win.prompt_panel.request_session()
    idle(win)
    win.client.run(6)
    idle(win)

    win.prompt_panel.top_k_spin.setValue(5)
    pump(200)
    report(win, "3-top-k", out, args.size)
    win.prompt_panel.reset_sampling()

    xdo("windowactivate", "--sync", wid)
    xdo("key", "--window", wid, "i")  # Inside this head
    pump(800)
    idle(win)
    pump(800)
    report(win, "4-inside", out, args.size)
    xdo("key", "--window", wid, "i")  # again: closes it
    pump(300)
    print("    inside open after a second I:", win.docks["inside"].isVisible())

    win.state.select(layer=2, head=3)
    win.analysis.ablation.ablate(2, 3)
    idle(win)
    win.token_strip.step()
    idle(win)
    report(win, "5-ablation", out, args.size)
    win.analysis.show_inside("attribution")
    pump(800)
    idle(win)
    pump(800)
    report(win, "6-attribution", out, args.size)
    win.docks["inside"].hide()
    win.analysis.ablation.clear()
    idle(win)

    win.analysis.show_dock("head_view")
    pump(500)
    report(win, "7-head-view", out, args.size)
    win.docks["heads"].raise_()

    win.open_model("tiny-seq2seq", steps=40)
    idle(win)
    win.token_strip.step()
    pump(200)
    report(win, "8-seq2seq-end", out, args.size)
    win.analysis.show_dock("head_view")
    pump(500)
    report(win, "9-seq2seq-head-view", out, args.size)
    win.docks["heads"].raise_()

    win.open_model("tiny-bert")
    idle(win)
    report(win, "10-tiny-bert", out, args.size)
    win.token_strip.run_spin.setValue(3)
    win.token_strip.run_or_stop()
    idle(win)
    win.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
