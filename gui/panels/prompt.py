"""Model & prompt panel: model picker, device, prompt (and source for encoder-decoder models), sampling.

Chat mode (models whose tokenizer has a chat template): a system and a user message rendered through the
checkpoint's own template (a preview of the rendered text; the token strip shows its special tokens);
generation stops at the template's end of turn, and Next turn carries the reply into the next exchange.
The text boxes are as tall as their text, within limits, so the sampling controls stay in view."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QSignalBlocker, Qt, QTimer, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine import SamplingError, SamplingSettings
from engine.checkpoints.resolve import RESOURCES

from ..core import jobs
from ..core.chat_jobs import chat_messages, chat_session, chat_state, render_chat
from ..core.state import InspectorState
from ..core.worker import EngineClient, ModelInfo, SessionRequest
from ..widgets.auto_text import AutoHeightTextEdit

log = logging.getLogger(__name__)

EDIT_DEBOUNCE_MS = 400  # a new session starts this long after the last keystroke
DEFAULT_TEXT = "In the beginning God created the heaven and the earth."
CHAT_SYSTEM = "You are a helpful assistant."
CHAT_USER = "Hello! How are you today?"
PREVIEW_MIN_LINES = 4
HISTORY_CLIP = 160  # characters of each earlier turn the history box shows


# the bundled models were trained on particular text; their examples show what they learned
BUNDLED_EXAMPLES = {
    "tiny-gpt": ("In the beginning God created the heaven and the earth. And God said,", ""),
    # a genealogy that repeats: at the last "begat", layer 3 heads 3 and 7 look back at " Noah", the token after
    # "Lamech begat" the first time (0.71, 0.55), and " Noah" is the top candidate (see the card)
    "tiny-llama": ("Jared begat Lamech; and Lamech begat Noah. Jared begat Lamech; and Lamech begat", ""),
    "tiny-seq2seq": ("", "Tuesday, 3rd March 1987"),
}


SAMPLING_NOTE = "Changes re-draw the candidates at once; no new forward pass."


def model_text(info: ModelInfo) -> str:
    """What the model box shows for an open model: a bundled model's name, else its folder (or id)."""
    if info.folder and Path(info.folder).parent == RESOURCES and Path(info.folder).name == info.name:
        return info.name
    return info.folder or info.name


def unique_choices(names: list[str]) -> list[str]:
    """The model box's entries once each: a bundled model's folder is its name, a repeat is dropped."""
    out: list[str] = []
    for name in names:
        path = Path(name)
        if path.is_absolute() and path.parent == RESOURCES:
            name = path.name
        if name not in out:
            out.append(name)
    return out


def sampling_summary(s: SamplingSettings) -> str:
    """The settings that differ from the defaults, e.g. "sample, T=0.7, top-k 5" ("" for the defaults)."""
    parts = [] if s.greedy else ["sample"]
    if s.temperature != 1.0:
        parts.append(f"T={s.temperature:g}")
    if s.top_k:
        parts.append(f"top-k {s.top_k}")
    if s.top_p:
        parts.append(f"top-p {s.top_p:g}")
    if s.seed:
        parts.append(f"seed {s.seed}")
    return ", ".join(parts)


def default_prompts(info: ModelInfo) -> tuple[str, str]:
    """(prompt, source) a model starts with: its own example if it is a bundled one, else its family's."""
    if info.name in BUNDLED_EXAMPLES:
        return BUNDLED_EXAMPLES[info.name]
    if info.family == "encoder":
        mask = info.mask_token or "[MASK]"
        return f"In the beginning God created the {mask} and the earth.", ""
    if info.family == "encoder-decoder":
        return "", DEFAULT_TEXT
    return "In the beginning God created the", ""


class KeepReturnKey(QObject):
    """Return in an input field belongs to the field (open the model, confirm a value), not to the
    window-wide Run shortcut: claim it during the ShortcutOverride phase."""

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.ShortcutOverride and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            event.accept()
            return True
        return False


