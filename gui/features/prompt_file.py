"""File → Open prompt from file…: a long prompt (a document of thousands of tokens) read from a text file;
its token count, by the open model's tokenizer, is shown before anything runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QMainWindow, QMessageBox

from ..widgets import file_dialogs

log = logging.getLogger(__name__)

MAX_BYTES = 16 * 1024 * 1024  # a prompt file larger than this is refused before reading


def read_prompt_file(path: str | Path) -> str:
    """The file's text (UTF-8, undecodable bytes replaced); OSError / ValueError for what cannot be a prompt."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{path.name} is {size / 2**20:.0f} MB; a prompt file may have at most {MAX_BYTES // 2**20} MB")
    return path.read_text(encoding="utf-8", errors="replace")


def _count(text: str) -> Callable:
    def fn(w) -> dict:  # noqa: ANN001 - EngineWorker, in the engine thread
        if w.model is None:
            from engine import EngineError

            raise EngineError("open a model first: the token count depends on its tokenizer")
        return {"tokens": len(w.model.tokenizer.encode(text)), "max": int(w.model.max_positions)}

    return fn


class PromptFile:
    """`window`: the main window's public face (client, prompt_panel, registry, show_error, statusBar).
    `ask(text) -> bool` confirms the run (a dialog; tests pass their own)."""

    def __init__(self, window: QMainWindow, ask: Callable[[str], bool] | None = None) -> None:
        self.window = window
        self.ask = ask or self._ask
        self._pending: dict[int, tuple[str, str]] = {}  # request id -> (path, text)
        self.last_count: tuple[int, int] | None = None  # (tokens, model maximum) of the last file
        window.client.result_ready.connect(self._on_result)
        window.registry.bind("file.open_prompt", self.open_dialog)
        window.client.error.connect(lambda op, _m: op == "count_prompt" and self._pending.clear())

    def open_dialog(self) -> None:
        path, _ = file_dialogs.open_path(self.window, "Open a prompt from a text file",
                                         "Text (*.txt *.md);;All files (*)")
        if path:
            self.open_path(path)

    def open_path(self, path: str) -> None:
        try:
            text = read_prompt_file(path)
        except (OSError, ValueError) as exc:
            self.window.show_error(f"could not read the prompt file {path}: {exc}")
            return
        rid = self.window.client.call("count_prompt", _count(text))
        self._pending[rid] = (path, text)

    def _on_result(self, rid: int, op: str, payload: object) -> None:
        if op != "count_prompt" or rid not in self._pending:
            return
        path, text = self._pending.pop(rid)
        n, limit = payload["tokens"], payload["max"]
        self.last_count = (n, limit)
        name = Path(path).name
        too_long = f" — more than the {limit:,} this model reads; it will be refused" if n > limit else ""
        message = f"{name}: {len(text):,} characters, {n:,} tokens{too_long}."
        self.window.statusBar().showMessage(message, 10000)
        if not self.ask(message + "\n\nPut it in the prompt box and run it?"):
            return
        panel = self.window.prompt_panel
        family = self.window.state.model.family if self.window.state.model else ""
        if family == "encoder-decoder":
            panel.set_texts(None, text)  # the document is what the encoder reads
        else:
            panel.set_texts(text, None)
        panel.request_session()

    def _ask(self, text: str) -> bool:
        answer = QMessageBox.question(self.window, "Open prompt from file", text)
        return answer == QMessageBox.StandardButton.Yes
