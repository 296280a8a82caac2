"""Re-take the README's and docs' pictures of the analysis views, which need a selection the command line
cannot make (a layer, a head, a query, two analysis docks in front).

    DISPLAY=:N .venv/bin/python tools/doc_screenshots.py [--out resources/screenshot-analysis.png] [--size 1600x960]

(QT_QPA_PLATFORM=offscreen works too.) The plain window is `python main.py --steps 8 --screenshot F --size WxH`.
The picture: tiny-gpt on a verse said twice, layer 3 head 2 at the last " begat", looking at what followed
" begat" the first time (" Noah": an induction head at work on text), the
"Inside this head" dock below the view, and Head statistics in front on the right, sorted by the induction
score, which also colours the head grid.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Jared begat Lamech; and Lamech begat Noah. Jared begat Lamech; and Lamech begat"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="resources/screenshot-analysis.png")
    parser.add_argument("--size", default="1600x960")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--head", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from PySide6.QtCore import QSettings, Qt, QTimer

    from gui.shell.app import make_app, parse_size
    from gui.shell.main_window import MainWindow

    app = make_app()
    settings = QSettings(str(Path(tempfile.mkdtemp()) / "screenshot.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings)
    window.resize(*parse_size(args.size))
    window.apply_default_sizes()
    window.show()
    stage = {"n": 0, "code": 1}

    def grab() -> None:
        if window.client.busy or not window.analysis.head_stats.stats:  # the docks are still computing
            QTimer.singleShot(200, grab)
            return
        app.processEvents()
        ok = window.grab().save(args.out)
        logging.info("saved %s: %s", args.out, ok)
        stage["code"] = 0 if ok and not window.errors else 1
        window.close()
        app.quit()

    def arrange() -> None:
        stage["n"] += 1
        if stage["n"] > 1:
            return
        window.analysis.show_inside("inside")
        window.analysis.show_dock("stats")
        stats = window.analysis.head_stats
        stats.table.horizontalHeader().setSortIndicator(5, Qt.SortOrder.DescendingOrder)  # induction, highest first
        stats.color_box.setCurrentIndex(stats.color_box.findData("induction"))
        window.state.select(layer=args.layer, head=args.head, query=len(window.state.trace) - 1)
        QTimer.singleShot(1500, grab)

    window.settled.connect(lambda: QTimer.singleShot(300, arrange))
    window.open_model("tiny-gpt", prompt=PROMPT)
    QTimer.singleShot(90_000, app.quit)
    app.exec()
    return stage["code"]


if __name__ == "__main__":
    sys.exit(main())
