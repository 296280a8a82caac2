"""The app side of the modern decoders (issue 11): a tiny Llama opens, steps and shows its query heads; chat
mode renders the checkpoint's template and stops at the end of turn; a load shows its progress and can be
cancelled; File → Open from cache lists a fake Hugging Face cache; the prompt box sizes to its text (issue 19)."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest
from PySide6.QtCore import Qt

from tests.gui.conftest import OPEN_TIMEOUT_MS, open_model, wait_idle

STEP_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def modern(tmp_path_factory):
    from tests.chat_factories import chat_decoder
    from tests.modern_factories import llama

    root = tmp_path_factory.mktemp("modern")
    return {"llama": llama(root / "llama"), "chat-llama": chat_decoder(root / "chat-llama", "llama3", max_position_embeddings=512)}


def step(qtbot, win, n: int = 1) -> None:
    start = len(win.state.trace)
    for _ in range(n):
        qtbot.mouseClick(win.token_strip.step_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(win.state.trace) == start + n, timeout=STEP_TIMEOUT_MS)
    wait_idle(qtbot, win)


def test_a_modern_checkpoint_opens_steps_and_shows_its_query_heads(qtbot, window, modern):
    win = window
    open_model(qtbot, win, modern["llama"])
    info, panel = win.state.model, win.prompt_panel
    assert info.family == "decoder" and not info.has_chat_template
    assert not panel.chat_mode and not panel.chat_check.isVisibleTo(win)  # no template: a plain prompt
    assert panel.prompt_label.text() == "Prompt"
    # the status bar says the device, the dtype and why
    assert info.dtype_reason.startswith("float32 on the CPU")
    assert win.status_labels["device"].text() == info.dtype_reason
    n = len(win.state.trace)
    step(qtbot, win, 3)
    trace = win.state.trace
    assert len(trace) == n + 3 and win.errors == []
    # grouped-query attention: a pattern per query head (4), read from 2 key/value heads
    assert trace.n_heads == 4 and trace.n_kv_heads == 2 and trace.kv_group == 2 and trace.kv_head(3) == 1
    assert win.head_grid.cell_count == 3 * 4
    assert trace.attention("self", 2).shape == (4, n + 3, n + 3)
    assert win.attention_view.image.image.shape == (n + 3, n + 3)


def test_chat_mode_renders_the_template_stops_at_end_of_turn_and_takes_a_next_turn(qtbot, window, modern):
    win, panel = window, window.prompt_panel
    open_model(qtbot, win, modern["chat-llama"])
    info = win.state.model
    assert info.has_chat_template and panel.chat_mode
    assert panel.system_edit.isVisibleTo(win) and panel.prompt_label.text() == "User"
    # the session's prompt is the template's rendering of system + user, special tokens and all
    qtbot.waitUntil(lambda: "<|start_header_id|>" in panel.preview_edit.toPlainText(), timeout=STEP_TIMEOUT_MS)
    preview = panel.preview_edit.toPlainText()
    assert preview.startswith("<|begin_of_text|>") and panel.system_edit.toPlainText() in preview
    assert panel.prompt_edit.toPlainText() in preview
    assert preview.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    trace = win.state.trace
    assert trace.tokens[0] == "<|begin_of_text|>" and "<|eot_id|>" in trace.tokens
    row = win.token_strip.main_row
    assert row.role(0) == "special" and row.text(0) == "<|begin_of_text|>"
    assert "Step or Run" in panel.chat_status.text()

    # two tokens of reply, then the end of turn (forced: a random model rarely picks it)
    step(qtbot, win, 2)
    assert "Reply: 2 tokens" in panel.chat_status.text()
    eot = info.vocab.index("<|eot_id|>")
    assert eot in info.stop_ids
    n = len(win.state.trace)
    win.client.step(eot)
    qtbot.waitUntil(lambda: len(win.state.trace) == n + 1, timeout=STEP_TIMEOUT_MS)
    wait_idle(qtbot, win)
    assert "end of turn" in panel.chat_status.text() and "<|eot_id|>" in panel.chat_status.text()
    # the session is finished: Run takes no step and says nothing is wrong; Step says why not
    win.client.run(5)
    wait_idle(qtbot, win)
    assert len(win.state.trace) == n + 1 and win.errors == []
    qtbot.mouseClick(win.token_strip.step_button, Qt.MouseButton.LeftButton)  # the normal end, not an error (issue 30)
    wait_idle(qtbot, win)
    assert win.errors == [] and len(win.state.trace) == n + 1
    assert "finished: the model chose “<|eot_id|>”" in win.token_strip.summary.text()

    # the next turn: the reply becomes the assistant's message, and a new user message is rendered after it
    first_user = panel.prompt_edit.toPlainText()
    n_prompt = win.state.trace.n_prompt
    qtbot.mouseClick(panel.next_turn_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(panel.turns) == 2, timeout=STEP_TIMEOUT_MS)
    assert panel.turns[0] == ("user", first_user) and panel.turns[1][0] == "assistant"
    assert panel.prompt_edit.toPlainText() == "" and panel.history_edit.isVisibleTo(win)
    panel.prompt_edit.setPlainText("And then?")
    qtbot.waitUntil(lambda: "And then?" in panel.preview_edit.toPlainText() and not win.client.busy, timeout=STEP_TIMEOUT_MS)
    preview = panel.preview_edit.toPlainText()
    assert preview.count("<|start_header_id|>user<|end_header_id|>") == 2
    assert "<|start_header_id|>assistant<|end_header_id|>" in preview.split("And then?")[0]  # the reply's turn
    assert win.state.trace.n_prompt > n_prompt and len(win.state.trace) == win.state.trace.n_prompt

    # chat off: the same box is a plain prompt (no template, no special tokens but the tokenizer's own)
    panel.chat_check.setChecked(False)
    qtbot.waitUntil(lambda: "<|start_header_id|>" not in win.state.trace.tokens and not win.client.busy,
                    timeout=STEP_TIMEOUT_MS)
    assert not panel.system_edit.isVisibleTo(win) and panel.prompt_label.text() == "Prompt"


def test_a_load_shows_its_progress_and_a_cancelled_load_keeps_the_open_model(qtbot, window, modern):
    win = window
    reports = []
    win.client.load_progress.connect(reports.append)
    open_model(qtbot, win, modern["llama"])
    fractions = [r.fraction for r in reports]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert reports[0].name == "llama" and reports[0].size_bytes > 0
    assert not win.loading.widget.isVisible()
    before = win.state.model

    # hold the worker, so the load below is still queued when Cancel is pressed
    gate = threading.Event()
    win.client.call("hold", lambda _w: gate.wait(30))
    win.open_model(str(modern["chat-llama"]))
    assert win.loading.widget.isVisible() and win.loading.widget.cancel_button.isEnabled()
    assert win.loading.widget.label.text() == "Loading chat-llama …"  # the folder's name, not its whole path
    qtbot.wait(400)
    assert not win.busy_bar.isVisible()  # the load's own strip, not the indeterminate bar as well
    qtbot.mouseClick(win.loading.widget.cancel_button, Qt.MouseButton.LeftButton)
    assert win.client.load_cancelled
    gate.set()
    wait_idle(qtbot, win)
    assert win.state.model is before and win.errors == [] and not win.banner.isVisible()
    assert "cancelled" in win.loading.cancelled_message and "llama is still open" in win.loading.cancelled_message
    assert not win.loading.widget.isVisible()
    # the previous model still steps
    step(qtbot, win, 1)
    assert win.state.model is before

    # a load after a cancelled one is not cancelled
    open_model(qtbot, win, modern["chat-llama"])
    assert win.state.model.has_chat_template


# -- File → Open from cache, on a fake Hugging Face cache ------------------------------------------------------

def _put(cache, repo_id, files: dict[str, bytes], revision="a" * 40):
    """One snapshot as huggingface_hub writes it: blobs, a symlinked snapshot, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snap


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, modern):
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    for var in ("HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # this machine's own cache stays out
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    files = {p.name: p.read_bytes() for p in modern["chat-llama"].iterdir() if p.is_file()}
    _put(hub, "org/tiny-chat-llama", files)
    quantised = dict(files)
    cfg = json.loads(files["config.json"])
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    quantised["config.json"] = json.dumps(cfg).encode()
    _put(hub, "org/tiny-gptq", quantised)
    return hub


def test_open_from_cache_lists_the_cache_and_opens_a_model(qtbot, window, hf_cache):
    from gui.shell.cache_dialog import show_cache_dialog

    win = window
    # while the scan runs the dialog says so
    gate = threading.Event()
    slow = show_cache_dialog(win, scan=lambda: gate.wait(30) and [])
    assert slow.scanning and "Scanning" in slow.status.text() and not slow.open_button.isEnabled()
    gate.set()
    qtbot.waitUntil(lambda: not slow.scanning, timeout=10_000)
    assert "No models" in slow.status.text()
    slow.close()

    assert "file.open_cache" in win.registry.actions and "file.open_cache" not in win.registry.unbound()
    win.registry.action("file.open_cache").trigger()
    dialog = win.cache_dialog
    qtbot.waitUntil(lambda: len(dialog.infos) == 2, timeout=10_000)
    rows = {dialog.tree.topLevelItem(i).text(0): dialog.tree.topLevelItem(i) for i in range(dialog.tree.topLevelItemCount())}
    ok, gptq = rows["org/tiny-chat-llama"], rows["org/tiny-gptq"]
    assert ok.text(2) == "llama" and ok.text(3) == "yes" and ok.text(1).endswith("kB")
    assert "quantised checkpoints are not supported" in gptq.text(3)
    assert not gptq.flags() & Qt.ItemFlag.ItemIsSelectable  # greyed: it cannot be chosen
    assert "1 of them can be opened" in dialog.status.text() or "2 models in the cache, 1" in dialog.status.text()
    assert dialog.selected_repo() == "org/tiny-chat-llama" and dialog.open_button.isEnabled()
    qtbot.mouseClick(dialog.open_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.state.model is not None and not win.client.busy and not win._chain, timeout=OPEN_TIMEOUT_MS)
    assert win.errors == [] and win.state.model.has_chat_template
    assert "tiny-chat-llama" in win.state.model.name or "tiny-chat-llama" in str(win.state.model.folder)


# -- issue 19: the prompt box sizes to its text; the sampling controls stay in view at 1280×800 ---------------

def _bottom_in_window(win, widget) -> int:
    return widget.mapTo(win, widget.rect().bottomLeft()).y()


def test_the_prompt_box_sizes_to_its_text_and_sampling_stays_in_view(qtbot, window, modern):
    win, panel = window, window.prompt_panel
    win.resize(1280, 800)
    open_model(qtbot, win, modern["llama"])
    edit = panel.prompt_edit
    edit.setPlainText("one line")
    one = edit.height()
    assert one < 60  # one line, not half the column
    edit.setPlainText("\n".join(f"line {i}" for i in range(4)))
    four = edit.height()
    assert four > one
    edit.setPlainText("\n".join(f"line {i}" for i in range(40)))
    capped = edit.height()
    assert capped > four and capped == edit.height_for_lines(edit.max_lines)  # grows to a cap, then scrolls
    edit.setPlainText("And God said")  # (forty lines are more than this model's context)
    assert edit.height() == one
    qtbot.waitUntil(lambda: not win.client.busy and not panel._debounce.isActive(), timeout=STEP_TIMEOUT_MS)
    wait_idle(qtbot, win)
    limit = win.statusBar().mapTo(win, win.statusBar().rect().topLeft()).y()
    assert panel.seed_spin.isVisibleTo(win) and _bottom_in_window(win, panel.seed_spin) <= limit

    # chat mode has more boxes; the sampling controls still fit
    edit.clear()
    open_model(qtbot, win, modern["chat-llama"])
    assert panel.chat_mode and panel.preview_edit.isVisibleTo(win)
    qtbot.waitUntil(lambda: bool(panel.preview_edit.toPlainText()), timeout=STEP_TIMEOUT_MS)
    assert panel.system_edit.height() < 60 and panel.prompt_edit.height() < 60
    limit = win.statusBar().mapTo(win, win.statusBar().rect().topLeft()).y()
    assert _bottom_in_window(win, panel.seed_spin) <= limit
    assert win.height() <= 800
