"""Issue 30 (what a new user tripped on) and issue 28's laptop screens: a refused prompt never leaves the old
session stepping behind new text; top-k shows the candidates that survive; docks never change the window's
size and the window fits 1280 x 800; the ablation's movers line follows the next step and ablated heads are
marked; and the small things (model box, a normal end, fill-mask footer, Esc, a reopened chat)."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QSize, Qt

from tests.gui.conftest import OPEN_TIMEOUT_MS, open_model, wait_idle

LONG = " ".join(["and the earth was without form"] * 40)  # far more than the test GPT-2's 64 positions


def _type_prompt(qtbot, win, text: str) -> None:
    """As a person pastes: the box changes and the session request follows its debounce."""
    win.prompt_panel.prompt_edit.setPlainText(text)
    qtbot.waitUntil(lambda: not win.prompt_panel._debounce.isActive(), timeout=5_000)
    wait_idle(qtbot, win)


def _step(qtbot, win) -> None:
    qtbot.mouseClick(win.token_strip.step_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, win)


# -- 1. a refused prompt -----------------------------------------------------------------------------------
def test_a_refused_prompt_does_not_step_the_old_session(qtbot, window, checkpoints):
    win, panel = window, window.prompt_panel
    open_model(qtbot, win, checkpoints["decoder"])
    old_prompt, old = panel.texts()[0], win.state.trace
    _type_prompt(qtbot, win, LONG)
    assert "reads at most 64" in win.errors[-1]
    assert win.state.trace is old  # the panels still show the session that was taken ...
    _step(qtbot, win)
    # Step did not quietly continue the previous prompt (today's code stepped it: one token more)
    assert len(win.state.trace) == len(old) and win.state.trace.token_ids == old.token_ids
    assert win.state.stale and panel.stale_box.isVisible()  # ... and they say that it is not the box's text
    assert "Step is off" in win.errors[-1] and "Step is off" in win.token_strip.summary.text()

    # "Back to the session's prompt": the box shows what the session holds, and Step works again
    qtbot.mouseClick(panel.restore_button, Qt.MouseButton.LeftButton)
    assert panel.texts()[0] == old_prompt and not win.state.stale and not panel.stale_box.isVisible()
    _step(qtbot, win)
    assert len(win.state.trace) == len(old) + 1


def test_an_over_long_prompt_offers_its_last_tokens(qtbot, window, checkpoints):
    win, panel = window, window.prompt_panel
    open_model(qtbot, win, checkpoints["decoder"])
    _type_prompt(qtbot, win, LONG + " THE END")
    qtbot.waitUntil(lambda: panel.keep_button.isVisible(), timeout=10_000)
    keep = int(panel.keep_button.text().split()[3])
    assert panel.keep_button.text() == f"Keep the last {keep} tokens" and keep < 64  # room left to step
    qtbot.mouseClick(panel.keep_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, win)
    assert not win.state.stale and panel.texts()[0].endswith("THE END")
    assert win.state.trace.n_prompt == keep
    _step(qtbot, win)
    assert len(win.state.trace) == keep + 1


def test_step_right_after_typing_steps_the_new_prompt(qtbot, window, checkpoints):
    win, panel = window, window.prompt_panel
    open_model(qtbot, win, checkpoints["decoder"])
    panel.prompt_edit.setPlainText("And God said")
    assert panel._debounce.isActive()
    _step(qtbot, win)  # before the debounce fired: the new session starts first, then the step
    stepped = win.state.trace
    assert len(stepped) == stepped.n_prompt + 1
    panel.request_session()  # the same box text, as a session of its own: the prompt the step continued
    wait_idle(qtbot, win)
    fresh = win.state.trace
    assert stepped.token_ids[: stepped.n_prompt] == fresh.token_ids and fresh.n_prompt < 10


# -- 2. top-k and sampling across models -------------------------------------------------------------------
def test_top_k_shows_the_survivors_only_and_kept_settings_are_said(qtbot, window, checkpoints):
    win, panel = window, window.prompt_panel
    open_model(qtbot, win, checkpoints["decoder"])
    assert win.logits_panel.candidate_ids.size == 10
    panel.top_k_spin.setValue(5)
    bars = win.logits_panel.bar_values
    assert bars.size == 5 and np.all(bars > 0)  # no padding with cut tokens at 0.000 (today: 10 rows)
    assert "5 survive top-k" in win.logits_panel.message.text()
    open_model(qtbot, win, checkpoints["encoder"])
    assert "Kept from before: top-k 5" in panel.sampling_note.text()  # the next model keeps them, and says so
    assert win.logits_panel.bar_values.size == 5
    qtbot.mouseClick(panel.sampling_reset, Qt.MouseButton.LeftButton)
    assert win.state.sampling.top_k is None and win.logits_panel.candidate_ids.size == 10


# -- 3. docks and the window's size -----------------------------------------------------------------------
def test_the_window_fits_a_laptop_screen_with_the_default_docks(qtbot, window):
    hint = window.minimumSizeHint()
    assert hint.width() <= 1280 and hint.height() <= 760, hint
    for size in (QSize(1280, 800), QSize(1366, 768)):
        window.resize(size)
        window.apply_default_sizes()
        qtbot.wait(20)
        assert window.size() == size
        view = window.attention_view.size()
        assert view.width() >= 500 and view.height() >= 400, (size, view)
        for key in ("prompt", "tokens", "heads", "logits"):
            assert window.docks[key].isVisible() and not window.docks[key].visibleRegion().isEmpty(), key


@pytest.mark.parametrize("size", [(1366, 768), (1920, 1080)])
def test_opening_inside_this_head_keeps_the_window_size(qtbot, window, checkpoints, size):
    win = window
    win.resize(*size)
    open_model(qtbot, win, checkpoints["decoder"], steps=2)
    before = win.size()
    win.registry.action("analysis.inside_head").trigger()  # the I key
    qtbot.waitUntil(lambda: win.docks["inside"].isVisible(), timeout=5_000)
    wait_idle(qtbot, win)
    qtbot.wait(50)
    assert win.size() == before  # today: 1366 -> 1633 px wide
    assert win.attention_view.height() >= 300
    win.registry.action("analysis.inside_head").trigger()  # I again closes it
    assert not win.docks["inside"].isVisible()
    assert win.size() == before


def test_every_tabbed_dock_opens_without_resizing_the_window(qtbot, window, checkpoints):
    win = window
    win.resize(1366, 768)
    open_model(qtbot, win, checkpoints["decoder"], steps=2)
    before = win.size()
    for key in ("head_view", "stats", "lens", "heads", "logits"):
        win.analysis.show_dock(key)
        qtbot.wait(30)
        assert win.size() == before, key
    wait_idle(qtbot, win)


def test_the_head_view_keeps_the_selected_query_in_sight(qtbot, window, checkpoints):
    win = window
    win.resize(1366, 768)
    open_model(qtbot, win, checkpoints["long-decoder"], steps=30)
    win.analysis.show_dock("head_view")
    qtbot.wait(50)
    canvas = win.head_view.canvas
    q = win.state.query
    row = canvas.queries.row_rect(q).translated(canvas.queries.pos())
    assert canvas.mapToScene(canvas.viewport().rect()).boundingRect().contains(row)


# -- 4. ablation feedback ---------------------------------------------------------------------------------
def test_the_movers_line_follows_the_next_step_and_ablated_heads_are_marked(qtbot, window, checkpoints):
    win = window
    win.resize(1366, 768)
    open_model(qtbot, win, checkpoints["decoder"], steps=2)
    before = win.state.trace
    win.state.select(layer=0, head=1)
    win.analysis.ablation.ablate(0, 1)
    qtbot.waitUntil(lambda: win.state.trace is not before and not win.client.busy, timeout=30_000)
    diff = win.analysis.ablation.diff
    assert "total variation" in diff.heading.text()

    _step(qtbot, win)  # a position the trace before the ablation never had
    wait_idle(qtbot, win)
    pos = len(win.state.trace) - 1
    # today: "Ablated: no un-ablated distribution at position N to compare with", its line cut mid-word
    assert diff.heading.text().startswith(f"Ablation effect at position {pos}, T=1: total variation")
    assert diff.summary.text().startswith(f"Ablation at {pos}: TV"), diff.summary.text()
    assert diff.summary.wordWrap() and len(diff.rows) == 4
    assert "ABLATED" in win.attention_view.plot.titleLabel.text  # the big view says its head is off

    win.analysis.show_inside("attribution")
    tab = win.analysis.inside_head.attribution_tab
    qtbot.waitUntil(lambda: tab.attribution is not None and tab.trace is win.state.trace, timeout=30_000)
    wait_idle(qtbot, win)
    cell = tab.table.item(0, 1)
    assert cell.text().endswith("✕") and "Ablated" in cell.toolTip()
    assert not tab.table.item(0, 0).text().endswith("✕")


# -- 5. the small things ----------------------------------------------------------------------------------
def test_the_model_box_lists_each_model_once_and_a_choice_opens_it(qtbot, window, checkpoints):
    from engine.checkpoints.resolve import RESOURCES
    from gui.panels.prompt import unique_choices

    assert unique_choices(["tiny-gpt", "tiny-bert", str(RESOURCES / "tiny-gpt"), "tiny-gpt", "/x/m"]) == \
        ["tiny-gpt", "tiny-bert", "/x/m"]
    box = window.prompt_panel.model_box
    window.prompt_panel.set_model_choices([str(checkpoints["decoder"]), str(checkpoints["decoder"])])
    assert box.count() == 1
    asked = []
    window.prompt_panel.open_requested.connect(lambda source, _device: asked.append(source))
    with qtbot.waitSignal(window.prompt_panel.open_requested, timeout=5_000):
        box.activated.emit(0)  # picking an entry from the list opens it (no Open needed)
    wait_idle(qtbot, window)
    assert window.state.model is not None and asked == [str(checkpoints["decoder"])]
    # Return in the box and the Open button: one request each (Return used to send two)
    box.lineEdit().setFocus()
    with qtbot.waitSignal(window.prompt_panel.open_requested, timeout=5_000):
        qtbot.keyClick(box.lineEdit(), Qt.Key.Key_Return)
    wait_idle(qtbot, window)
    with qtbot.waitSignal(window.prompt_panel.open_requested, timeout=5_000):
        qtbot.mouseClick(window.prompt_panel.open_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    assert asked == [str(checkpoints["decoder"])] * 3


def test_the_end_token_is_a_normal_end_not_an_error(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["encoder-decoder"])
    eos = win.state.model.stop_ids[0]
    win.client.branch(len(win.state.trace), eos)  # the model "chooses" its end token
    wait_idle(qtbot, win)
    n_errors, n = len(win.errors), len(win.state.trace)
    _step(qtbot, win)
    assert len(win.errors) == n_errors and len(win.state.trace) == n  # no pink error, nothing sent
    assert "finished" in win.token_strip.summary.text() and "normal end" in win.token_strip.summary.text()


def test_fill_mask_footer_names_no_chosen_mask(qtbot, window, checkpoints):
    open_model(qtbot, window, checkpoints["encoder"])
    assert "chosen" not in window.logits_panel.message.text()


def test_esc_during_a_run_says_how_many_steps_it_took(qtbot, window, checkpoints):
    win = window
    open_model(qtbot, win, checkpoints["long-decoder"])
    start = len(win.state.trace.steps)
    win.token_strip.run_spin.setValue(900)
    win.token_strip.run_or_stop()
    qtbot.waitUntil(lambda: win.state.trace is not None and len(win.state.trace.steps) > start + 2, timeout=60_000)
    win.registry.action("generate.stop").trigger()  # Esc
    wait_idle(qtbot, win)
    taken = len(win.state.trace.steps) - start
    assert win.statusBar().currentMessage() == f"Stopped after {taken} steps of 900"


def test_a_reopened_chat_session_refills_its_boxes(qtbot, window, tmp_path):
    from tests.chat_factories import chat_decoder

    win, panel = window, window.prompt_panel
    folder = chat_decoder(tmp_path / "chat", "llama3", max_position_embeddings=256)
    open_model(qtbot, win, folder)
    panel.system_edit.setPlainText("Be brief.")
    panel.prompt_edit.setPlainText("Name a colour.")
    panel.request_session()
    wait_idle(qtbot, win)
    path = tmp_path / "chat.json"
    win.analysis.session_io.save_session(str(path))
    wait_idle(qtbot, win)
    panel.system_edit.setPlainText("")
    panel.prompt_edit.setPlainText("something else")
    wait_idle(qtbot, win)
    win.analysis.session_io.open_session(str(path))
    qtbot.waitUntil(lambda: not win.client.busy, timeout=OPEN_TIMEOUT_MS)
    assert panel.chat_mode
    assert panel.system_edit.toPlainText() == "Be brief." and panel.prompt_edit.toPlainText() == "Name a colour."
    assert not panel._debounce.isActive() and not win.state.stale


def test_a_bundled_model_is_shown_by_its_name():
    from engine.checkpoints.resolve import RESOURCES
    from gui.panels.prompt import model_text

    class Info:
        name, folder = "tiny-llama", str(RESOURCES / "tiny-llama")

    assert model_text(Info()) == "tiny-llama"
    Info.folder = "/data/my-llama"
    assert model_text(Info()) == "/data/my-llama"


def test_the_status_bar_copy_of_a_long_error_is_cut_at_a_word_with_the_whole_text_as_tooltip(qtbot, window):
    from gui.shell.main_window import STATUS_CHARS, status_copy

    message = "the prompt has 5606 tokens but this model reads at most 256; shorten it " * 3
    short = status_copy(message)
    assert short.endswith("… (the whole message is above the view)")
    assert message.startswith(short.split(" …")[0] + " ") and len(short.split(" …")[0]) <= STATUS_CHARS
    window.show_error(message)
    assert window.statusBar().currentMessage() == short and window.statusBar().toolTip() == message


def test_the_first_hover_shows_the_readout_and_a_click_marks_the_key_column(qtbot, window, checkpoints):
    from PySide6.QtCore import QPointF

    win = window
    open_model(qtbot, win, checkpoints["decoder"])
    view = win.attention_view
    scene_pos = view.plot.getViewBox().mapViewToScene(QPointF(1, 3))  # key 1, query 3
    view.graphics.scene().sigMouseMoved.emit(scene_pos)  # one move, the first one
    assert view.readout.text() == view.describe(3, 1) and "→" in view.readout.text()

    class Click:
        def button(self):
            return Qt.MouseButton.LeftButton

        def scenePos(self):  # noqa: N802 - pyqtgraph's event API
            return scene_pos

    view._on_clicked(Click())
    assert win.state.query == 3 and view.selected_key == 1 and view.key_box.isVisible()
    assert view.key_box.rect().center().x() == 1


@pytest.mark.parametrize("layout", ["default", "tabbed with the heads"])
def test_the_candidates_heading_never_overlaps_the_bars(qtbot, window, checkpoints, layout):
    win = window
    win.resize(1280, 800)
    if layout != "default":
        win.tabifyDockWidget(win.docks["heads"], win.docks["logits"])
        win.docks["stats"].raise_()
    open_model(qtbot, win, checkpoints["decoder"], steps=3)
    win.state.select(query=2)  # a longer heading ("Token 3 after … double-click to branch") while hidden
    win.analysis.show_dock("logits")
    qtbot.wait(100)
    panel = win.logits_panel
    heading = panel.heading
    assert heading.label.geometry().height() <= heading.height()
    assert heading.geometry().bottom() < panel.splitter.geometry().top()


def test_file_dialogs_start_in_the_last_folder_used(qtbot, window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    from gui.widgets import file_dialogs

    asked = []

    def fake_save(parent, title, start, filters):
        asked.append(start)
        return str(tmp_path / "sub" / "shot.png"), filters

    (tmp_path / "sub").mkdir()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", fake_save)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda parent, title, start, filters: (asked.append(start), ("", ""))[1])
    window._save_screenshot_dialog()
    window.analysis.session_io.open_session_dialog()  # another dialog: it starts where the last one saved
    assert asked[1] == str(tmp_path / "sub")
    assert window.settings.value("last_file_folder") == str(tmp_path / "sub")  # and the next run starts there too
    assert file_dialogs.memory.start("x.json") == str(tmp_path / "sub" / "x.json")
