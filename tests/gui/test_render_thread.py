"""The display thread (gui/core/render_thread.py): a request starts only once the GUI thread is back in its
event loop (issue 20: started at once, its numpy calls made the rest of the step's slots wait for the GIL),
the newest request per key wins, and results come back on the GUI thread."""

from __future__ import annotations

import threading
import time

from gui.core.render_thread import RenderThread


def test_a_request_waits_for_the_gui_threads_turn_to_end(qtbot):
    thread = RenderThread("test")
    ran = threading.Event()
    answers: list[tuple[str, int, object]] = []
    thread.ready.connect(lambda key, generation, result: answers.append((key, generation, result)))
    generation = thread.submit("tile", lambda: ran.set() or "done")
    time.sleep(0.1)  # the GUI thread is still in its turn: nothing may start
    assert not ran.is_set() and not thread.idle
    qtbot.waitUntil(lambda: bool(answers), timeout=5000)  # back in the event loop: released, computed, answered
    assert ran.is_set()
    assert answers == [("tile", generation, "done")]
    assert threading.current_thread() is threading.main_thread()
    qtbot.waitUntil(lambda: thread.idle, timeout=5000)
    thread.stop()


def test_the_newest_request_of_a_key_wins(qtbot):
    thread = RenderThread("test")
    calls: list[int] = []
    answers: list[object] = []
    thread.ready.connect(lambda _key, _generation, result: answers.append(result))
    for i in range(3):
        thread.submit("grid", lambda i=i: calls.append(i) or i)
    thread.submit("tile", lambda: "tile")
    qtbot.waitUntil(lambda: len(answers) == 2, timeout=5000)
    assert calls == [2]  # the two older grid requests never ran
    assert sorted(map(str, answers)) == ["2", "tile"]
    thread.stop()