class PromptPanel(QWidget):
    open_requested = Signal(str, object)  # model source, device (None = default)
    browse_requested = Signal()

    def __init__(self, state: InspectorState, client: EngineClient, devices: list[str],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.client = client
        self._defaults: tuple[str, str] = ("", "")
        self._open_text: str | None = None  # a model to open, sent once the event in hand is done

        # -- model ------------------------------------------------------------------------------------
        self.model_box = QComboBox()
        self.model_box.setEditable(True)
        self.model_box.setToolTip("A bundled model name, a checkpoint folder, or a Hugging Face cache id")
        self.model_box.lineEdit().setPlaceholderText("model name or folder")
        self.browse_button = QPushButton("…")
        self.browse_button.setToolTip("Choose a checkpoint folder")
        self.browse_button.setFixedWidth(32)
        self.open_button = QPushButton("Open")
        self.device_box = QComboBox()
        self.device_box.addItem("auto", None)
        for d in devices:
            self.device_box.addItem(d, d)
        if any(d.startswith("cuda") for d in devices):  # a model too big for one GPU: the next GPUs, then the CPU
            self.device_box.addItem("spread: GPUs, then CPU", "auto")
        self.device_box.setToolTip("Where the model runs; auto = CUDA when present, else CPU; spread = a model too "
                                   "big for one GPU goes over the GPUs in order, then the CPU (the status bar says "
                                   "which layers went where)")
        self.backend_box = QComboBox()
        for text in ("auto", "native", "transformers"):
            self.backend_box.addItem(text, text)
        self.backend_box.setToolTip("Which engine opens the model: auto = our own (native) modules for the "
                                    "architectures they cover, transformers' model classes for every other one; "
                                    "or force one (takes effect on Open)")
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_box, 1)
        model_row.addWidget(self.browse_button)
        device_row = QHBoxLayout()
        device_row.addWidget(QLabel("device"))
        device_row.addWidget(self.device_box, 1)
        device_row.addWidget(self.open_button)
        engine_row = QHBoxLayout()  # its own row: beside the device it widened the dock (and the window's minimum)
        engine_row.addWidget(QLabel("engine"))
        engine_row.addWidget(self.backend_box, 1)
        model_group = QGroupBox("Model")
        mg = QVBoxLayout(model_group)
        mg.addLayout(model_row)
        mg.addLayout(device_row)
        mg.addLayout(engine_row)
        self.model_label = QLabel("—")
        self.model_label.setWordWrap(True)
        self.model_label.setObjectName("caption")
        mg.addWidget(self.model_label)

        # -- text -------------------------------------------------------------------------------------
        self.chat_check = QCheckBox("Chat: the model's own template")
        self.chat_check.setToolTip("Render a system and a user message through the checkpoint's chat template "
                                   "(its special tokens show in the token strip); generation stops at the end of turn. "
                                   "Off: a plain prompt.")
        self.chat_check.setChecked(True)
        self.source_label = QLabel("Source (encoder input)")
        self.source_edit = AutoHeightTextEdit(1, 6)
        self.source_edit.setPlaceholderText("text for the encoder")
        self.system_label = QLabel("System")
        self.system_edit = AutoHeightTextEdit(1, 5)
        self.system_edit.setPlaceholderText("system message (optional)")
        self.history_label = QLabel("Earlier turns")
        self.history_edit = AutoHeightTextEdit(1, 5)
        self.history_edit.setReadOnly(True)
        self.history_edit.setObjectName("chat-history")
        self.prompt_label = QLabel("Prompt")
        self.prompt_edit = AutoHeightTextEdit(1, 8)
        self.prompt_edit.setPlaceholderText("type a prompt")
        for edit in (self.source_edit, self.prompt_edit, self.system_edit):
            edit.setTabChangesFocus(True)
        # a refused prompt (too long, no source …): the session on screen is the previous one; say so and offer
        # the ways back (issue 30): keep the text's last tokens, or return the boxes to the session's texts
        self.stale_box = QFrame()
        self.stale_box.setObjectName("stale")
        self.stale_box.setFrameShape(QFrame.Shape.StyledPanel)
        self.stale_label = QLabel()
        self.stale_label.setWordWrap(True)
        self.keep_button = QPushButton("Keep the last tokens")
        self.keep_button.setToolTip("Replace the text with its end, as many tokens as the model reads (leaving room to step)")
        self.restore_button = QPushButton("Back to the session's prompt")
        self.restore_button.setToolTip("Put the text of the session on screen back in the boxes; Step works again")
        sl = QVBoxLayout(self.stale_box)
        sl.setContentsMargins(4, 3, 4, 3)
        sl.addWidget(self.stale_label)
        for button in (self.keep_button, self.restore_button):  # one above the other: the column stays narrow
            sl.addWidget(button, 0, Qt.AlignmentFlag.AlignLeft)
        self.stale_box.hide()
        self.session_texts: tuple[str, str, str] | None = None  # (prompt, source, system) of the session on screen
        self._asked_texts: tuple[str, str, str] | None = None  # those of the newest session request
        self._fit_rid = 0
        self._trims: dict[str, str] = {}  # "prompt"/"source" -> the text of its last tokens (keep_button)
        self.preview_button = QToolButton()
        self.preview_button.setText("Template")
        self.preview_button.setCheckable(True)
        self.preview_button.setChecked(True)
        self.preview_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.preview_button.setArrowType(Qt.ArrowType.DownArrow)
        self.preview_button.setAutoRaise(True)
        self.preview_button.setToolTip("The text the chat template writes for these messages (special tokens included)")
        # the preview takes the column's spare height (at least a few lines), so a tall screen shows the whole template
        self.preview_edit = QPlainTextEdit()
        self.preview_edit.setReadOnly(True)
        self.preview_edit.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.preview_edit.setObjectName("chat-preview")
        font = self.preview_edit.font()
        font.setFamily("monospace")
        font.setStyleHint(font.StyleHint.Monospace)
        self.preview_edit.setFont(font)
        self.preview_edit.setMinimumHeight(QFontMetrics(font).lineSpacing() * PREVIEW_MIN_LINES + 12)
        self.chat_status = QLabel("")
        self.chat_status.setWordWrap(True)
        self.chat_status.setObjectName("caption")
        self.next_turn_button = QPushButton("Next turn")
        self.next_turn_button.setToolTip("Keep this exchange (the reply as the assistant's message) and write the next user message")
        self.clear_chat_button = QPushButton("Clear")
        self.clear_chat_button.setToolTip("Forget the earlier turns")
        chat_buttons = QHBoxLayout()
        chat_buttons.addWidget(self.preview_button)
        chat_buttons.addStretch(1)
        chat_buttons.addWidget(self.next_turn_button)
        chat_buttons.addWidget(self.clear_chat_button)
        self.chat_widgets = (self.system_label, self.system_edit, self.preview_button, self.preview_edit,
                             self.chat_status, self.next_turn_button, self.clear_chat_button)
        self.turns: list[tuple[str, str]] = []  # earlier (role, content) of this chat, before the user box
        self._preview_rid = 0
        self._state_rid = 0
        text_group = QGroupBox("Text")
        tg = QVBoxLayout(text_group)
        tg.setSpacing(3)
        for w in (self.chat_check, self.source_label, self.source_edit, self.system_label, self.system_edit,
                  self.history_label, self.history_edit, self.prompt_label, self.prompt_edit, self.stale_box):
            tg.addWidget(w)
        tg.addLayout(chat_buttons)
        tg.addWidget(self.preview_edit, 1)
        tg.addWidget(self.chat_status)

        # -- sampling ---------------------------------------------------------------------------------
        self.mode_box = QComboBox()
        self.mode_box.addItems(["greedy", "sample"])
        self.temperature_spin = QDoubleSpinBox()
        self.temperature_spin.setRange(0.05, 10.0)
        self.temperature_spin.setSingleStep(0.1)
        self.temperature_spin.setValue(1.0)
        self.top_k_spin = QSpinBox()
        self.top_k_spin.setRange(0, 100000)
        self.top_k_spin.setSpecialValueText("off")
        self.top_p_spin = QDoubleSpinBox()
        self.top_p_spin.setRange(0.01, 1.0)
        self.top_p_spin.setSingleStep(0.05)
        self.top_p_spin.setValue(1.0)
        self.top_p_spin.setToolTip("1.00 = off")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        sampling_group = QGroupBox("Sampling")
        form = QFormLayout(sampling_group)
        self.sampling_reset = QPushButton("Defaults")
        self.sampling_reset.setToolTip("greedy, temperature 1, top-k and top-p off, seed 0")
        self.sampling_reset.clicked.connect(self.reset_sampling)
        choice_row = QHBoxLayout()
        choice_row.addWidget(self.mode_box, 1)
        choice_row.addWidget(self.sampling_reset)
        form.addRow("choice", choice_row)
        form.addRow("temperature", self.temperature_spin)
        form.addRow("top-k", self.top_k_spin)
        form.addRow("top-p", self.top_p_spin)
        form.addRow("seed", self.seed_spin)
        self.sampling_note = QLabel(SAMPLING_NOTE)
        self.sampling_note.setWordWrap(True)
        self.sampling_note.setObjectName("caption")
        form.addRow(self.sampling_note)

        layout = self._layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(model_group)
        layout.addWidget(text_group)
        layout.addWidget(sampling_group)
        layout.addStretch(1)  # spare height stays below the controls; the text boxes size to their text

        # -- wiring -----------------------------------------------------------------------------------
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(EDIT_DEBOUNCE_MS)
        self._debounce.timeout.connect(self.request_session)
        self.prompt_edit.textChanged.connect(self._debounce.start)
        self.source_edit.textChanged.connect(self._debounce.start)
        self.system_edit.textChanged.connect(self._debounce.start)
        self.chat_check.toggled.connect(self._chat_toggled)
        self.preview_button.toggled.connect(self._update_mode)
        self.next_turn_button.clicked.connect(self.next_turn)
        self.clear_chat_button.clicked.connect(self.clear_chat)
        client.result_ready.connect(self._on_result)
        client.trace_ready.connect(self._on_trace_op)
        client.error.connect(self._on_error)
        self.keep_button.clicked.connect(self.keep_last_tokens)
        self.restore_button.clicked.connect(self.restore_session_texts)
        state.trace_changed.connect(self._on_trace)
        self.open_button.clicked.connect(lambda: self._open_clicked())  # clicked passes `checked`, not a text
        # Return in the box and a pick from its list both arrive as activated
        # an entry picked from the list opens at once (before, it waited for Open)
        self.model_box.activated.connect(lambda i: self._open_clicked(self.model_box.itemText(i)))
        self.browse_button.clicked.connect(self.browse_requested)
        self.device_box.activated.connect(lambda _i: self._device_changed())
        for w in (self.temperature_spin, self.top_p_spin):
            w.valueChanged.connect(lambda _v: self._sampling_changed())
        for w in (self.top_k_spin, self.seed_spin):
            w.valueChanged.connect(lambda _v: self._sampling_changed())
        self.mode_box.currentIndexChanged.connect(lambda _i: self._sampling_changed())
        state.model_changed.connect(self._on_model)
        self._keep_return = KeepReturnKey(self)
        for w in (self.model_box.lineEdit(), self.temperature_spin, self.top_k_spin, self.top_p_spin, self.seed_spin,
                  self.prompt_edit, self.source_edit, self.system_edit):
            w.installEventFilter(self._keep_return)
        self._show_source(False)

    # -- public --------------------------------------------------------------------------------------
    def set_texts(self, prompt: str | None, source: str | None) -> None:
        """Fill the boxes without starting a session (the caller decides when)."""
        with QSignalBlocker(self.prompt_edit), QSignalBlocker(self.source_edit):
            if prompt is not None:
                self.prompt_edit.setPlainText(prompt)
            if source is not None:
                self.source_edit.setPlainText(source)

    def texts(self) -> tuple[str, str]:
        """(prompt, source) as typed."""
        return self.prompt_edit.toPlainText(), self.source_edit.toPlainText()

    def session_request(self) -> SessionRequest:
        s = self.state.sampling
        return SessionRequest(prompt=self.prompt_edit.toPlainText(), source=self.source_edit.toPlainText(),
                              temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed, greedy=s.greedy)

    def request_session(self) -> None:
        self._debounce.stop()
        if self.state.model is None:
            return
        self._asked_texts = self._box_texts()
        if self.chat_mode:
            self.request_chat()
        else:
            self.client.new_session(self.session_request())

    def flush_edits(self) -> None:
        """An edit still waiting for its session (the debounce) starts it now: a Step pressed right after typing
        then steps the new prompt (the worker takes the requests in order), never the old one."""
        if self._debounce.isActive():
            self.request_session()

    def _box_texts(self) -> tuple[str, str, str]:
        return self.prompt_edit.toPlainText(), self.source_edit.toPlainText(), self.system_edit.toPlainText()

    # -- a refused prompt ----------------------------------------------------------------------------
    def _on_trace_op(self, _trace: object, op: str) -> None:
        if op == "session":  # the newest session request (older ones are dropped as stale)
            self.session_texts = self._asked_texts
            self._show_stale("")

    def _on_error(self, op: str, message: str) -> None:
        if op != "session" or self.state.model is None:
            return
        self._show_stale(message)
        # a chat's user message is rendered through its template: shortening is the person's; a Stop needs no trim
        if not self.chat_mode and not self.client.session_cancelled:
            prompt, source = self.texts()
            self._fit_rid = self.client.call("fit_prompt", jobs.fit_prompt(prompt, source if self.source_edit.isVisibleTo(self) else None))

    def _show_stale(self, message: str) -> None:
        has_session = self.state.trace is not None and self.session_texts is not None
        self.state.set_stale(message)
        self._trims = {}
        self.keep_button.hide()
        if not message:
            self.stale_box.hide()
            return
        then = ("The panels still show the session before it; Step and Run are off until a prompt is taken."
                if has_session else "No session runs until a prompt is taken.")
        self.stale_label.setText(f"<b>Not started:</b> {message}. {then}")
        self.restore_button.setVisible(has_session)
        self.stale_box.show()

    def _on_fit(self, payload: dict) -> None:
        if not self.state.stale:
            return
        for what in ("prompt", "source"):
            fit = payload.get(what)
            if fit:
                self._trims = {what: fit["text"]}
                box = "source" if what == "source" else "text"
                self.keep_button.setText(f"Keep the last {fit['keep']} tokens")
                self.keep_button.setToolTip(f"The {box} has {fit['tokens']} tokens; this model reads at most "
                                            f"{payload['max']}. Keep its end ({fit['keep']} tokens"
                                            + (", leaving room to step)" if fit["keep"] < payload["max"] else ")"))
                self.keep_button.show()
                return

    def keep_last_tokens(self) -> None:
        """Cut the over-long box to its last tokens (worked out by the engine's tokenizer) and start the session."""
        if not self._trims:
            return
        (what, text), = self._trims.items()
        self.set_texts(text if what == "prompt" else None, text if what == "source" else None)
        self.request_session()

    def restore_session_texts(self) -> None:
        """The boxes back to the texts of the session on screen; its steps are allowed again."""
        if self.session_texts is None:
            return
        prompt, source, system = self.session_texts
        self.set_texts(prompt, source)
        with QSignalBlocker(self.system_edit):
            self.system_edit.setPlainText(system)
        self.client.call("keep_session", jobs.keep_session())
        self._show_stale("")

    def show_session(self, prompt: str | None, source: str | None, messages: list[dict] | None = None) -> None:
        """A reopened session's texts in the boxes (a chat's system, earlier turns and user message), without
        starting a new session: they are the session's."""
        self._debounce.stop()
        if messages:
            system = next((str(m.get("content", "")) for m in messages if m.get("role") == "system"), "")
            turns = [(str(m["role"]), str(m.get("content", ""))) for m in messages if m.get("role") != "system"]
            user = turns.pop()[1] if turns and turns[-1][0] == "user" else ""
            with QSignalBlocker(self.chat_check), QSignalBlocker(self.system_edit):
                self.chat_check.setChecked(True)
                self.system_edit.setPlainText(system)
            self.turns = turns
            self.set_texts(user, None)
            self._show_history()
        else:
            if self.state.model is not None and self.state.model.has_chat_template:
                with QSignalBlocker(self.chat_check):
                    self.chat_check.setChecked(False)
            self.set_texts(prompt, source)
            self._update_mode()
        self.session_texts = self._asked_texts = self._box_texts()
        self._show_stale("")

    # -- chat mode -----------------------------------------------------------------------------------
    @property
    def chat_mode(self) -> bool:
        """Chat is on and the open model has a chat template."""
        info = self.state.model
        return bool(info is not None and info.has_chat_template and self.chat_check.isChecked())

    def messages(self) -> list[dict[str, str]]:
        """The chat as the engine takes it: system, earlier turns, the user box."""
        return chat_messages(self.system_edit.toPlainText(), [*self.turns, ("user", self.prompt_edit.toPlainText())])

    def request_chat(self) -> None:
        if not self.prompt_edit.toPlainText().strip():
            self.chat_status.setText("Write a user message; the session starts from it.")
            return
        messages = self.messages()
        self.client.call("session", chat_session(messages, self.session_request()))
        self._preview_rid = self.client.call("chat_preview", render_chat(messages))

    def next_turn(self) -> None:
        """Keep the exchange so far: ask the worker for the session's messages and reply, then clear the
        user box for the next message (the new session starts once it is typed)."""
        if self.chat_mode and self.state.trace is not None:
            self._state_rid = self.client.call("chat_state", chat_state())

    def clear_chat(self) -> None:
        self.turns = []
        self._show_history()
        self.request_session()

    def _on_result(self, rid: int, op: str, payload: object) -> None:
        if rid == self._fit_rid and isinstance(payload, dict):
            self._on_fit(payload)
        elif rid == self._preview_rid and isinstance(payload, dict):
            self.preview_edit.setPlainText(str(payload.get("text", "")))
        elif rid == self._state_rid and isinstance(payload, dict) and payload.get("messages") is not None:
            turns = [(str(m["role"]), str(m.get("content", ""))) for m in payload["messages"] if m["role"] != "system"]
            self.turns = [*turns, ("assistant", str(payload.get("reply", "")))]
            with QSignalBlocker(self.prompt_edit):
                self.prompt_edit.clear()
            self.prompt_edit.setPlaceholderText("the next user message")
            self.prompt_edit.setFocus()
            self._show_history()
            self.chat_status.setText(f"Turn {len(self.turns) // 2 + 1}: write the next user message; the reply so far "
                                     "is the assistant's message.")

    def _show_history(self) -> None:
        lines = []
        for role, content in self.turns:
            text = " ".join(content.split())
            lines.append(f"{role}: {text[:HISTORY_CLIP]}{'…' if len(text) > HISTORY_CLIP else ''}")
        self.history_edit.setPlainText("\n".join(lines))
        self._update_mode()

    def chat_summary(self, trace) -> str:  # noqa: ANN001 - engine.Trace
        """Where the reply stands: generated tokens, and whether (and why) the session has finished."""
        info = self.state.model
        n_new = len(trace.token_ids) - trace.n_prompt
        stops = [info.vocab[i] for i in info.stop_ids if 0 <= i < len(info.vocab)]
        if n_new <= 0:
            return (f"The template rendered {trace.n_prompt} tokens. Step or Run to generate the reply; it ends at the "
                    f"end of turn ({', '.join(stops) or 'no stop token known'}).")
        last = trace.token_ids[-1]
        if last in info.stop_ids:
            return (f"Finished after {n_new} tokens: end of turn, the model chose {info.vocab[last]}. "
                    "Next turn to continue the chat; Back or a candidate to branch.")
        if len(trace.token_ids) >= info.max_positions:
            return f"Finished: the context is full ({info.max_positions} tokens)."
        return f"Reply: {n_new} tokens so far; it ends at the end of turn ({', '.join(stops)})."

    def _on_trace(self, trace) -> None:  # noqa: ANN001
        if self.chat_mode and trace.family == "decoder":
            self.chat_status.setText(self.chat_summary(trace))
            self.next_turn_button.setEnabled(len(trace.token_ids) > trace.n_prompt)

    def _chat_toggled(self, _on: bool) -> None:
        self._update_mode()
        self.request_session()

    def _update_mode(self) -> None:
        chat = self.chat_mode
        info = self.state.model
        self.chat_check.setVisible(bool(info is not None and info.has_chat_template))
        for w in self.chat_widgets:
            w.setVisible(chat)
        self.preview_edit.setVisible(chat and self.preview_button.isChecked())
        self.preview_button.setArrowType(Qt.ArrowType.DownArrow if self.preview_button.isChecked() else Qt.ArrowType.RightArrow)
        # chat with its preview: the preview takes the spare height; else it stays below the controls
        grow = chat and self.preview_button.isChecked()
        self._layout.setStretch(1, 1 if grow else 0)
        self._layout.setStretch(3, 0 if grow else 1)
        self.history_label.setVisible(chat and bool(self.turns))
        self.history_edit.setVisible(chat and bool(self.turns))
        if chat:
            self.prompt_label.setText("User")
            self.prompt_edit.setPlaceholderText("the user's message")
        elif self.source_edit.isVisibleTo(self):
            self.prompt_label.setText("Decoder prefix (optional)")
        else:
            self.prompt_label.setText("Prompt")
            self.prompt_edit.setPlaceholderText("type a prompt")

    def show_sampling(self, settings: dict) -> None:
        """Show these sampling settings (a reopened session's); the controls' own handlers pass them on to
        the state and the worker. Values that are not numbers leave the controls as they are."""
        try:
            self.mode_box.setCurrentText("greedy" if settings.get("greedy", True) else "sample")
            self.temperature_spin.setValue(float(settings.get("temperature", 1.0)))
            self.top_k_spin.setValue(int(settings.get("top_k") or 0))
            self.top_p_spin.setValue(float(settings.get("top_p") or 1.0))
            self.seed_spin.setValue(int(settings.get("seed", 0)))
        except (TypeError, ValueError) as exc:
            log.warning("session settings not shown: %s", exc)

    def set_model_text(self, text: str) -> None:
        self.model_box.setEditText(text)

    def set_model_choices(self, names: list[str]) -> None:
        current = self.model_box.currentText()
        with QSignalBlocker(self.model_box):
            self.model_box.clear()
            self.model_box.addItems(unique_choices(names))
            self.model_box.setEditText(current)

    def device(self) -> str | None:
        return self.device_box.currentData()

    def load_options(self) -> dict:
        """More keywords for engine.load_model from the panel (the engine choice, where not auto)."""
        backend = self.backend_box.currentData()
        return {"backend": backend} if backend != "auto" else {}

    def set_backend(self, backend: str) -> None:
        """Show an engine choice made elsewhere (main.py --backend); an unknown one leaves the box as it is."""
        i = self.backend_box.findData(backend)
        if i >= 0:
            self.backend_box.setCurrentIndex(i)

    def add_devices(self, devices: list[str]) -> None:
        """List devices not listed yet, keeping the current choice."""
        for d in devices:
            if self.device_box.findData(d) < 0:
                self.device_box.addItem(d, d)

    def set_device(self, device: str | None) -> None:
        i = self.device_box.findData(device)
        if i < 0 and device:
            self.device_box.addItem(device, device)
            i = self.device_box.count() - 1
        self.device_box.setCurrentIndex(max(i, 0))

    # -- reactions -----------------------------------------------------------------------------------
    def _open_clicked(self, text: str | None = None) -> None:
        """Open button, Return in the box, or an entry picked from its list. One key press can arrive as two
        activations (the editable box's own and its line edit's): they are one request, sent once."""
        text = (self.model_box.currentText() if text is None else text).strip()
        if not text:
            return
        first = self._open_text is None
        self._open_text = text
        if first:
            QTimer.singleShot(0, self._send_open)

    def _send_open(self) -> None:
        text, self._open_text = self._open_text, None
        if text:
            self.open_requested.emit(text, self.device())

    def _device_changed(self) -> None:
        if self.state.model is not None:  # the same model, on another device
            self.open_requested.emit(self.model_box.currentText().strip() or self.state.model.folder, self.device())

    def _show_source(self, on: bool) -> None:
        self.source_label.setVisible(on)
        self.source_edit.setVisible(on)
        self._update_mode()

    def _on_model(self, info: ModelInfo) -> None:
        self.turns = []
        self.session_texts = self._asked_texts = None
        self._show_stale("")
        kept = sampling_summary(self.state.sampling)  # sampling stays from model to model: say so
        self.sampling_note.setText(f"Kept from before: {kept}. " + SAMPLING_NOTE if kept else SAMPLING_NOTE)
        self.history_edit.clear()
        self.preview_edit.clear()
        self.chat_status.clear()
        with QSignalBlocker(self.chat_check):
            self.chat_check.setChecked(info.has_chat_template)  # a chat model starts in chat mode
        self._show_source(info.family == "encoder-decoder")
        # switch to the new family's example text unless the person typed their own
        prompt, source = self.prompt_edit.toPlainText(), self.source_edit.toPlainText()
        new_prompt, new_source = default_prompts(info)
        if self.chat_mode:
            new_prompt = CHAT_USER
            if not self.system_edit.toPlainText().strip():
                with QSignalBlocker(self.system_edit):
                    self.system_edit.setPlainText(CHAT_SYSTEM)
        keep_prompt = prompt.strip() and prompt != self._defaults[0]
        keep_source = source.strip() and source != self._defaults[1]
        if info.family == "encoder" and info.mask_token and info.mask_token not in prompt:
            keep_prompt = False  # a fill-mask model needs a mask to fill
        self.set_texts(None if keep_prompt else new_prompt, None if keep_source else new_source)
        self._defaults = (new_prompt, new_source)
        params = f"{info.n_params / 1e6:.2f} M" if info.n_params >= 1e5 else f"{info.n_params:,}"
        layers = ", ".join(f"{k}: {n}" for k, n in info.layers_by_kind.items() if n)
        self.model_label.setText(f"{info.name} · {info.family} · {params} parameters · layers ({layers}) · "
                                 f"{info.n_heads} heads · {' + '.join(info.devices) if len(info.devices) > 1 else info.device} "
                                 f"{info.dtype}"
                                 + (" · through transformers" if info.backend == "transformers" else ""))

    def _sampling_changed(self) -> None:
        changes = dict(greedy=self.mode_box.currentText() == "greedy",
                       temperature=round(self.temperature_spin.value(), 4),
                       top_k=self.top_k_spin.value() or None,
                       top_p=None if self.top_p_spin.value() >= 1.0 else round(self.top_p_spin.value(), 4),
                       seed=self.seed_spin.value())
        try:
            self.state.set_sampling(**changes)
        except SamplingError as exc:
            self.sampling_note.setText(str(exc))
            return
        self.sampling_note.setText(SAMPLING_NOTE)
        self.client.set_sampling(**changes)  # so the session's next steps use them

    def reset_sampling(self) -> None:
        """Greedy, T=1, no top-k/top-p, seed 0 (the controls' handlers pass them on)."""
        self.show_sampling({})
